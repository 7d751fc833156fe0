"""`slam-train`: gin-configured SLAM pre-training (t5x conventions).

    slam-train --gin_file=runs/cpu_smoke.gin --model_dir=/tmp/slam [--gin.TRAIN_STEPS=200] [--gin.NAME=VALUE ...]

The gin search path includes the package's `gin/` folder. Unknown or misspelled bindings fail before any work.
`model_dir` receives `config.gin` (the operative config), orbax checkpoints, TensorBoard events and `metrics.jsonl`.
A run resumes from the latest checkpoint in `model_dir`; SIGTERM (preemption) saves a checkpoint and exits 0.
Multi-process: pass `--coordinator_address/--num_processes/--process_id` (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` on Cloud TPU, where `jax.distributed.initialize()` finds
its peers itself.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from orbax.checkpoint import multihost

from slam_jax import checkpointing, config, flops, health, optim, partitioning, pretraining
from slam_jax.model import ModelConfig, SlamModel

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

log = logging.getLogger("slam_jax.train")

# How long a process waits for the others to finish compiling before the first step (large models on busy hosts).
_BARRIER_TIMEOUT_S = 1800


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings.

    train_steps: total steps of this stage (the step counter continues across resumes).
    log_every: steps between metric logs (metrics.jsonl, TensorBoard, console).
    eval_every: steps between held-out evaluations on `eval_split` (0 disables); eval_batches: batches per
      evaluation (0 = the whole split).
    checkpoint_every / keep_checkpoints / keep_every: save period, keep-last-N, keep every K-th step forever.
    init_from: warm-start the parameters from another run's latest checkpoint (multi-stage training: stage 2 starts
      from stage 1); ignored once this run has checkpoints of its own.
    seed: parameter init and the per-step masking / negative-sampling / Gumbel / dropout keys.
    """

    train_steps: int = 1000
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int = 0
    eval_split: str = "validation"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    keep_every: int | None = None
    async_checkpointing: bool = True
    init_from: str | None = None
    seed: int = 0


TrainConfig = gin.external_configurable(TrainConfig, name="TrainConfig")


