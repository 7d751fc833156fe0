"""Fine-tuning: the task interface and optimizer (base.py), the tasks, and `slam-finetune` (run.py).

TASKS maps `FinetuneConfig.task` names to their `FinetuneTask` classes.
"""
from slam_jax.finetune.asr_ctc import AsrCtcTask
from slam_jax.finetune.asr_rnnt import AsrRnntTask
from slam_jax.finetune.base import FinetuneConfig, FinetuneTask
from slam_jax.finetune.classify import GlueTask
from slam_jax.finetune.translate import TranslateTask

TASKS: dict[str, type[FinetuneTask]] = {
    AsrCtcTask.name: AsrCtcTask,
    AsrRnntTask.name: AsrRnntTask,
    TranslateTask.name: TranslateTask,
    GlueTask.name: GlueTask,
}

__all__ = ["TASKS", "FinetuneConfig", "FinetuneTask"]
