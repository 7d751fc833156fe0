"""`Trainer`: the sharded train state and the jitted train / eval / predict steps of any model and loss."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from orbax.checkpoint import multihost

from slam_jax import optim, partitioning, pretraining
from slam_jax.model import ModelConfig, SlamModel
from slam_jax.trainer.config import TrainConfig

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

# How long a process waits for the others to finish compiling before the first step (large models on busy hosts).
_BARRIER_TIMEOUT_S = 1800


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
                 train_cfg: TrainConfig, devices: Sequence[jax.Device] | None = None):
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
        options = dict(train_cfg.compiler_options) or None   # the calls and `compile` use the same options
        self._train_step = jax.jit(self._step_fn, donate_argnums=(0, 1), compiler_options=options,
                                   out_shardings=(self.param_shardings, self.opt_shardings, self.replicated))
        self._eval_step = jax.jit(self._eval_fn, out_shardings=self.replicated, compiler_options=options)
        # TrainConfig.step_programs: one gradient program per group of batch kinds, then one update program.
        self._part_step = jax.jit(self._part_fn, compiler_options=options,
                                  out_shardings=(self.replicated, self.replicated, self.param_shardings))
        self._combine_step = jax.jit(self._combine_fn, donate_argnums=(0, 1), compiler_options=options,
                                     out_shardings=(self.param_shardings, self.opt_shardings, self.replicated))

    @classmethod
    def for_pretraining(cls, *, model_cfg: ModelConfig, objective_cfg: pretraining.ObjectiveConfig,
                        optimizer_cfg: optim.OptimizerConfig, mesh_cfg: partitioning.MeshConfig,
                        train_cfg: TrainConfig, devices: Sequence[jax.Device] | None = None) -> "Trainer":
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
        return self._apply(params, opt_state, *self._part_fn(params, batch, step), step)

    def _part_fn(self, params, batch, step):
        """(loss, metrics, gradients) of the objectives on `batch`: the whole step's batch, or some of its kinds
        (`TrainConfig.step_programs`; the loss sums over kinds, each with a key of its own, so the parts add up)."""
        key = jax.random.fold_in(self.base_key, step)
        (loss, metrics), grads = jax.value_and_grad(self._losses, has_aux=True)(params, batch, step, key, True)
        return loss, metrics, grads

    def _combine_fn(self, params, opt_state, parts, step):
        """`_step_fn`'s update from the parts' (loss, metrics, gradients): their sums, every part's metrics."""
        loss = sum(part[0] for part in parts)
        grads = jax.tree.map(lambda *g: sum(g), *(part[2] for part in parts))
        metrics = {k: v for part in parts for k, v in part[1].items()} | {"loss": loss}
        return self._apply(params, opt_state, loss, metrics, grads, step)

    def _apply(self, params, opt_state, loss, metrics, grads, step):
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
            step_array = self._step_array(step)
            parts = self._parts(batch)
            if not parts:
                return self._train_step(params, opt_state, batch, step_array)
            return self._combine_step(params, opt_state, [self._part_step(params, b, step_array) for b in parts],
                                      step_array)

    def _parts(self, batch: dict) -> list[dict]:
        """`batch` split by `TrainConfig.step_programs` ([]: one program); each kind in exactly one group."""
        groups = self.train_cfg.step_programs
        if not groups:
            return []
        missing = set(batch) - {kind for group in groups for kind in group}
        if missing:
            from slam_jax.config import ConfigError
            raise ConfigError(f"TrainConfig.step_programs = {groups!r} has no program for batch kind(s) "
                              f"{sorted(missing)}")
        parts = [part for part in ({k: batch[k] for k in group if k in batch} for group in groups) if part]
        return parts if len(parts) > 1 else []   # a batch of one group's kinds: one program

    def lower(self, batch: dict, params: Any = None, opt_state: Any = None) -> jax.stages.Lowered:
        """The train step as one program (whatever `TrainConfig.step_programs`: slam-aot's memory and slam-bench's
        FLOPs are those of the accelerators' one-program step) lowered for `batch` (arrays or `ShapeDtypeStruct`s
        with their shardings) and the given state, by default the abstract sharded state: ahead-of-time compilation
        needs no device memory. `lowered_programs` is what `train_step` runs."""
        params = self.abstract_params if params is None else params
        opt_state = self.abstract_opt if opt_state is None else opt_state
        with jax.set_mesh(self.mesh):
            return self._train_step.lower(params, opt_state, batch, jax.ShapeDtypeStruct((), jnp.int32))

    def lowered_programs(self, params, opt_state, batch: dict, step: int) -> list[jax.stages.Lowered]:
        """The programs one train step runs, lowered for these inputs: the step, or with `TrainConfig.step_programs`
        each group's gradient program and then the update program."""
        with jax.set_mesh(self.mesh):
            step_array = self._step_array(step)
            parts = self._parts(batch)
            if not parts:
                return [self._train_step.lower(params, opt_state, batch, step_array)]
            lowered = [self._part_step.lower(params, part, step_array) for part in parts]
            return lowered + [self._combine_step.lower(params, opt_state, [x.out_info for x in lowered], step_array)]

    def compile(self, params, opt_state, batch: dict, step: int) -> float:
        """Compiles the train step for these inputs; returns the seconds taken.

        With several processes, then waits (at a coordination-service barrier, not a collective) until every process
        has compiled: otherwise one process could start the first step's collectives while another still compiles,
        and CPU (gloo) collectives give up after 30 s waiting for a peer to join.
        """
        start = time.time()
        with jax.set_mesh(self.mesh):
            for program in self.lowered_programs(params, opt_state, batch, step):
                program.compile()
        seconds = time.time() - start
        multihost.get_barrier_sync_fn()(key="slam_jax_train_compiled", timeout_ms=_BARRIER_TIMEOUT_S * 1000)
        return seconds

    def compile_eval(self, params, batch: dict, step: int) -> float:
        """Compiles the held-out loss step (`evaluate`) for batches shaped like `batch` (a training batch: eval
        batches have its shapes); returns the seconds taken. Waits for every process, as `compile` does. Called
        before a run's first evaluation, so that a run compiles only the programs it uses, when it first uses them."""
        start = time.time()
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), batch)
        with jax.set_mesh(self.mesh):
            self._eval_step.lower(params, shapes, self._step_array(step)).compile()
        seconds = time.time() - start
        multihost.get_barrier_sync_fn()(key="slam_jax_eval_compiled", timeout_ms=_BARRIER_TIMEOUT_S * 1000)
        return seconds

    def eval_metrics(self, params, local: dict, step: int) -> dict[str, float]:
        """The eval step's metrics (every objective's losses, accuracies, health) of one host batch, on host."""
        batch = partitioning.global_batch(local, self.mesh)
        with jax.set_mesh(self.mesh):
            return jax.device_get(self._eval_step(params, batch, self._step_array(step)))

    def evaluate(self, params, step: int, template: dict, stream_cfg) -> dict[str, float]:
        """Held-out losses and accuracies on `TrainConfig.eval_split` of the stream `stream_cfg` describes
        (`Evaler.mean_losses`)."""
        from slam_jax.data import converter
        from slam_jax.evaluation.evaler import Evaler
        cfg = dataclasses.replace(stream_cfg, split=self.train_cfg.eval_split, shuffle=False)
        stream = converter.eval_stream(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
        return Evaler(self, params).mean_losses(stream, template, step)

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