class NonFiniteLossError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ the trainer
class Trainer:
    """Sharded state and the jitted train/eval steps of any model and loss (pre-training and fine-tuning).

    The one train step (shardings, jit with donated state, finite guard, metrics) that `slam-train` runs,
    `slam-bench` times and `slam-aot` compiles for a TPU topology (`lower`).

    model_fn: `rngs -> nnx.Module` builds the model (called abstractly first, so parameters are created sharded).
    loss_fn: `(model, batch, step, key, train) -> (loss, metrics)`, metrics named `kind/metric`.
    loss_names: the metric names of the losses that must stay finite (named in the error when one is not).
    optimizer: (optax transformation, learning-rate schedule).
    """

    def __init__(self, *, model_fn: Callable[[nnx.Rngs], nnx.Module], loss_fn: LossFn, loss_names: Sequence[str],
                 optimizer: tuple[optax.GradientTransformation, optax.Schedule], mesh_cfg: partitioning.MeshConfig,
                 train_cfg: "TrainConfig", devices: Sequence[jax.Device] | None = None):
        self.train_cfg, self.model_fn, self.loss_fn = train_cfg, model_fn, loss_fn
        self.loss_names = tuple(loss_names)
        self.mesh = partitioning.make_mesh(mesh_cfg, devices)
        self.rules = mesh_cfg.rules
        self.tx, self.schedule = optimizer

        # Abstract model -> logical shardings -> parameters created directly sharded under jit.
        with nnx.use_eager_sharding(False):
            abstract = nnx.eval_shape(lambda: model_fn(nnx.Rngs(params=0)))
        self.graphdef, abstract_params = nnx.split(abstract)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        self.param_shardings = partitioning.logical_shardings(abstract_params, self.mesh, self.rules)
        self.opt_shardings = partitioning.logical_shardings(abstract_opt, self.mesh, self.rules)
        self.abstract_params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params, self.param_shardings)
        self.abstract_opt = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_opt, self.opt_shardings)
        self.base_key, self.eval_key = jax.random.split(jax.random.key(train_cfg.seed))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._train_step = jax.jit(self._step_fn, donate_argnums=(0, 1),
                                   out_shardings=(self.param_shardings, self.opt_shardings, self.replicated))
        self._eval_step = jax.jit(self._eval_fn, out_shardings=self.replicated)
        self._grads = jax.jit(jax.value_and_grad(self._losses, has_aux=True), static_argnums=(4,),
                              out_shardings=((self.replicated, self.replicated), self.param_shardings))

    @classmethod
    def for_pretraining(cls, *, model_cfg: ModelConfig, objective_cfg: pretraining.ObjectiveConfig,
                        optimizer_cfg: optim.OptimizerConfig, mesh_cfg: partitioning.MeshConfig,
                        train_cfg: "TrainConfig", devices: Sequence[jax.Device] | None = None) -> "Trainer":
        """The SLAM pre-training step: `SlamModel` and every active objective of `objective_cfg`."""
        def losses(model, batch, step, key, train):
            return pretraining.compute_losses(model, batch, step, key, objective_cfg, train=train)
        return cls(model_fn=lambda rngs: SlamModel(model_cfg, rngs=rngs), loss_fn=losses,
                   loss_names=pretraining.loss_names(objective_cfg), optimizer=optim.make_optimizer(optimizer_cfg),
                   mesh_cfg=mesh_cfg, train_cfg=train_cfg, devices=devices)

    # -------------------------------------------------------------------------------------------- state
    def init_params(self) -> Any:
        def init():
            with nnx.use_eager_sharding(False):
                return nnx.state(self.model_fn(nnx.Rngs(params=self.train_cfg.seed)))
        return jax.jit(init, out_shardings=self.param_shardings)()

    def init_opt_state(self, params: Any) -> Any:
        return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

    # -------------------------------------------------------------------------------------------- steps
    def _losses(self, params, batch, step, key, train):
        model = nnx.merge(self.graphdef, params)
        with nnx.logical_axis_rules(tuple(self.rules)):
            return self.loss_fn(model, batch, step, key, train)

    def _step_fn(self, params, opt_state, batch, step):
        key = jax.random.fold_in(self.base_key, step)
        (loss, metrics), grads = jax.value_and_grad(self._losses, has_aux=True)(params, batch, step, key, True)
        updates, new_opt = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # Guard (as optax.apply_if_finite, without its extra optimizer state): a non-finite loss or gradient leaves
        # parameters and optimizer state untouched; the loop reports it and stops at the last good state.
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        metrics["grad_norm"] = grad_norm
        metrics["update_skipped"] = 1.0 - finite.astype(jnp.float32)
        metrics["learning_rate"] = self.schedule(step)
        return keep(new_params, params), keep(new_opt, opt_state), metrics

    def _eval_fn(self, params, batch, step):
        return self._losses(params, batch, step, self.eval_key, False)[1]

    def device_batch(self, local_batch: dict) -> dict:
        """This process' rows -> the global batch sharded over (`data`, `fsdp`); the transfer is asynchronous."""
        return partitioning.global_batch(local_batch, self.mesh)

    @staticmethod
    def _step_array(step: int) -> jax.Array:
        """The step as the jitted steps take it; call under `jax.set_mesh` (its sharding type is part of the jit
        cache key, so `compile` and the calls it prepares must build it the same way)."""
        return jnp.asarray(step, jnp.int32)

    def train_step(self, params, opt_state, batch: dict, step: int):
        """One optimizer step on a global batch from `device_batch`; returns (params, opt_state, metrics)."""
        with jax.set_mesh(self.mesh):
            return self._train_step(params, opt_state, batch, self._step_array(step))

    def lower(self, batch: dict, params: Any = None, opt_state: Any = None) -> jax.stages.Lowered:
        """The train step lowered for `batch` (arrays or `ShapeDtypeStruct`s with their shardings) and the given
        state, by default the abstract sharded state: ahead-of-time compilation needs no device memory."""
        params = self.abstract_params if params is None else params
        opt_state = self.abstract_opt if opt_state is None else opt_state
        with jax.set_mesh(self.mesh):
            return self._train_step.lower(params, opt_state, batch, jax.ShapeDtypeStruct((), jnp.int32))

    def compile(self, params, opt_state, batch: dict, step: int, eval_step: bool = False) -> float:
        """Compiles the train step (and the held-out loss step with `eval_step`) for these inputs; returns the
        seconds taken.

        With several processes, then waits (at a coordination-service barrier, not a collective) until every process
        has compiled: otherwise one process could start the first step's collectives while another still compiles,
        and CPU (gloo) collectives give up after 30 s waiting for a peer to join.
        """
        start = time.time()
        with jax.set_mesh(self.mesh):
            step = self._step_array(step)
            self._train_step.lower(params, opt_state, batch, step).compile()
            if eval_step:
                self._eval_step.lower(params, batch, step).compile()
        seconds = time.time() - start
        multihost.get_barrier_sync_fn()(key="slam_jax_train_compiled", timeout_ms=_BARRIER_TIMEOUT_S * 1000)
        return seconds

    def loss_and_grads(self, params, local_batch: dict, step: int) -> tuple[Any, dict, Any]:
        """(loss, metrics, gradients) of one batch without updating anything (used to check sharding numerics)."""
        batch = partitioning.global_batch(local_batch, self.mesh)
        step = jnp.asarray(step, jnp.int32)
        with jax.set_mesh(self.mesh):
            (loss, metrics), grads = self._grads(params, batch, step, jax.random.fold_in(self.base_key, step), True)
        return loss, metrics, grads

    def eval_batches(self, stream: Iterator[dict], template: dict, *, partial_ok: bool = False) -> Iterator[dict]:
        """This process' host batches of a finite `stream`, in lockstep with the other processes.

        Every process must run the same number of (collective) eval steps: `TrainConfig.eval_batches` when set
        (required with several processes), else one pass over the stream. A process whose shard ran out yields
        all-padding batches shaped like `template` (a training batch); so does a kind the stream lacks. A metric
        of the whole split (WER, BLEU, ...: `partial_ok=False`) prints a warning when `eval_batches` stops before
        this process' shard is exhausted, since its score then covers only part of the split.
        """
        n = self.train_cfg.eval_batches
        if jax.process_count() > 1 and not n:
            raise config.ConfigError("multi-process evaluation needs TrainConfig.eval_batches > 0")
        empty = jax.tree.map(np.zeros_like, template)
        i = 0
        while not n or i < n:
            local = next(stream, None)
            if local is None:
                if not n:
                    return
                local = empty
            yield {k: local.get(k, empty[k]) for k in template}
            i += 1
        rest = None if partial_ok else next(stream, None)
        if rest is not None and any((sub["segment_ids"] > 0).any() for sub in rest.values()):
            print(f"warning: TrainConfig.eval_batches = {n} ended before process {jax.process_index()}'s shard of "
                  "the split did, so the score covers part of the split; with N processes eval_batches must reach "
                  "split size / (N x rows per process), and one process can use --eval_batches=0 (all of it)",
                  flush=True)

    def evaluate(self, params, step: int, template: dict, stream_cfg) -> dict[str, float]:
        """Held-out losses and accuracies on `TrainConfig.eval_split` of the stream `stream_cfg` describes,
        averaged over the batches where each kind has data (see `eval_batches` for the number of batches)."""
        from slam_jax.data import converter
        cfg = dataclasses.replace(stream_cfg, split=self.train_cfg.eval_split, shuffle=False)
        stream = converter.eval_stream(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for local in self.eval_batches(stream, template, partial_ok=True):
            batch = partitioning.global_batch(local, self.mesh)
            with jax.set_mesh(self.mesh):
                metrics = jax.device_get(self._eval_step(params, batch, self._step_array(step)))
            present = {kind: float(metrics.get(key, 0)) > 0 for kind, key in
                       (("speech", "speech/frames"), ("text", "text/tokens"), ("paired", "paired/pairs"))}
            for k, v in metrics.items():
                kind = k.split("/")[0]
                if present.get(kind, any(present.values())):
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
        return {f"eval/{k}": v / counts[k] for k, v in sums.items()}

    def predict_fn(self, fn: Callable[[nnx.Module, dict], Any]) -> Callable[[Any, dict], Any]:
        """Jits `fn(model, batch) -> outputs` (every output [global batch, ...]) for inference on host batches.

        The returned callable takes (params, this process' host batch) and returns this process' rows of the
        outputs as NumPy arrays (`global_array_to_host_local_array`), in the order of the host batch's rows.
        """
        def apply(params, batch):
            model = nnx.merge(self.graphdef, params)
            with nnx.logical_axis_rules(tuple(self.rules)):
                out = fn(model, batch)
            return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
                x, partitioning.batch_sharding(self.mesh, x.ndim)), out)

        jitted = jax.jit(apply)

        def run(params, local_batch: dict) -> Any:
            from jax.experimental import multihost_utils
            batch = partitioning.global_batch(local_batch, self.mesh)
            with jax.set_mesh(self.mesh):
                out = jitted(params, batch)
            local = multihost_utils.global_array_to_host_local_array(
                out, self.mesh, jax.tree.map(lambda x: x.sharding.spec, out))
            return jax.tree.map(np.asarray, local)

        return run


