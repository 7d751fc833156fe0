"""Fine-tuning: the task interface and optimizer (base.py), the tasks, and `slam-finetune` (run.py).

TASKS maps `FinetuneConfig.task` names to their `FinetuneTask` classes. This package registers its gin configurables:
`FinetuneConfig` and each task's decoding options under their class names (e.g. `CtcDecodeConfig.beam_size`);
`FinetuneConfig()` and `DECODE_CONFIGS[task]()` return the gin-bound values.
"""
import gin

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

FinetuneConfig = gin.external_configurable(FinetuneConfig, name="FinetuneConfig")
DECODE_CONFIGS = {name: gin.external_configurable(task.decode_config_class, name=task.decode_config_class.__name__)
                  for name, task in TASKS.items() if task.decode_config_class is not None}

__all__ = ["DECODE_CONFIGS", "TASKS", "FinetuneConfig", "FinetuneTask"]
