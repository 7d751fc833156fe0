"""The one stream: batch contract, rows per kind, task rates, host sharding, determinism and resumption."""
from __future__ import annotations

import dataclasses
import numpy as np
import pytest

import seqio
import tasks  # noqa: F401
from slam_jax.data import converter, mixtures, schema

SMALL = schema.StreamConfig("mini_slam", batch_size=8, speech_frames=256, text_tokens=64, paired_frames=256,
                               paired_tokens=32, seed=1)


def _check_packed(seg: np.ndarray, align: int) -> int:
    """Asserts segments 1..n are contiguous, start aligned, padding at the end; returns the segment count."""
    n = 0
    for row in seg:
        real = row[row > 0]
        assert np.all(row[len(real):] == 0), "padding must sit at the end of the row"
        ids, starts = np.unique(real, return_index=True)
        assert list(ids) == list(range(1, len(ids) + 1))
        assert all(s % align == 0 for s in starts)
        assert np.all(np.diff(real) >= 0)
        n += len(ids)
    return n


@pytest.fixture(scope="module")
def small():
    """The SMALL stream and its first 3 batches (built once: building a stream traces seqio's graphs, ~3 s)."""
    stream = converter.make_stream(SMALL)
    return stream, [next(stream) for _ in range(3)]


def test_batches_follow_the_schema_contract(small):
    stream, batches = small
    assert stream.kind_batch_sizes == {"speech": 4, "text": 2, "paired": 2}
    real = {"speech": 0, "text": 0}
    for batch in batches:
        for kind in real:
            real[kind] += int((batch[kind]["segment_ids"] > 0).sum())
        schema.validate(batch)
        assert set(batch) == set(schema.KINDS)
        # batch_spec (what slam-aot and slam-bench build batches from) is what the converter yields
        assert {k: {kk: (v.shape, v.dtype) for kk, v in sub.items()} for k, sub in batch.items()} == \
            schema.batch_spec(SMALL, stream.kind_batch_sizes)
        sp, tx, pa = batch["speech"], batch["text"], batch["paired"]
        assert sp["features"].shape == (4, 256, 80) and sp["segment_ids"].shape == (4, 256)
        assert tx["tokens"].shape == (2, 64) and pa["tokens"].shape == (2, 32) and pa["features"].shape == (2, 256, 80)
        assert _check_packed(sp["segment_ids"], schema.SPEECH_ALIGN) >= 4
        assert _check_packed(tx["segment_ids"], 1) >= 2
        assert np.all(sp["features"][sp["segment_ids"] == 0] == 0)  # padded features are zero
        for row_seg, row_pos, row_tok in zip(tx["segment_ids"], tx["positions"], tx["tokens"]):
            for s in range(1, row_seg.max() + 1):
                assert list(row_pos[row_seg == s]) == list(range((row_seg == s).sum()))
                assert row_tok[row_seg == s][-1] == 1  # every sentence ends with EOS
            assert np.all(row_tok[row_seg == 0] == 0)
        for key in ("segment_ids", "token_segment_ids"):
            assert set(np.unique(pa[key])) <= {0, 1} and np.all(pa[key].sum(1) > 0)
    stats = stream.stats()
    assert stats["batches"] == 3 and stats["speech"]["rows"] == 12
    assert stats["speech"]["padding_fraction"] == pytest.approx(1 - real["speech"] / (12 * 256))
    assert stats["text"]["padding_fraction"] == pytest.approx(1 - real["text"] / (6 * 64))
    assert stats["text"]["padding_fraction"] < 0.2
    assert stats["paired"]["skipped_total"] == 0


def test_kind_batch_sizes_from_rates():
    assert mixtures.kind_batch_sizes("mini_slam", 16) == {"speech": 8, "text": 4, "paired": 4}
    assert mixtures.kind_batch_sizes("mini_slam", 7) == {"speech": 3, "text": 2, "paired": 2}  # largest remainder
    assert mixtures.kind_batch_sizes("slam_libri", 10496) == {"speech": 2048, "text": 8192, "paired": 256}
    with pytest.raises(ValueError, match="no row"):
        mixtures.kind_batch_sizes("mini_slam", 2)
    with pytest.raises(ValueError, match="do not split over 2 hosts"):
        mixtures.kind_batch_sizes("mini_slam", 7, num_shards=2)