# ------------------------------------------------------------------------------------------------ logging
class MetricLogger:
    """metrics.jsonl + TensorBoard (process 0 only) + a console progress line with ETA."""

    def __init__(self, model_dir: str, total_steps: int):
        from clu import metric_writers
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self.writer = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard")) if self.enabled \
            else None

    def write(self, step: int, scalars: dict[str, float], console: bool = True, steps_per_sec: float = 0.0):
        if not self.enabled:
            return
        import tensorflow as tf
        record = {"step": step, **{k: float(v) for k, v in sorted(scalars.items())}}
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
        self.writer.flush()
        if console:
            eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
            losses = " ".join(f"{k.split('/')[0][0]}/{k.split('/')[-1]}={v:.3f}" for k, v in sorted(scalars.items())
                              if k.endswith("_loss") and not k.startswith("eval/"))
            eta_s = f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}" if math.isfinite(eta) \
                else "?"
            print(f"step {step}/{self.total} loss={scalars.get('loss', float('nan')):.4f} {losses} "
                  f"{steps_per_sec:.2f} steps/s ETA {eta_s}", flush=True)

    def close(self):
        if self.writer:
            self.writer.close()


# ------------------------------------------------------------------------------------------------ the loop
@dataclasses.dataclass
class TrainResult:
    step: int
    params: Any
    metrics: dict[str, float]


