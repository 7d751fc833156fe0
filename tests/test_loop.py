"""The training loop never waits for a step between logs: with a fake stream and the real (tiny) train step, the
next batch is read and its transfer issued before the previous step's result is fetched, and the host fetches
metrics (its only device sync) once per `log_every` steps. Also: the finite guard skips a non-finite update."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import tasks  # noqa: F401
from slam_jax import bench, config, flops, trainer as trainer_lib
from train_utils import SMALL

LOG_EVERY, STEPS = 3, 6


class FakeStream:
    """Synthetic host batches in the data contract; records when the loop reads one."""

    def __init__(self, events: list, vocab_size: int):
        self.events = events
        self.shapes = flops.BatchShapes(speech_rows=2, speech_frames=64, text_rows=2, text_tokens=16,
                                        paired_rows=2, paired_frames=64, paired_tokens=8)
        self.kind_batch_sizes = {"speech": 2, "text": 2, "paired": 2}
        self.vocab_size = vocab_size
        self.read = 0

    def __next__(self):
        self.events.append(("read", self.read))
        self.read += 1
        return bench.synthetic_batch(self.shapes, self.vocab_size, seed=self.read)

    def get_state(self) -> bytes:
        return str(self.read).encode()

    def set_state(self, state: bytes) -> None:
        self.read = int(state)

    def stats(self) -> dict:
        return {"speech": {"padding_fraction": 0.25, "skipped": {"a": 1}, "too_long": {"a": 0}}}


@pytest.fixture(scope="module")
def trainer():
    # w2v-BERT's speech objectives: the loop does not depend on the objectives, and the finite guard's NaN enters
    # through the speech features.
    files, bindings, _ = config.split_argv(SMALL + [
        "--gin_file=objectives/w2v_bert.gin", "--gin.ObjectiveConfig.tlm=False", "--gin.ObjectiveConfig.stm=False",
        f"--gin.TRAIN_STEPS={STEPS}", f"--gin.TrainConfig.log_every={LOG_EVERY}",
        "--gin.TrainConfig.checkpoint_every=1000", "--gin.TrainConfig.eval_every=0"])
    config.parse(files, bindings)
    return trainer_lib.Trainer.for_pretraining(
        model_cfg=config.ModelConfig(), objective_cfg=config.ObjectiveConfig(),
        optimizer_cfg=config.OptimizerConfig(), mesh_cfg=config.MeshConfig(), train_cfg=trainer_lib.TrainConfig(),
        devices=jax.local_devices()[:1])


def test_next_batch_transfer_is_issued_before_the_step_result_is_fetched(trainer, tmp_path, monkeypatch):
    events: list = []
    stream = FakeStream(events, config.ModelConfig().vocab_size)

    def record(name, fn):
        def wrapped(*args, **kwargs):
            events.append((name,))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(trainer, "train_step", record("step", trainer.train_step))
    monkeypatch.setattr(trainer, "device_batch", record("transfer", trainer.device_batch))
    monkeypatch.setattr(jax, "device_get", record("fetch", jax.device_get))
    monkeypatch.setattr(jax, "block_until_ready", record("block", jax.block_until_ready))
    from jax.experimental import multihost_utils
    monkeypatch.setattr(multihost_utils, "process_allgather", record("allgather", multihost_utils.process_allgather))

    result = trainer_lib.run_loop(trainer, stream, str(tmp_path / "run"), initial_params=trainer.init_params,
                            flops_per_step=1e9, stream_metrics=lambda: trainer_lib.stream_scalars(stream.stats()))
    assert result.step == STEPS
    names = [e[0] for e in events]
    steps = [i for i, n in enumerate(names) if n == "step"]
    assert len(steps) == STEPS
    # Host syncs: one metrics fetch per log, none per step; no collective for the stop decision.
    assert names.count("fetch") == STEPS // LOG_EVERY
    assert "allgather" not in names and "block" not in names
    for k, i in enumerate(steps[:-1]):
        between = names[i + 1:steps[k + 1]]
        # After dispatching step k: read and transfer batch k + 1 first, then (at a log step) fetch the metrics.
        assert between[:2] == ["read", "transfer"], (k, between)
        assert between.count("fetch") == (1 if (k + 1) % LOG_EVERY == 0 else 0), (k, between)
    # One batch read per step (the first before compiling), none read ahead past the last step.
    assert stream.read == STEPS

    # metrics.jsonl holds throughput and the data-stream statistics.
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [3, 6]
    for r in logged:
        assert r["tflops_per_s_per_device"] > 0 and np.isfinite(r["tflops_per_s_per_device"])
        assert "mfu" not in r  # CPU: no vendor peak, so no MFU rather than a made-up one
        assert r["data/speech/padding_fraction"] == 0.25 and r["data/speech/skipped/a"] == 1
        assert r["update_skipped"] == 0


def test_non_finite_gradient_leaves_the_state_untouched(trainer):
    params = trainer.init_params()
    opt_state = trainer.init_opt_state(params)
    stream = FakeStream([], config.ModelConfig().vocab_size)
    host = next(stream)
    host["speech"]["features"][0, 0, 0] = np.nan
    before = [np.asarray(x) for x in jax.tree.leaves(params)]
    new_params, _, metrics = trainer.train_step(params, opt_state, trainer.device_batch(host), 0)
    metrics = jax.device_get(metrics)
    assert metrics["update_skipped"] == 1
    for x, y in zip(before, jax.tree.leaves(new_params)):
        np.testing.assert_array_equal(x, np.asarray(y))
    with pytest.raises(trainer_lib.NonFiniteLossError, match="step 1"):
        trainer_lib.loop._check_finite(1, metrics, trainer.loss_names, 0)


def test_evaler_names_what_is_missing(trainer):
    """Evaler.batches: a split without the evaluation's kind and a missing predict function are errors that say
    which (an empty shard is the data source's error, naming the folder and shard)."""
    import dataclasses

    from slam_jax.data import converter
    from slam_jax.evaluation.evaler import Evaler
    predict = lambda model, batch: {"rows": batch["paired"]["segment_ids"]}   # noqa: E731 (never runs here)
    evaler = Evaler(trainer, None, predict, kind="paired")
    cfg = dataclasses.replace(config.StreamConfig(), split="validation", batch_size=100)
    with pytest.raises(ValueError, match="has no paired data: this evaluation reads paired rows .kinds there: text"):
        next(evaler.batches(converter.eval_stream(dataclasses.replace(cfg, mixture="mini_text_mix"))))
    paired = converter.eval_stream(dataclasses.replace(cfg, mixture="mini_paired_mix"))
    with pytest.raises(TypeError, match="needs a predict function and a kind"):
        next(Evaler(trainer, None).batches(paired))
