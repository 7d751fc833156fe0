"""seqio tasks: registration without data, the shared schema, host sharding, TFDS (mock_data) and folder tasks."""
from __future__ import annotations

import collections
import json
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
from slam_jax import config
from slam_jax.data import sources
from data_helpers import MINI_SPM, WORDS, librispeech_folder, write_utterance

LENGTHS = {"speech": 1024, "text": 128}


def _examples(name, split="train", shard=None, shuffle=False, seed=0, lengths=LENGTHS):
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(lengths, split=split, shuffle=shuffle, seed=seed, shard_info=shard, num_epochs=1,
                          try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


def test_registration_touches_no_data(tmp_path):
    code = ("import tasks; from slam_jax.data import mixtures, sources; "
            "print([sources.kind_of(n) for n in ('librispeech_paired', 'librilight_large', 'c4_en')]); "
            "print(mixtures.kind_batch_sizes('slam_libri', 42))")
    env = {"SLAM_LIBRILIGHT_DIR": str(tmp_path / "does_not_exist"), "TFDS_DATA_DIR": str(tmp_path / "no_tfds"),
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['paired', 'speech', 'text']" in out.stdout
    assert "{'speech': 8, 'text': 33, 'paired': 1}" in out.stdout
    assert not (tmp_path / "no_tfds").exists()


def test_register_takes_the_data_paths_from_its_data_config_and_leaves_the_environment_alone(tmp_path):
    import os
    import shutil
    before = dict(os.environ)
    st_de_spm = os.path.join(sources.MINI_CORPUS, "st_de", "spm.model")  # any model but the default one
    shutil.copy(MINI_SPM, tmp_path / "spm.model")
    try:
        tasks.register(config.DataConfig(spm_model=st_de_spm, toy_corpus=str(tmp_path),
                                         librispeech_prepared=str(tmp_path / "prepared")))
        assert dict(os.environ) == before
        assert sources.kind_of("toy_paired") == "paired"
        assert seqio.get_mixture_or_task("toy_slam").tasks  # mixtures registered after their tasks
        assert seqio.get_mixture_or_task("librispeech_prepared_paired").source  # folder tasks of the config
        for name in ("librispeech_lm", "glue_sst2"):  # text tasks: the config's vocabulary
            vocab = seqio.get_mixture_or_task(name).output_features["text"].vocabulary
            assert vocab.sentencepiece_model_file == st_de_spm, name
    finally:
        tasks.register(config.DataConfig())
    vocab = seqio.get_mixture_or_task("librispeech_lm").output_features["text"].vocabulary
    assert vocab.sentencepiece_model_file != st_de_spm


def test_kinds_of_mini_tasks_and_mixtures():
    assert [sources.kind_of(n) for n in ("mini_speech", "mini_paired", "mini_text", "mini_transcripts")] == [
        "speech", "paired", "text", "text"]
    assert sources.kind_of("mini_text_mix") == "text"
    with pytest.raises(ValueError, match="mixes kinds"):
        sources.kind_of("mini_slam")


def test_mini_tasks_share_one_schema():
    speech = _examples("mini_speech", split="validation")
    paired = _examples("mini_paired", split="validation")
    text = _examples("mini_text")[:50]
    assert len(speech) == len(paired) == 64  # the dev split of the bundled corpus
    for ex in speech + paired + text:
        assert set(ex) == {"speech", "text", "source_text", "task", "id", "error"}
        assert ex["source_text"].dtype == np.int32 and ex["source_text"].size == 0  # only translation pairs have it
        assert ex["speech"].dtype == np.float32 and ex["speech"].ndim == 2 and ex["speech"].shape[1] == 80
        assert ex["text"].dtype == np.int32 and ex["error"] == b""
    assert all(ex["text"].size == 0 and 140 <= ex["speech"].shape[0] <= 210 for ex in speech)
    assert all(ex["speech"].shape[0] == 0 and ex["text"][-1] == 1 and (ex["text"][:-1] > 1).all() for ex in text)
    vocab = seqio.SentencePieceVocabulary(MINI_SPM)
    first = paired[0]
    assert first["text"][-1] == 1 and first["speech"].shape[0] > 100
    transcript = open(first["id"].decode().rsplit("/", 1)[0] + "/" + "-".join(
        first["id"].decode().rsplit("/", 1)[1].split("-")[:2]) + ".trans.txt").read()
    assert vocab.decode(first["text"][:-1].tolist()) in transcript


def test_speech_is_randomly_cropped_to_the_sequence_length():
    long_ex = _examples("mini_speech", split="validation", lengths={"speech": 64, "text": 8}, shuffle=True)
    assert all(ex["speech"].shape[0] == 64 for ex in long_ex)
    again = _examples("mini_speech", split="validation", lengths={"speech": 64, "text": 8}, shuffle=True)
    assert all(np.array_equal(a["speech"], b["speech"]) for a, b in zip(long_ex, again))  # deterministic by seed


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("name", ["mini_paired", "mini_transcripts"])
def test_two_hosts_see_disjoint_examples_covering_the_split(name, shuffle):
    everything = [ex["id"] for ex in _examples(name, split="validation")]
    hosts = [[ex["id"] for ex in _examples(name, split="validation", shard=seqio.ShardInfo(i, 2), shuffle=shuffle)]
             for i in range(2)]
    assert len(set(everything)) == len(everything) == 64
    assert not set(hosts[0]) & set(hosts[1])
    assert sorted(hosts[0] + hosts[1]) == sorted(everything)  # nothing lost, nothing duplicated


def test_text_file_task_shards_by_line_when_there_is_one_file():
    lines = [ex["text"].tobytes() for ex in _examples("mini_text")]
    hosts = [[ex["text"].tobytes() for ex in _examples("mini_text", shard=seqio.ShardInfo(i, 2))] for i in range(2)]
    assert len(lines) == 3203
    assert sorted(hosts[0] + hosts[1]) == sorted(lines) and abs(len(hosts[0]) - len(hosts[1])) <= 1


def test_epochs_are_reshuffled():
    task = seqio.get_mixture_or_task("mini_transcripts")
    ds = task.get_dataset(LENGTHS, split="validation", shuffle=True, seed=3, num_epochs=2, try_in_mem_cache=False)
    ids = [ex["id"] for ex in ds.as_numpy_iterator()]
    # seqio's shuffle buffer after preprocessing blends the epoch boundary; each id still comes exactly twice,
    # and the second visits come in another order than the first
    assert len(ids) == 128 and set(collections.Counter(ids).values()) == {2}
    first = list(dict.fromkeys(ids))
    second = list(dict.fromkeys(reversed(ids)))[::-1]
    assert first != second


def _mock_librispeech(self, split, **kwargs):  # tfds.testing.mock_data's as_dataset_fn: real-shaped records
    del self, split, kwargs
    rng = np.random.default_rng(0)
    records = {"speech": [], "text": [], "id": [], "speaker_id": [], "chapter_id": []}
    for k in range(6):
        records["speech"].append((3000 * np.sin(np.arange(8000 + 1600 * k) / 7.0)).astype(np.int16))
        records["text"].append(["HELLO WORLD", "THE CAT", "", "A DOG RAN", "YES", "NO WAY"][k])
        records["id"].append(f"19-198-{k:04d}")
        records["speaker_id"].append(19)
        records["chapter_id"].append(198)
    del rng
    return tf.data.Dataset.from_generator(
        lambda: ({key: records[key][k] for key in records} for k in range(6)),
        output_signature={"speech": tf.TensorSpec([None], tf.int16), "text": tf.TensorSpec([], tf.string),
                          "id": tf.TensorSpec([], tf.string), "speaker_id": tf.TensorSpec([], tf.int64),
                          "chapter_id": tf.TensorSpec([], tf.int64)})


def test_tfds_librispeech_tasks_with_mock_data():
    with tfds.testing.mock_data(as_dataset_fn=_mock_librispeech):
        speech = _examples("librispeech_speech", lengths={"speech": 60, "text": 32})
        paired = _examples("librispeech_paired", lengths={"speech": 2000, "text": 32})
    frames = [1 + (8000 + 1600 * k - 400) // 160 for k in range(6)]
    assert [ex["speech"].shape for ex in speech] == [(min(f, 60), 80) for f in frames]  # cropped to 60 frames
    assert all(ex["text"].size == 0 and ex["error"] == b"" for ex in speech)
    assert [ex["speech"].shape[0] for ex in paired] == [0 if k == 2 else f for k, f in enumerate(frames)]
    assert paired[2]["error"] == b"tfds:19-198-0002: empty transcript"
    vocab = sources.default_vocabulary()
    assert vocab.decode(paired[0]["text"][:-1].tolist()) == "HELLO WORLD"


@pytest.mark.parametrize("name", ["librispeech_lm", "c4_en"])
def test_tfds_text_tasks_with_mock_data(name):
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        examples = _examples(name)
    assert len(examples) == 5
    for ex in examples:
        assert ex["speech"].shape == (0, 80) and ex["text"].size > 0 and ex["text"][-1] == 1
        assert ex["task"] == name.encode() and ex["error"] == b""


def test_check_compatible_explains_seqio_rule(tmp_path):
    other = seqio.PassThroughVocabulary(size=7)
    sources.add_text_files_task("t_other_vocab", {"train": str(tmp_path / "*.txt")}, vocabulary=other)
    with pytest.raises(ValueError, match="vocabulary.*seqio mixes only tasks"):
        sources.check_compatible([seqio.get_mixture_or_task("mini_text"), seqio.get_mixture_or_task("t_other_vocab")])


def test_librilight_folder_task_chunks_long_recordings(tmp_path):
    book = tmp_path / "small" / "42" / "book"
    book.mkdir(parents=True)
    write_utterance(book, "long_rec", seconds=5.0)
    (book / "long_rec.json").write_text(json.dumps({"voice_activity": [[0.0, 5.0]]}))
    write_utterance(book, "no_meta", seconds=1.0)
    sources.add_librilight_task("t_librilight", str(tmp_path), splits={"train": "small"}, chunk_seconds=2.0,
                                vocabulary=seqio.SentencePieceVocabulary(MINI_SPM))
    examples = _examples("t_librilight", lengths={"speech": 1024, "text": 8})
    good = [ex for ex in examples if not ex["error"]]
    assert [ex["id"].decode().rsplit("@", 1)[1] for ex in good] == ["0", "2", "4"]
    assert [ex["speech"].shape[0] for ex in good] == [198, 198, 98]
    bad = [ex["error"].decode() for ex in examples if ex["error"]]
    assert bad == [f"{book}/no_meta.flac: Libri-Light metadata file no_meta.json is missing"]


def test_audio_folder_and_librispeech_folder_tasks(tmp_path):
    librispeech_folder(tmp_path, utterances=3)
    vocab = seqio.SentencePieceVocabulary(MINI_SPM)
    sources.add_audio_folder_task("t_audio_folder", str(tmp_path), splits={"train": "train"}, vocabulary=vocab)
    sources.add_librispeech_folder_task("t_ls_text", str(tmp_path), kind="text", splits={"train": "train"},
                                        vocabulary=vocab)
    audio = _examples("t_audio_folder")
    text = _examples("t_ls_text")
    assert [ex["speech"].shape for ex in audio] == [(98, 80)] * 3
    assert [vocab.decode(ex["text"][:-1].tolist()) for ex in text] == [
        f"THE CAT SAT ON THE {w}" for w in WORDS[:3]]