def test_task_rates_within_a_kind_match_the_mixture():
    config = schema.StreamConfig("mini_text_mix", batch_size=32, text_tokens=128, seed=5)
    stream = converter.make_stream(config)
    while sum(stream.stats()["text"]["examples"].values()) < 5000:
        next(stream)
    stats = stream.stats()["text"]
    assert stats["task_rate"] == pytest.approx({"mini_text": 0.7, "mini_transcripts": 0.3})
    for task, rate in stats["task_rate"].items():
        assert abs(stats["task_fraction"][task] - rate) < 0.02, stats


def test_same_seed_same_stream_other_seed_other_stream(small):
    ba, bb = small[1][0], next(converter.make_stream(SMALL))
    for kind in ba:
        for key in ba[kind]:
            np.testing.assert_array_equal(ba[kind][key], bb[kind][key])
    text = schema.StreamConfig("mini_text_mix", batch_size=4, text_tokens=32)
    one, other = (next(converter.make_stream(dataclasses.replace(text, seed=s)))["text"]["tokens"] for s in (1, 2))
    assert not np.array_equal(one, other)


def test_hosts_split_the_rows():
    config = dataclasses.replace(SMALL, mixture="mini_paired_mix", batch_size=8)
    hosts = [converter.make_stream(config, shard_index=i, num_shards=2) for i in range(2)]
    batches = [next(h) for h in hosts]
    assert hosts[0].kind_batch_sizes == {"paired": 8} and hosts[0].host_batch_sizes == {"paired": 4}
    assert batches[0]["paired"]["features"].shape == (4, 256, 80)
    assert not np.array_equal(batches[0]["paired"]["tokens"], batches[1]["paired"]["tokens"])


def test_eval_stream_covers_the_split_once():
    config = dataclasses.replace(SMALL, split="validation", batch_size=16, speech_frames=1024)
    stream = converter.eval_stream(config)
    assert stream.host_batch_sizes == {"speech": 8, "text": 4, "paired": 4}
    batches = list(stream)
    stats = stream.stats()
    assert stats["speech"]["examples"] == {"mini_speech": 64}
    assert stats["paired"]["examples"] == {"mini_paired": 64}
    assert stats["text"]["examples"] == {"mini_transcripts": 64}  # mini_text has no validation split
    assert len(batches) == 16  # 64 pairs / 4 rows; shorter kinds are padded with all-zero rows
    assert all(b["paired"]["segment_ids"].any(1).all() for b in batches)
    assert not batches[-1]["speech"]["segment_ids"].any()
    segments = sum(_check_packed(b["speech"]["segment_ids"], schema.SPEECH_ALIGN) for b in batches)
    assert segments == 64


def test_state_of_another_stream_is_refused(small):
    state = small[0].get_state()
    other = converter.make_stream(dataclasses.replace(SMALL, mixture="mini_paired_mix"))
    with pytest.raises(ValueError, match="another stream"):
        other.set_state(state)


def test_vocabulary_and_unknown_mixture():
    assert mixtures.vocabulary_for("mini_slam").vocab_size == 512
    with pytest.raises(ValueError, match="no seqio mixture or task named 'nope'"):
        converter.make_stream(schema.StreamConfig("nope"))


def test_slam_data_inspect_prints_rates_padding_and_throughput(capsys):
    from slam_jax.cli import data as data_cli
    rc = data_cli.main(["inspect", "--mixture", "mini_slam", "--num_batches", "3", "--show", "1", "--batch_size", "8",
                           "--speech_frames", "256", "--text_tokens", "64", "--paired_frames", "256",
                           "--paired_tokens", "32"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "{'speech': 4, 'text': 2, 'paired': 2}" in out
    assert "configured 0.700" in out and "configured 0.300" in out
    assert out.count("    padding fraction") == 3 and "token padding fraction" in out and "skipped examples: 0" in out
    assert "batches/s" in out and "examples/s" in out
    assert "utterances, seconds" in out and "sentences" in out and "s audio" in out


def test_single_kind_mixture_leaves_out_tasks_without_the_split():
    # mini_text has no "validation" split: like seqio's own mixtures, the stream reads the tasks that have it.
    seqio.MixtureRegistry.remove("test_text_only")
    seqio.MixtureRegistry.add("test_text_only", [("mini_text", 1.0), ("mini_transcripts", 1.0)])
    stream = converter.make_stream(schema.StreamConfig(mixture="test_text_only", split="validation",
                                                          batch_size=4, text_tokens=32))
    next(stream)
    assert stream.stats()["text"]["examples"]["mini_text"] == 0
    assert stream.stats()["text"]["examples"]["mini_transcripts"] > 0
