"""Optimizer: Adam with the Transformer (or tri-stage) learning-rate schedule, global-norm clipping, optional weight
decay, and per-parameter learning-rate multipliers (fine-tuning: head-only phase, encoder scale, layer-wise decay)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


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


@dataclasses.dataclass(frozen=True)
class ParamGroups:
    """Learning-rate multipliers per parameter group (`FinetuneConfig.param_groups()` fills them; its docstring has
    the sources). Parameters outside `encoder/` (the task heads) always get 1.

    encoder_lr_scale: every encoder parameter's multiplier (0 = the head only). layer_lr_decay: the top Conformer
    layer gets it, each layer below one more factor, the front-ends (below the lowest layer) one more.
    freeze_speech_steps: the conv subsampling and speech-only layers get 0 before this step.
    freeze_encoder_steps: every encoder parameter gets 0 before this step (the head-only phase).
    """

    encoder_lr_scale: float = 1.0
    layer_lr_decay: float = 1.0
    freeze_speech_steps: int = 0
    freeze_encoder_steps: int = 0

    @property
    def plain(self) -> bool:
        """Every multiplier is 1 at every step (no transformation needed)."""
        return self == ParamGroups()

    def multiplier(self, path: str, shape: tuple[int, ...], step: Array, speech_layers: int,
                   shared_layers: int) -> Array:
        """The multiplier of parameter `path` ("encoder/speech_stack/...") at `step`: a scalar, or [layers, 1, ...]
        for stacked Conformer parameters (their leading axis is the layer, `ConformerStack`)."""
        if not path.startswith("encoder/"):
            return jnp.ones((), jnp.float32)
        speech_side = path.startswith(("encoder/subsampling/", "encoder/speech_stack/", "encoder/speech_mask"))
        if path.startswith("encoder/speech_stack/"):
            depth = jnp.arange(speech_layers)                          # layer index from the bottom
        elif path.startswith("encoder/shared_stack/"):
            depth = speech_layers + jnp.arange(shared_layers)
        else:
            depth = jnp.asarray(-1)                                    # front-ends sit below the lowest layer
        total = speech_layers + shared_layers
        scale = self.encoder_lr_scale * jnp.power(self.layer_lr_decay, (total - depth).astype(jnp.float32))
        if speech_side and self.freeze_speech_steps:
            scale = jnp.where(step < self.freeze_speech_steps, 0.0, scale)
        if self.freeze_encoder_steps:
            scale = jnp.where(step < self.freeze_encoder_steps, 0.0, scale)
        if scale.ndim == 1:
            scale = scale.reshape((-1,) + (1,) * (len(shape) - 1))
        return scale


def param_path(path: Any) -> str:
    """A tree path (`jax.tree_util.tree_flatten_with_path`) as "encoder/speech_stack/.../kernel" (checkpoints, the
    warm-start table, exports and `ParamGroups` name parameters so)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def scale_by_param_group(multiplier: Callable[[str, tuple[int, ...], Array], Array]
                         ) -> optax.GradientTransformation:
    """Multiplies each parameter's update by `multiplier(path, shape, step)` (step = updates applied so far)."""
    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * multiplier(param_path(path), u.shape, state.count).astype(u.dtype), updates)
        return scaled, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimizerConfig, groups: ParamGroups = ParamGroups(), *, speech_layers: int = 0,
                   shared_layers: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(Adam with clipping and the schedule of `cfg`, then `groups`' multipliers; the schedule). `speech_layers` /
    `shared_layers`: the model's depths, for the layer-wise decay."""
    schedule = transformer_schedule(cfg.peak_learning_rate, cfg.warmup_steps) if cfg.schedule == "transformer" \
        else tri_stage_schedule(cfg)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    if cfg.weight_decay:
        parts.append(optax.adamw(schedule, cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay))
    else:
        parts.append(optax.adam(schedule, cfg.b1, cfg.b2, cfg.eps))
    tx = optax.chain(*parts)
    if groups.plain:
        return tx, schedule
    # Nested, so a run's optimizer state keeps the structure its checkpoints were written with.
    return optax.chain(tx, scale_by_param_group(
        lambda path, shape, step: groups.multiplier(path, shape, step, speech_layers, shared_layers))), schedule
