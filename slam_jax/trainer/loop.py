"""The training loop shared by pre-training and fine-tuning: resume, steps, logs, evaluation, checkpoints and
preemption."""
from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Sequence

import gin
import jax
import numpy as np

from slam_jax import checkpointing, flops
from slam_jax.data.watchdog import StoppedWhileWaiting, WatchedStream
from slam_jax.trainer import run_folder
from slam_jax.trainer.metrics import MetricLogger
from slam_jax.trainer.state import Trainer
from slam_jax.trainer.config import NonFiniteLossError


@dataclasses.dataclass
class TrainResult:
    step: int
    params: Any
    metrics: dict[str, float]


def run_loop(trainer: Trainer, stream, model_dir: str, *, initial_params: Callable[[], Any],
             evaluate: Callable[[Any, int, dict], dict[str, float]] | None = None,
             meta: dict | None = None, compile_eval_step: bool = False,
             flops_per_step: float | None = None,
             stream_metrics: Callable[[], dict[str, float]] | None = None,
             health_check: Callable[[dict[str, float], int], dict[str, str]] | None = None) -> TrainResult:
    """The training loop shared by pre-training and fine-tuning (t5x conventions).

    Takes the run folder's writer lock (`run_folder.RunLock`), resumes from the newest intact checkpoint in
    `model_dir` (else starts from `initial_params()`), writes the operative gin config to `model_dir/config.gin`
    only once the resume is accepted (checkpoint shapes, data-stream identity), runs `TrainConfig.train_steps` steps with metrics (metrics.jsonl,
    TensorBoard, a progress line with ETA), calls `evaluate(params, step, host batch) -> {"eval/...": value}` every
    `eval_every` steps, checkpoints every `checkpoint_every` steps (parameters, optimizer state, the data-iterator
    state of `stream`, `meta`), and on SIGTERM / Ctrl-C saves the same step on every process and returns. Batches come
    through `WatchedStream`: a stream that yields nothing for `TrainConfig.data_stall_timeout_s` is reported (and
    fails under `on_error='raise'`), and a stop signal while it is blocked ends the run within seconds.

    The host never waits for a step between logs: step `n` is dispatched, the preemption check is local (see
    `PreemptionWatch`), and batch `n + 1` is read and its transfer issued while step `n` runs; metrics are fetched
    every `log_every` steps only. `flops_per_step` (model FLOPs of one step) adds `tflops_per_s_per_device` and,
    where the device's peak is known (`flops.peak_flops`), `mfu`; `stream_metrics()` adds data-stream statistics
    at every log. `health_check(metrics, step) -> {metric: warning}` runs at every log: their count is logged as
    `health/warnings` and each warning is printed when it first appears and then every 10th log while it holds.

    `stream`: iterator of host batches with `get_state() -> bytes`, `set_state(bytes)` and `kind_batch_sizes`
    (global rows per kind). `compile_eval_step`: `evaluate` uses `trainer.evaluate`, whose step is compiled before the
    first evaluation.
    """
    train_cfg = trainer.train_cfg
    from slam_jax.data.schema import StreamMismatchError
    operative = gin.operative_config_str()
    lock = run_folder.RunLock(model_dir).acquire()
    ckpt = preemption = None
    try:
        # Every check (checkpoint shapes, data-stream identity) runs before anything but the lock is written.
        ckpt = checkpointing.Checkpointer(model_dir, keep=train_cfg.keep_checkpoints,
                                          keep_every=train_cfg.keep_every, async_save=train_cfg.async_checkpointing)
        restored = ckpt.restore_latest(trainer.abstract_params, trainer.abstract_opt,
                                       accept=lambda step, data_state: stream.set_state(data_state),
                                       fatal=(StreamMismatchError,))
        if restored is not None:
            step, params, opt_state, _, _ = restored
            print(f"resumed from {model_dir} at step {step}", flush=True)
        else:
            step = 0
            params = initial_params()
            opt_state = trainer.init_opt_state(params)
        run_folder.write_config(model_dir, operative, step)
        preemption = PreemptionWatch()
        on_error = getattr(getattr(stream, "config", None), "on_error", "raise")
        stream = WatchedStream(stream, stall_s=train_cfg.data_stall_timeout_s, fail_on_stall=on_error == "raise",
                               stop_requested=preemption.requested)
        return _train(trainer, stream, model_dir, ckpt, preemption, step, params, opt_state, operative,
                      evaluate=evaluate, meta=meta, compile_eval_step=compile_eval_step,
                      flops_per_step=flops_per_step, stream_metrics=stream_metrics, health_check=health_check)
    finally:
        if ckpt is not None:
            ckpt.close()
        if preemption is not None:
            preemption.close()
        lock.release()


