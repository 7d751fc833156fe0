"""A run's train step compiled cold, program by program: tracing + lowering, then XLA's compile of each program, and
the step time, for variants of `TrainConfig.step_programs` and `TrainConfig.compiler_options`.

    JAX_PLATFORMS=cpu python benchmarks/slam_compile_bench.py [--gin_file=runs/cpu_smoke.gin] [--gin.NAME=VALUE ...]
        [--variant NAME:GROUPS:OPTIONS ...] [--steps 6]

GROUPS is empty (one program) or the step programs' kind groups, e.g. `speech+text,paired`; OPTIONS is a JSON dict of
XLA options, e.g. `{"xla_backend_optimization_level": 1}`. Each variant builds the trainer of the gin config (the
run's model, objectives and optimizer; a synthetic batch of the rows its mixture gives each kind and of
StreamConfig's lengths), lowers the programs one step runs (`Trainer.lowered_programs`), compiles them one after the
other without the persistent compilation cache, then times `--steps` steps. One JSON line per variant: lower_s, each
program's compile_s, their total, and the median step_s after the first step. docs/PERFORMANCE.md has a measured run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax

from slam_jax import bench, config, flops, partitioning
from slam_jax.data import mixtures, schema
from slam_jax.trainer import Trainer, TrainConfig

DEFAULT_VARIANTS = ['one::{}', 'one_level1::{"xla_backend_optimization_level": 1}', 'three:speech+text,paired:{}',
                    'three_level1:speech+text,paired:{"xla_backend_optimization_level": 1}']


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, ...], ...], dict]:
    name, groups, options = text.split(":", 2)
    return name, tuple(tuple(g.split("+")) for g in groups.split(",") if g), json.loads(options)


def measure(train_cfg: TrainConfig, batch: dict, steps: int) -> dict:
    trainer = Trainer.for_pretraining(
        model_cfg=config.ModelConfig(), objective_cfg=config.ObjectiveConfig(),
        optimizer_cfg=config.OptimizerConfig(), mesh_cfg=partitioning.MeshConfig(data=-1), train_cfg=train_cfg,
        devices=jax.local_devices())
    params = trainer.init_params()
    opt_state = trainer.init_opt_state(params)
    device_batch = trainer.device_batch(batch)
    start = time.perf_counter()
    programs = trainer.lowered_programs(params, opt_state, device_batch, 0)
    lower_s = time.perf_counter() - start
    compile_s = []
    with jax.set_mesh(trainer.mesh):
        for program in programs:
            start = time.perf_counter()
            program.compile()
            compile_s.append(time.perf_counter() - start)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        params, opt_state, metrics = trainer.train_step(params, opt_state, device_batch, step)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return {"lower_s": round(lower_s, 2), "compile_s": [round(c, 2) for c in compile_s],
            "compile_total_s": round(sum(compile_s), 2), "step_s": round(statistics.median(times[1:]), 4),
            "loss": float(metrics["loss"])}


def main(argv: list[str] | None = None) -> None:
    files, bindings, rest = config.split_argv(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", help="NAME:GROUPS:OPTIONS (repeatable); default: " +
                   " ".join(DEFAULT_VARIANTS))
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(rest)
    jax.config.update("jax_enable_compilation_cache", False)
    config.parse(files or ["runs/cpu_smoke.gin"], bindings)
    config.register_tasks()
    stream_cfg = config.StreamConfig()
    rows = mixtures.kind_batch_sizes(stream_cfg.mixture, stream_cfg.batch_size)
    shapes = flops.BatchShapes.from_batch(schema.batch_spec(stream_cfg, rows))
    batch = bench.synthetic_batch(shapes, config.ModelConfig().vocab_size)
    for text in args.variant or DEFAULT_VARIANTS:
        name, groups, options = parse_variant(text)
        train_cfg = dataclasses.replace(TrainConfig(), step_programs=groups, compiler_options=options)
        print(json.dumps({"variant": name, "step_programs": groups, "compiler_options": options, "rows": rows,
                          **measure(train_cfg, batch, args.steps), "backend": jax.default_backend(),
                          "device": jax.devices()[0].device_kind}), flush=True)


if __name__ == "__main__":
    main()
