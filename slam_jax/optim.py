"""Optimizer: Adam with the Transformer learning-rate schedule, global-norm clipping and optional weight decay."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Attributes (S: mSLAM / w2v-BERT; ?: not reported):
      peak_learning_rate, warmup_steps: schedule `peak * min(s / W, sqrt(W / s))` (S; 600M: 6e-4, 40k).
      b1, b2: Adam betas (S: 0.9, 0.98). eps: Adam epsilon (?: 1e-6).
      clip_norm: global gradient-norm clipping (?: 1.0; None disables).
      weight_decay: decoupled weight decay (?: 0.0 = plain Adam).
    """

    peak_learning_rate: float = 6e-4
    warmup_steps: int = 40_000
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-6
    clip_norm: float | None = 1.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")


def transformer_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """`peak * min(s / W, sqrt(W / s))` with s = step + 1: linear warm-up, then inverse square-root decay."""
    def schedule(step):
        s = jnp.asarray(step, jnp.float32) + 1.0
        return peak * jnp.minimum(s / warmup_steps, jnp.sqrt(warmup_steps / s))
    return schedule


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = transformer_schedule(cfg.peak_learning_rate, cfg.warmup_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if cfg.weight_decay:
        parts.append(optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay))
    else:
        parts.append(optax.adam(schedule, cfg.b1, cfg.b2, cfg.eps))
    return optax.chain(*parts), schedule
