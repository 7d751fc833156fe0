"""SLAM pre-training, assembled from the gin configuration (the `slam-train` command: `slam_jax/cli/train.py`).

    slam-train --gin_file=runs/cpu_smoke.gin --model_dir=/tmp/slam [--gin.TRAIN_STEPS=200] [--gin.NAME=VALUE ...]

The gin search path includes the package's `gin/` folder. Unknown or misspelled bindings fail before any work.
`model_dir` receives `config.gin` (the operative config), orbax checkpoints, TensorBoard events and `metrics.jsonl`.
A run resumes from the latest checkpoint in `model_dir`; SIGTERM (preemption) saves a checkpoint and exits 0.
Multi-process: pass `--coordinator_address/--num_processes/--process_id` (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), or `--distributed` on Cloud TPU, where `jax.distributed.initialize()` finds
its peers itself.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from slam_jax import config, flops, health, partitioning
from slam_jax.data import schema
from slam_jax.trainer import TrainConfig, Trainer, TrainResult, run_loop, stream_scalars
from slam_jax.trainer.warm_start import warm_start


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
            params = warm_start(train_cfg.init_from, trainer, params, allow_fresh=train_cfg.init_from_allow_fresh,
                                setting="TrainConfig.init_from")
        return params

    shapes = flops.BatchShapes.from_batch(schema.batch_spec(stream_cfg, stream.kind_batch_sizes))
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
    from slam_jax.data import mixtures
    vocabulary = mixtures.vocabulary_for(mixture)
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
