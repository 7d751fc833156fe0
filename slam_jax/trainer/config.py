"""`TrainConfig`: the loop's gin-configurable settings, shared by pre-training and every fine-tuning task."""
from __future__ import annotations

import dataclasses

import gin


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