def _train(trainer: Trainer, stream, model_dir: str, ckpt: checkpointing.Checkpointer, preemption: "PreemptionWatch",
           step: int, params: Any, opt_state: Any, operative: str, *, evaluate, meta, compile_eval_step,
           flops_per_step, stream_metrics, health_check) -> TrainResult:
    """`run_loop` from an accepted start: the steps, logs, evaluations and checkpoints."""
    train_cfg = trainer.train_cfg
    meta = {"gin_config": operative, "git_sha": checkpointing.git_sha(), "jax_version": jax.__version__,
            "mesh": dict(trainer.mesh.shape), "process_count": jax.process_count(), **(meta or {})}
    logger = MetricLogger(model_dir, train_cfg.train_steps)
    devices = trainer.mesh.devices.size
    peak = flops.peak_flops(trainer.mesh.devices.flat[0]) if flops_per_step else None
    last_saved, last = step, {}
    pending: list[tuple[int, Any]] = []
    warned: dict[str, int] = {}  # metric of a health warning -> consecutive logs it has held
    window_start, window_steps = time.time(), 0
    examples_per_step = sum(stream.kind_batch_sizes.values())

    def fetch():
        """The next host batch and its global device batch (the transfer overlaps a running step)."""
        try:
            host = next(stream)
        except StoppedWhileWaiting as e:
            raise StoppedWhileWaiting(f"{e}; nothing was saved after step {last_saved}, where the run resumes") \
                from None
        return host, trainer.device_batch(host)

    try:
        if step < train_cfg.train_steps:
            local, batch = fetch()
            print("compiling the train step...", flush=True)
            seconds = trainer.compile(params, opt_state, batch, step)
            print(f"compiled the train step in {seconds:.1f} s", flush=True)
            window_start = time.time()  # the first rate (and ETA) counts steps, not compilation
        while step < train_cfg.train_steps:
            params, opt_state, metrics = trainer.train_step(params, opt_state, batch, step)
            step += 1
            window_steps += 1
            pending.append((step, metrics))
            stopping = preemption.reached(step)
            saving = step % train_cfg.checkpoint_every == 0
            if not (stopping or saving or step == train_cfg.train_steps):
                # Read and transfer the next batch while this step runs (dispatch is asynchronous). Not before a
                # checkpoint, whose data-iterator state must be the one right after this step's batch.
                local, batch = fetch()
            if step % train_cfg.log_every == 0 or step == train_cfg.train_steps or stopping:
                values = jax.device_get([m for _, m in pending])
                for (s, _), v in zip(pending, values):
                    _check_finite(s, v, trainer.loss_names, last_saved)
                elapsed = time.time() - window_start
                sps = window_steps / max(elapsed, 1e-9)
                last = {k: float(v) for k, v in values[-1].items()}
                last.update({"steps_per_sec": sps, "examples_per_sec": sps * examples_per_step})
                if flops_per_step:
                    last["tflops_per_s_per_device"] = flops_per_step * sps / devices / 1e12
                    if peak:
                        last["mfu"] = flops_per_step * sps / devices / peak
                if stream_metrics is not None:
                    last.update(stream_metrics())
                if health_check is not None:
                    found = health_check(last, step)
                    last["health/warnings"] = float(len(found))
                logger.write(step, last, steps_per_sec=sps)
                if health_check is not None:
                    warned = {k: warned.get(k, 0) for k in found}  # a warning that stops holding starts afresh
                    for k, message in found.items():
                        if warned[k] % 10 == 0 and jax.process_index() == 0:
                            print(f"WARNING (step {step}): {message}", flush=True)
                        warned[k] += 1
                pending, window_start, window_steps = [], time.time(), 0
            if stopping:
                break
            if evaluate is not None and train_cfg.eval_every and step % train_cfg.eval_every == 0:
                if compile_eval_step:   # the first evaluation compiles its step (a run compiles what it uses)
                    print("compiling the eval step...", flush=True)
                    seconds = trainer.compile_eval(params, batch, step)
                    print(f"compiled the eval step in {seconds:.1f} s", flush=True)
                    compile_eval_step = False
                scalars = evaluate(params, step, local)
                logger.write(step, scalars, console=False)
                print("eval " + " ".join(f"{k[5:]}={v:.4f}" for k, v in sorted(scalars.items())
                                         if k.endswith(("_loss", "_accuracy")) or k.count("/") == 1), flush=True)
                window_start, window_steps = time.time(), 0   # steps/s and the ETA count training, not evaluation
            if saving:
                ckpt.save(step, params, opt_state, stream.get_state(), meta)
                last_saved = step
                if step < train_cfg.train_steps:
                    local, batch = fetch()
        if last_saved != step:
            ckpt.save(step, params, opt_state, stream.get_state(), meta, force=True)
        if preemption.notified:
            print(f"received signal ({preemption.signal_name}): saved checkpoint at step {step}, exiting", flush=True)
    finally:
        logger.close()
    return TrainResult(step=step, params=params, metrics=last)