def train(model_dir: str, *, devices: Sequence[jax.Device] | None = None) -> TrainResult:
    """Runs (or resumes) the gin-configured pre-training; returns the final step, parameters and last metrics."""
    from slam_jax.data import converter
    model_cfg, objective_cfg = config.ModelConfig(), config.ObjectiveConfig()
    stream_cfg, optimizer_cfg, mesh_cfg = config.StreamConfig(), config.OptimizerConfig(), config.MeshConfig()
    train_cfg = TrainConfig()
    trainer = Trainer.for_pretraining(model_cfg=model_cfg, objective_cfg=objective_cfg, optimizer_cfg=optimizer_cfg,
                                      mesh_cfg=mesh_cfg, train_cfg=train_cfg, devices=devices)
    vocabulary = check_vocabulary(stream_cfg.mixture, model_cfg.vocab_size)
    stream = converter.make_stream(stream_cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
    partitioning.check_batch_sizes({k: v for k, v in stream.kind_batch_sizes.items() if v}, trainer.mesh)

    def initial_params():
        params = trainer.init_params()
        if train_cfg.init_from:
            params, skipped = checkpointing.warm_start_params(train_cfg.init_from, trainer.abstract_params, params)
            print(f"warm-started from {train_cfg.init_from}" +
                  (f"; freshly initialized: {', '.join(skipped)}" if skipped else ""), flush=True)
        return params

    shapes = flops.BatchShapes(
        speech_rows=stream.kind_batch_sizes.get("speech", 0), speech_frames=stream_cfg.speech_frames,
        text_rows=stream.kind_batch_sizes.get("text", 0), text_tokens=stream_cfg.text_tokens,
        paired_rows=stream.kind_batch_sizes.get("paired", 0), paired_frames=stream_cfg.paired_frames,
        paired_tokens=stream_cfg.paired_tokens)
    meta = {"vocabulary": vocabulary, "data_paths": dataclasses.asdict(config.DataConfig())}
    return run_loop(trainer, stream, model_dir, initial_params=initial_params,
                    evaluate=lambda params, step, local: trainer.evaluate(params, step, local, stream_cfg),
                    meta=meta, compile_eval_step=bool(train_cfg.eval_every),
                    flops_per_step=flops.train_step_flops(model_cfg, shapes, objective_cfg),
                    stream_metrics=lambda: stream_scalars(stream.stats()),
                    health_check=lambda metrics, step: health.warnings(
                        metrics, step, model_cfg.num_codebooks * model_cfg.codebook_size))


def check_vocabulary(mixture: str, vocab_size: int) -> str:
    """The SentencePiece model file of `mixture`'s text feature; raises ConfigError unless its size is exactly
    `ModelConfig.vocab_size` (a smaller model leaves embedding rows that never train, a larger one yields ids
    past the embedding table)."""
    from slam_jax.data import converter
    vocabulary = converter.vocabulary_for(mixture)
    path = getattr(vocabulary, "sentencepiece_model_file", type(vocabulary).__name__)
    try:
        size = vocabulary.vocab_size
    except Exception as e:  # an unreadable or missing model file: name it
        raise config.ConfigError(f"vocabulary of mixture {mixture!r} ({path}) cannot be loaded: {e}") from None
    if size != vocab_size:
        raise config.ConfigError(
            f"the vocabulary of mixture {mixture!r} ({path}) has {size} pieces but ModelConfig.vocab_size = "
            f"{vocab_size}: set DataConfig.spm_model (or $SLAM_SPM_MODEL) to the model the run was configured "
            f"for, or ModelConfig.vocab_size = {size}")
    return path


def stream_scalars(stats: dict) -> dict[str, float]:
    """Data-stream statistics of this host for the metrics (see `OneStream.stats`): padding fraction per kind,
    skipped and too-long examples per task, cumulative since the stream started."""
    out: dict[str, float] = {}
    for kind in ("speech", "text", "paired"):
        if kind not in stats:
            continue
        s = stats[kind]
        out[f"data/{kind}/padding_fraction"] = s["padding_fraction"]
        if "token_padding_fraction" in s:
            out[f"data/{kind}/token_padding_fraction"] = s["token_padding_fraction"]
        for task, n in s["skipped"].items():
            out[f"data/{kind}/skipped/{task}"] = n
        for task, n in s["too_long"].items():
            out[f"data/{kind}/too_long/{task}"] = n
    return out


def run_loop(trainer: Trainer, stream, model_dir: str, *, initial_params: Callable[[], Any],
             evaluate: Callable[[Any, int, dict], dict[str, float]] | None = None,
             meta: dict | None = None, compile_eval_step: bool = False,
             flops_per_step: float | None = None,
             stream_metrics: Callable[[], dict[str, float]] | None = None,
             health_check: Callable[[dict[str, float], int], dict[str, str]] | None = None) -> TrainResult:
    """The training loop shared by pre-training and fine-tuning (t5x conventions).

    Writes the operative gin config to `model_dir/config.gin`, resumes from the latest checkpoint in `model_dir`
    (else starts from `initial_params()`), runs `TrainConfig.train_steps` steps with metrics (metrics.jsonl,
    TensorBoard, a progress line with ETA), calls `evaluate(params, step, host batch) -> {"eval/...": value}` every
    `eval_every` steps, checkpoints every `checkpoint_every` steps (parameters, optimizer state, the data-iterator
    state of `stream`, `meta`), and on SIGTERM saves the same step on every process and returns.

    The host never waits for a step between logs: step `n` is dispatched, the preemption check is local (see
    `PreemptionWatch`), and batch `n + 1` is read and its transfer issued while step `n` runs; metrics are fetched
    every `log_every` steps only. `flops_per_step` (model FLOPs of one step) adds `tflops_per_s_per_device` and,
    where the device's peak is known (`flops.peak_flops`), `mfu`; `stream_metrics()` adds data-stream statistics
    at every log. `health_check(metrics, step) -> {metric: warning}` runs at every log: their count is logged as
    `health/warnings` and each warning is printed when it first appears and then every 10th log while it holds.

    `stream`: iterator of host batches with `get_state() -> bytes`, `set_state(bytes)` and `kind_batch_sizes`
    (global rows per kind). `compile_eval_step`: `evaluate` uses `trainer.evaluate` (compiled before step 1 too).
    """
    train_cfg = trainer.train_cfg
    import tensorflow as tf
    tf.io.gfile.makedirs(model_dir)
    operative = gin.operative_config_str()
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(operative)

    ckpt = checkpointing.Checkpointer(model_dir, keep=train_cfg.keep_checkpoints, keep_every=train_cfg.keep_every,
                                      async_save=train_cfg.async_checkpointing)
    step = ckpt.latest_step()
    if step is not None:
        params, opt_state, data_state, _ = ckpt.restore(step, trainer.abstract_params, trainer.abstract_opt)
        stream.set_state(data_state)
        print(f"resumed from {model_dir} at step {step}", flush=True)
    else:
        step = 0
        params = initial_params()
        opt_state = trainer.init_opt_state(params)

    meta = {"gin_config": operative, "git_sha": checkpointing.git_sha(), "jax_version": jax.__version__,
            "mesh": dict(trainer.mesh.shape), "process_count": jax.process_count(), **(meta or {})}
    logger = MetricLogger(model_dir, train_cfg.train_steps)
    devices = trainer.mesh.devices.size
    peak = flops.peak_flops(trainer.mesh.devices.flat[0]) if flops_per_step else None
    preemption = PreemptionWatch()
    last_saved, last = step, {}
    pending: list[tuple[int, Any]] = []
    warned: dict[str, int] = {}  # metric of a health warning -> consecutive logs it has held
    window_start, window_steps = time.time(), 0
    examples_per_step = sum(stream.kind_batch_sizes.values())

    def fetch():
        """The next host batch and its global device batch (the transfer overlaps a running step)."""
        host = next(stream)
        return host, trainer.device_batch(host)

    try:
        if step < train_cfg.train_steps:
            local, batch = fetch()
            seconds = trainer.compile(params, opt_state, batch, step, eval_step=compile_eval_step)
            steps = "train and eval steps" if compile_eval_step else "train step"
            print(f"compiled the {steps} in {seconds:.1f} s", flush=True)
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
                scalars = evaluate(params, step, local)
                logger.write(step, scalars, console=False)
                print("eval " + " ".join(f"{k[5:]}={v:.4f}" for k, v in sorted(scalars.items())
                                         if k.endswith(("_loss", "_accuracy")) or k.count("/") == 1), flush=True)
            if saving:
                ckpt.save(step, params, opt_state, stream.get_state(), meta)
                last_saved = step
                if step < train_cfg.train_steps:
                    local, batch = fetch()
        if last_saved != step:
            ckpt.save(step, params, opt_state, stream.get_state(), meta, force=True)
        if preemption.notified:
            print(f"received signal (preemption notice): saved checkpoint at step {step}, exiting", flush=True)
    finally:
        ckpt.close()
        logger.close()
        preemption.close()
    return TrainResult(step=step, params=params, metrics=last)


class PreemptionWatch:
    """SIGTERM -> every process stops after the same step, without a collective per step.

    With several processes, JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM on
    any process and agrees on the step to stop at in the background; `reached(step)` is its local check
    (`multihost_utils.reached_preemption_sync_point`, the sync point orbax's `reached_preemption` uses). A single
    process sets a flag in a Python SIGTERM handler.
    """

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self.notified = False
        self._signal = None
        self._previous = None
        if not self.multi_process:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self._signal = signum

    def reached(self, step: int) -> bool:
        """True at the step where this process (and, with several, every process) must save and stop."""
        if self.multi_process:
            from jax.experimental import multihost_utils
            self.notified = self.notified or multihost_utils.reached_preemption_sync_point(step)
        else:
            self.notified = self._signal is not None
        return self.notified

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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


# ------------------------------------------------------------------------------------------------ entry point
def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of every CLI (`initialize_distributed` reads them)."""
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() with no arguments (Cloud TPU pods)")


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the JAX cluster named by the flags (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).

    Must run before anything initializes a JAX backend (jax.devices(), a computation). The CPU backend's
    cross-process collectives use gloo: the fake-device CPU clusters of the tests and a CPU-only run need it, and it
    does not touch GPU / TPU collectives.
    """
    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if address or num:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(address, num_processes=num or None,
                                   process_id=None if pid is None else int(pid))
    elif args.distributed:
        jax.distributed.initialize()


def cli_main(argv: Sequence[str] | None, *, prog: str, description: str, run: Callable[[str], Any],
             errors: tuple[type[Exception], ...] = ()) -> int:
    """The command line shared by `slam-train` and `slam-finetune`: gin flags, --model_dir, --module_import,
    multi-process flags.

    Parses the gin configuration, registers the seqio tasks and the `--module_import` modules (with the gin-bound
    `DataConfig` paths, see `config.register_tasks`), then runs `run(model_dir)`; configuration errors exit 2,
    known run-time errors (bad mesh, mismatched checkpoint, non-finite loss, `errors`) print their message and
    exit 1.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=config.GIN_FLAGS_HELP)
    parser.add_argument("--model_dir", required=True, help="run directory (local or gs://)")
    config.add_module_import_flag(parser)
    add_distributed_flags(parser)
    args, files, bindings = config.parse_gin_command_line(parser, argv, "runs/cpu_smoke.gin")
    try:
        config.parse(files, bindings)
        config.register_tasks(args.module_import)
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    initialize_distributed(args)
    try:
        run(args.model_dir)
    except (config.ConfigError, partitioning.MeshError, checkpointing.CheckpointMismatchError,
            NonFiniteLossError, *errors) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(argv, prog="slam-train", description="SLAM pre-training (gin-configured).", run=train)


if __name__ == "__main__":
    sys.exit(main())
