"""The trainer used by pre-training (`slam-train`) and every fine-tuning task (`slam-finetune`).

`config` (TrainConfig), `state` (Trainer: sharded state, jitted steps), `metrics` (metrics.jsonl, TensorBoard, the
progress line), `loop` (run_loop: resume, steps, evaluation, checkpoints, preemption).
"""
from slam_jax.trainer.config import NonFiniteLossError, TrainConfig
from slam_jax.trainer.loop import PreemptionWatch, TrainResult, run_loop
from slam_jax.trainer.metrics import MetricLogger, stream_scalars
from slam_jax.trainer.state import Trainer

__all__ = ["MetricLogger", "NonFiniteLossError", "PreemptionWatch", "TrainConfig", "TrainResult", "Trainer",
           "run_loop", "stream_scalars"]