class PreemptionWatch:
    """SIGTERM / Ctrl-C -> every process stops after the same step, without a collective per step.

    With several processes, JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on
    any process and agrees on the step to stop at in the background; `reached(step)` is its local check
    (`multihost_utils.reached_preemption_sync_point`, the sync point orbax's `reached_preemption` uses). A single
    process sets a flag in a Python SIGTERM handler. The first Ctrl-C (SIGINT) asks for the same save-and-stop;
    a second one interrupts at once (KeyboardInterrupt), saving nothing.
    """

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self.notified = False
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}
        if not self.multi_process:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self._signal == signal.SIGINT:
            raise KeyboardInterrupt
        self._signal = signum
        if signum == signal.SIGINT:
            print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again stops without saving)", flush=True)

    @property
    def signal_name(self) -> str:
        return "preemption notice" if self._signal in (None, signal.SIGTERM) else "Ctrl-C"

    def requested(self) -> bool:
        """A stop signal arrived on this process (what a blocked wait for data polls)."""
        return self._signal is not None

    def reached(self, step: int) -> bool:
        """True at the step where this process (and, with several, every process) must save and stop."""
        if self.multi_process:
            from jax.experimental import multihost_utils
            self.notified = self.notified or multihost_utils.reached_preemption_sync_point(step)
        else:
            self.notified = self._signal is not None
        return self.notified

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _check_finite(step: int, metrics: dict, loss_names: Sequence[str], last_saved: int) -> None:
    if not metrics.get("update_skipped", 0) and np.isfinite(metrics["loss"]):
        return
    if np.isfinite(metrics["loss"]):
        raise NonFiniteLossError(f"non-finite gradient (norm {metrics['grad_norm']}) at step {step} with a finite "
                                 f"loss; the update was skipped. Last good checkpoint: step {last_saved}.")
    bad = [k for k in loss_names if k in metrics and not np.isfinite(metrics[k])]
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (objectives: {', '.join(bad) or 'total only'}); the update was skipped. "
        f"Last good checkpoint: step {last_saved}.")
