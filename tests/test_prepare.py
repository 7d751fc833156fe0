"""slam-prepare: folders -> sharded TFRecords that a prepared task reads back deterministically."""
from __future__ import annotations

import json

import numpy as np
import seqio
import tensorflow as tf

from slam_jax.cli import prepare as prepare_cli
from slam_jax.data import audio, converter, schema, sources
from data_helpers import MINI_SPM, librispeech_folder, write_utterance

VOCAB = seqio.SentencePieceVocabulary(MINI_SPM)


def _read(name: str, split: str = "train"):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset({"speech": 4096, "text": 64}, split=split, shuffle=False, num_epochs=1,
                          try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


def test_prepare_librispeech_round_trip(tmp_path, capsys):
    chapter = librispeech_folder(tmp_path / "in", utterances=5)
    out = tmp_path / "out"
    rc = prepare_cli.main(["--corpus_dir", str(tmp_path / "in"), "--output_dir", str(out),
                           "--split_dir", "train=train", "--num_shards", "2", "--quiet"])
    assert rc == 0 and "train: 5 examples" in capsys.readouterr().out
    manifest = sources.read_manifest(str(out))
    assert manifest["splits"]["train"]["examples"] == 5 and manifest["splits"]["train"]["skipped"] == []
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "train.tfrecord-00000-of-00002", "train.tfrecord-00001-of-00002"]
    raw = list(tf.data.TFRecordDataset(str(out / "train" / "train.tfrecord-00000-of-00002")).map(
        lambda r: tf.io.parse_single_example(r, sources.PREPARED_FEATURES)).as_numpy_iterator())
    assert [r["id"].decode().rsplit("/", 1)[1] for r in raw] == ["100-1-0000.flac", "100-1-0002.flac",
                                                                 "100-1-0004.flac"]  # round robin, sorted
    pcm = np.frombuffer(raw[0]["audio"], "<i2") / 32768.0
    np.testing.assert_allclose(pcm, audio.load_audio(str(chapter / "100-1-0000.flac")), atol=1.0 / 16384)

    sources.add_prepared_task("t_prepared_paired", str(out), kind="paired", splits=("train",), vocabulary=VOCAB)
    examples = _read("t_prepared_paired")
    assert len(examples) == 5 and all(ex["error"] == b"" for ex in examples)
    assert all(ex["speech"].shape == (98, 80) for ex in examples)
    assert sorted(VOCAB.decode(ex["text"][:-1].tolist()) for ex in examples)[0].startswith("THE CAT SAT ON THE")
    two_hosts = [ex["id"] for i in range(2) for ex in seqio.get_mixture_or_task("t_prepared_paired").get_dataset(
        {"speech": 4096, "text": 64}, split="train", shuffle=False, num_epochs=1, try_in_mem_cache=False,
        shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()]
    assert sorted(two_hosts) == sorted(ex["id"] for ex in examples)

    stream = converter.eval_stream(schema.StreamConfig("t_prepared_paired", batch_size=2, paired_frames=128,
                                                          paired_tokens=32))
    assert sum(int(b["paired"]["segment_ids"].any(1).sum()) for b in stream) == 5


def test_prepare_stops_on_bad_input_or_skips_and_lists_it(tmp_path, capsys):
    chapter = librispeech_folder(tmp_path / "in", utterances=3)
    bad = write_utterance(chapter, "100-1-0001", rate=8000)
    args = ["--corpus_dir", str(tmp_path / "in"), "--split_dir", "train=train", "--num_shards", "1", "--quiet"]
    assert prepare_cli.main(args + ["--output_dir", str(tmp_path / "a")]) == 1
    assert f"slam-prepare: {bad}: sample rate 8000 Hz" in capsys.readouterr().err
    assert prepare_cli.main(args + ["--output_dir", str(tmp_path / "b"), "--on_error", "skip"]) == 0
    assert f"{bad}: sample rate 8000 Hz" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["examples"] == 2
    assert len(manifest["splits"]["train"]["skipped"]) == 1 and str(bad) in manifest["splits"]["train"]["skipped"][0]
    assert prepare_cli.main(args + ["--output_dir", str(tmp_path / "c"), "--resample"]) == 0


def test_prepare_librilight_cuts_chunks(tmp_path):
    book = tmp_path / "in" / "small" / "7" / "b"
    book.mkdir(parents=True)
    write_utterance(book, "rec", seconds=5.0)
    (book / "rec.json").write_text("{}")
    assert prepare_cli.main(["--corpus_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"), "--layout",
                         "librilight", "--split_dir", "train=small", "--chunk_seconds", "2", "--num_shards", "1",
                         "--quiet"]) == 0
    sources.add_prepared_task("t_prepared_ll", str(tmp_path / "out"), kind="speech", splits=("train",),
                              vocabulary=VOCAB)
    examples = _read("t_prepared_ll")
    assert [ex["id"].decode().rsplit("@", 1)[1] for ex in examples] == ["0", "2", "4"]
    assert [ex["speech"].shape[0] for ex in examples] == [198, 198, 98]


def test_prepare_argument_errors(tmp_path, capsys):
    assert prepare_cli.main(["--corpus_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "o"), "--quiet"]) == 1
    assert "LibriSpeech split directory does not exist" in capsys.readouterr().err
