"""The training loop never waits for a step between logs: with a fake stream and the real (tiny) train step, the
next batch is read and its transfer issued before the previous step's result is fetched, and the host fetches
metrics (its only device sync) once per `log_every` steps. Also: the finite guard skips a non-finite update, and a
step compiled as several programs (`TrainConfig.step_programs`) is the one-program step."""
from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

import tasks  # noqa: F401
from helpers import TINY, full_batch
from slam_jax import bench, config, flops, optim, partitioning, pretraining, trainer as trainer_lib
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
    """Evaler.batches: a split without the evaluation's kind, a stream with nothing left and a missing predict
    function are errors that say which (an empty shard on disk is the data source's error, naming the folder and
    shard)."""
    import dataclasses

    from slam_jax.data import converter
    from slam_jax.evaluation.evaler import Evaler
    predict = lambda model, batch: {"rows": batch["paired"]["segment_ids"]}   # noqa: E731 (never runs here)
    evaler = Evaler(trainer, None, predict, kind="paired")
    cfg = dataclasses.replace(config.StreamConfig(), split="validation", batch_size=100)
    with pytest.raises(ValueError, match="has no paired data: this evaluation reads paired rows .kinds there: text"):
        next(evaler.batches(converter.eval_stream(dataclasses.replace(cfg, mixture="mini_text_mix"))))
    paired = converter.eval_stream(dataclasses.replace(cfg, mixture="mini_paired_mix"))
    assert sum(1 for _ in paired) > 0
    with pytest.raises(ValueError, match="split 'validation' of 'mini_paired_mix' is empty for process 0 of 1"):
        next(evaler.batches(paired))
    with pytest.raises(TypeError, match="needs a predict function and a kind"):
        next(Evaler(trainer, None).batches(paired))


def test_step_programs_give_the_one_program_step():
    """A gradient program for (speech, text), one for (paired) and an update program: the same losses, metrics and
    parameters after two steps as the one-program step, up to float summation order. Text MLM and TLM (which
    trains the speech stack and the quantizer's targets) keep the compiles short; the sum over kinds is what is
    tested."""
    model_cfg = dataclasses.replace(TINY, speech_layers=1, shared_layers=1, scan_layers=False)
    objectives = pretraining.ObjectiveConfig(contrastive=False, speech_mlm=False, tlm=True, stm=False)
    batch = full_batch(batch=2)

    def make(groups):
        return trainer_lib.Trainer.for_pretraining(
            model_cfg=model_cfg, objective_cfg=objectives, mesh_cfg=partitioning.MeshConfig(),
            optimizer_cfg=optim.OptimizerConfig(peak_learning_rate=1e-3, warmup_steps=1),
            train_cfg=trainer_lib.TrainConfig(step_programs=groups), devices=jax.local_devices()[:1])

    results = []
    for groups in ((), (("speech", "text"), ("paired",))):
        t = make(groups)
        params = t.init_params()
        opt_state = t.init_opt_state(params)
        device_batch = t.device_batch(batch)
        t.compile(params, opt_state, device_batch, 0)
        lowered = []

        def record(event, seconds, **kwargs):
            if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
                lowered.append(seconds)
        jax.monitoring.register_event_duration_secs_listener(record)
        try:
            for step in range(2):
                params, opt_state, metrics = t.train_step(params, opt_state, device_batch, step)
        finally:
            jax.monitoring.unregister_event_duration_listener(record)
        # The steps run what `compile` compiled (nothing lowered again); the split step runs its own programs.
        assert not lowered
        assert (t._part_step._cache_size(), t._combine_step._cache_size()) == ((2, 1) if groups else (0, 0))
        results.append((jax.device_get(params), jax.device_get(metrics)))
    (one_params, one), (split_params, split) = results
    assert set(split) == set(one) and "paired/tlm_speech_loss" in one and "text/mlm_loss" in one
    for name in one:
        assert split[name] == pytest.approx(one[name], rel=1e-5, abs=1e-6), name
    for a, b in zip(jax.tree.leaves(one_params), jax.tree.leaves(split_params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)

    with pytest.raises(config.ConfigError, match="TrainConfig.step_programs"):
        trainer_lib.TrainConfig(step_programs=(("speech",), ("speech", "paired")))
    with pytest.raises(config.ConfigError, match=r"no program for batch kind\(s\) \['text'\]"):
        make((("speech",), ("paired",))).train_step(params, opt_state, device_batch, 2)
