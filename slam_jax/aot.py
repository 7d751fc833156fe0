"""Ahead-of-time compilation of a run's train step for a TPU topology, on any machine (the `slam-aot` command:
`slam_jax/cli/aot.py`; no TPU needed).

As MaxText's `train_compile`: libtpu (`pip install -e '.[tpu]'`) describes the topology's chips
(`jax.experimental.topologies`), the run's own train step (`Trainer.for_pretraining`, the object `slam-train`
runs) is built over a mesh of those chips, lowered with abstract sharded parameters, optimizer state and a batch of
the run's static shapes (global rows per kind from the mixture's rates, `StreamConfig` row lengths), and compiled
by XLA:TPU. The report: per-chip argument / output / temporary memory as XLA allocates it against the chip's HBM,
XLA's FLOPs per chip, the analytic model FLOPs (`slam_jax.flops`), and the compile time.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax

from slam_jax import config, flops, partitioning
from slam_jax.finetune import run as finetune_run  # registers the fine-tuning configurables
from slam_jax.trainer import TrainConfig, Trainer
from slam_jax.data import schema

# HBM per chip (GiB, vendor figures), by the generation prefix of the topology name.
HBM_GIB: dict[str, float] = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v6e": 32.0}
GIB = 2 ** 30


class AotError(config.ConfigError):
    """A topology name or run that cannot be compiled; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-chip bytes of the compiled step (`Compiled.memory_analysis()`); `total` = what must fit in HBM:
    arguments + outputs - outputs aliased to donated arguments + temporaries + generated code."""

    argument: int
    output: int
    alias: int
    temp: int
    generated_code: int

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp + self.generated_code


def hbm_bytes(topology: str) -> int:
    """HBM bytes per chip of the generation named by `topology` (e.g. 'v5p:4x4x2')."""
    generation = topology.split(":", 1)[0].split("-", 1)[0].lower()
    if generation not in HBM_GIB:
        raise AotError(f"topology {topology!r}: unknown TPU generation {generation!r}; known: {sorted(HBM_GIB)}")
    return int(HBM_GIB[generation] * GIB)


# Generations whose two TensorCores per chip form one JAX device (megacore), as on their Cloud TPU VMs.
MEGACORE = ("v4", "v5p")


def topology_devices(topology: str) -> list:
    """The chips of a TPU topology ('GENERATION:AxBxC' chips, e.g. 'v5p:2x4x4' = v5p-64), described by libtpu
    without TPU hardware; one device per chip (megacore on v4 / v5p)."""
    if ":" not in topology:
        raise AotError(f"topology {topology!r} must look like 'v5p:2x4x4' (generation:chip grid)")
    # Describing a topology touches no TPU: let this process load libtpu even while another process holds it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    generation = topology.split(":", 1)[0].lower()
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                            chip_config_name="megacore" if generation in MEGACORE else "default")
    except Exception as e:  # libtpu missing or an unknown topology: say which
        raise AotError(f"cannot describe TPU topology {topology!r} ({type(e).__name__}: {e}); "
                       "is libtpu installed (pip install -e '.[tpu]')?") from None
    return list(desc.devices)


def abstract_batch(stream_cfg, rows: dict[str, int], mesh: jax.sharding.Mesh) -> dict:
    """`ShapeDtypeStruct`s of one global batch (`schema.batch_spec`: `rows[kind]` rows per kind with the
    `StreamConfig` row lengths), sharded over the batch mesh axes."""
    return {kind: {key: jax.ShapeDtypeStruct(shape, dtype, sharding=partitioning.batch_sharding(mesh, len(shape)))
                   for key, (shape, dtype) in sub.items()}
            for kind, sub in schema.batch_spec(stream_cfg, rows).items()}


def _finetune_task():
    """The configured fine-tuning task when the gin files bind `FinetuneConfig.task` (a slam-finetune config),
    else None (a pre-training run)."""
    import gin
    try:
        gin.query_parameter("FinetuneConfig.task")
    except ValueError:
        return None
    return finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())


def compile_run(topology: str) -> dict[str, Any]:
    """Compiles the gin-configured run's train step for `topology`; returns the report (see module docstring).
    A fine-tuning config (one binding `FinetuneConfig.task`) compiles slam-finetune's step: the task's model and
    loss over `StreamConfig.batch_size` paired rows; its model FLOPs are not modelled (None)."""
    from slam_jax.data import mixtures
    devices = topology_devices(topology)
    model_cfg, objective_cfg = config.ModelConfig(), config.ObjectiveConfig()
    stream_cfg, mesh_cfg = config.StreamConfig(), config.MeshConfig()
    hosts = len({d.process_index for d in devices})
    start = time.perf_counter()
    task = _finetune_task()
    if task is None:
        trainer = Trainer.for_pretraining(model_cfg=model_cfg, objective_cfg=objective_cfg,
                                          optimizer_cfg=config.OptimizerConfig(), mesh_cfg=mesh_cfg,
                                          train_cfg=TrainConfig(), devices=devices)
        rows = mixtures.kind_batch_sizes(stream_cfg.mixture, stream_cfg.batch_size, hosts)
    else:
        trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), mesh_cfg, TrainConfig(), devices)
        rows = {"paired": stream_cfg.batch_size}
    partitioning.check_batch_sizes({k: v for k, v in rows.items() if v}, trainer.mesh)
    batch = abstract_batch(stream_cfg, rows, trainer.mesh)
    lowered = trainer.lower(batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start

    m = compiled.memory_analysis()
    memory = MemoryReport(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                          alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
                          generated_code=m.generated_code_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    hbm = hbm_bytes(topology)
    shapes = flops.BatchShapes.from_batch(batch)
    return {
        "topology": topology,
        "chips": len(devices),
        "hosts": hosts,
        "device_kind": devices[0].device_kind,
        "mesh": dict(trainer.mesh.shape),
        "mixture": stream_cfg.mixture,
        "rows": rows,
        "objectives": list(objective_cfg.active) if task is None else [task.name],
        "parameters": flops.parameter_count(model_cfg) if task is None else
        sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_params)),
        "memory_per_chip": {**dataclasses.asdict(memory), "total": memory.total},
        "hbm_per_chip": hbm,
        "headroom_per_chip": hbm - memory.total,
        "fits": memory.total <= hbm,
        "xla_flops_per_chip": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "model_flops_per_step": flops.train_step_flops(model_cfg, shapes, objective_cfg) if task is None else None,
        "lower_s": lower_s,
        "compile_s": compile_s,
    }
