"""Optimizer: Adam with the Transformer learning-rate schedule, global-norm clipping and optional weight decay."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Attributes (S: mSLAM / w2v-BERT; ?: not reported):
      peak_learning_rate, warmup_steps: schedule `peak * min(s / W, sqrt(W / s))` (S; 600M: 6e-4, 40k).
      schedule: 'transformer' (the above, pre-training) or 'tri_stage' (wav2vec 2.0 / w2v-BERT fine-tuning: linear
        warm-up from `init_lr_scale * peak` over `warmup_steps`, `hold_steps` at the peak, then exponential decay
        to `final_lr_scale * peak` over `decay_steps`, constant after; fairseq's tri_stage, 10% / 40% / 50% of the
        updates with scales 0.01 / 0.05 in the wav2vec 2.0 recipes).
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
    schedule: str = "transformer"
    hold_steps: int = 0
    decay_steps: int = 0
    init_lr_scale: float = 0.01
    final_lr_scale: float = 0.05

    def __post_init__(self):
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.schedule not in ("transformer", "tri_stage"):
            raise ValueError(f"OptimizerConfig.schedule must be 'transformer' or 'tri_stage', got {self.schedule!r}")
        if self.schedule == "tri_stage" and (self.hold_steps < 0 or self.decay_steps < 1):
            raise ValueError("OptimizerConfig: the tri_stage schedule needs hold_steps >= 0 and decay_steps >= 1, "
                             f"got {self.hold_steps} / {self.decay_steps}")


def transformer_schedule(peak: float, warmup_steps: int) -> optax.Schedule:
    """`peak * min(s / W, sqrt(W / s))` with s = step + 1: linear warm-up, then inverse square-root decay."""
    def schedule(step):
        s = jnp.asarray(step, jnp.float32) + 1.0
        return peak * jnp.minimum(s / warmup_steps, jnp.sqrt(warmup_steps / s))
    return schedule


def tri_stage_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Warm-up, hold, exponential decay, constant (see `OptimizerConfig.schedule`)."""
    peak = cfg.peak_learning_rate
    return optax.join_schedules([
        optax.linear_schedule(cfg.init_lr_scale * peak, peak, cfg.warmup_steps),
        optax.constant_schedule(peak),
        optax.exponential_decay(peak, cfg.decay_steps, cfg.final_lr_scale, end_value=cfg.final_lr_scale * peak),
    ], [cfg.warmup_steps, cfg.warmup_steps + cfg.hold_steps])


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = transformer_schedule(cfg.peak_learning_rate, cfg.warmup_steps) if cfg.schedule == "transformer" \
        else tri_stage_schedule(cfg)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if cfg.weight_decay:
        parts.append(optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay))
    else:
        parts.append(optax.adam(schedule, cfg.b1, cfg.b2, cfg.eps))
    return optax.chain(*parts), schedule
