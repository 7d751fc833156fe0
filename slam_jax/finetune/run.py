"""Fine-tuning of the SLAM encoder on a downstream task, from the gin configuration (the `slam-finetune` command:
`slam_jax/cli/finetune.py`; t5x conventions).

    slam-finetune --gin_file=finetune/mini_ctc.gin --model_dir=/tmp/ft \
        [--gin.FinetuneConfig.init_from="'/tmp/slam_smoke'"] [--gin.TRAIN_STEPS=200] [--gin.NAME=VALUE ...]

Same run directory as `slam-train` (config.gin, orbax checkpoints with exact resume, TensorBoard, metrics.jsonl, a
progress line with ETA; SIGTERM saves and exits 0). `FinetuneConfig.init_from` names a pre-training run whose latest
checkpoint initializes every encoder parameter (a missing or mismatched encoder parameter is an error naming it);
without it the encoder starts from random initialization, the baseline. Every `TrainConfig.eval_every` steps the task
is scored on `TrainConfig.eval_split` (`eval/<metric>` in metrics.jsonl; predictions under `model_dir/eval/`).
"""
from __future__ import annotations

from typing import Any, Sequence

import gin
import jax

from slam_jax import checkpointing, config, optim, partitioning, trainer as trainer_lib
from slam_jax.trainer.warm_start import WarmStartError, warm_start
from slam_jax.finetune import TASKS, base

# The gin edge of fine-tuning (the package itself stays gin-free: an export loads without gin): `FinetuneConfig`
# and each task's decoding options under their class names (e.g. `CtcDecodeConfig.beam_size`). `FinetuneConfig()`
# and `DECODE_CONFIGS[task]()` return the gin-bound values; a command that parses fine-tuning gin files imports
# this module first.
FinetuneConfig = gin.external_configurable(base.FinetuneConfig, name="FinetuneConfig")
DECODE_CONFIGS = {name: gin.external_configurable(task.decode_config_class, name=task.decode_config_class.__name__)
                  for name, task in TASKS.items() if task.decode_config_class is not None}


class FinetuneError(ValueError):
    """A fine-tuning configuration or warm start that cannot work; the message says why."""


def make_task(model_cfg, finetune_cfg: base.FinetuneConfig, stream_cfg) -> base.FinetuneTask:
    """The configured task, with its gin-bound decoding options."""
    if finetune_cfg.task not in TASKS:
        raise config.ConfigError(f"FinetuneConfig.task = {finetune_cfg.task!r} is not a fine-tuning task; "
                                 f"known: {sorted(TASKS)}")
    decode = DECODE_CONFIGS.get(finetune_cfg.task)
    return TASKS[finetune_cfg.task](model_cfg, finetune_cfg, stream_cfg, decode() if decode else None)


def make_trainer(task: base.FinetuneTask, optimizer_cfg, mesh_cfg, train_cfg,
                 devices: Sequence[jax.Device] | None = None) -> trainer_lib.Trainer:
    return trainer_lib.Trainer(model_fn=task.build_model, loss_fn=task.losses, loss_names=task.loss_names,
                         optimizer=optim.make_optimizer(
                             optimizer_cfg, task.cfg.param_groups(), speech_layers=task.model_cfg.speech_layers,
                             shared_layers=task.model_cfg.shared_layers),
                         mesh_cfg=mesh_cfg, train_cfg=train_cfg, devices=devices)


def warm_start_encoder(directory: str, trainer: trainer_lib.Trainer, fresh_params: Any,
                       fresh_prefixes: Sequence[str] = ()) -> Any:
    """Every `encoder/...` parameter from `directory`'s latest checkpoint, but those under `fresh_prefixes`
    (`FinetuneConfig.fresh_prefixes`); the task's head and those stay `fresh_params`.

    Raises FinetuneError naming the encoder parameters the checkpoint lacks or holds with another shape (e.g. a
    pre-training run of another model size or vocabulary).
    """
    try:
        return warm_start(directory, trainer, fresh_params, allow_fresh=_head_prefixes(trainer),
                          keep_fresh=fresh_prefixes, setting="FinetuneConfig.init_from")
    except (FileNotFoundError, WarmStartError) as e:
        raise FinetuneError(f"FinetuneConfig.init_from: {e}") from None


def _head_prefixes(trainer: trainer_lib.Trainer) -> list[str]:
    """The model's top-level parameter groups other than the encoder (the task's heads), as prefixes `name/`."""
    names = checkpointing._paths_and_shapes(trainer.abstract_params)
    return sorted({n.split("/")[0] + "/" for n in names} - {"encoder/"})


def finetune(model_dir: str, *, devices: Sequence[jax.Device] | None = None) -> trainer_lib.TrainResult:
    """Runs (or resumes) the gin-configured fine-tuning; returns the final step, parameters and last metrics."""
    model_cfg, finetune_cfg, stream_cfg = config.ModelConfig(), FinetuneConfig(), config.StreamConfig()
    train_cfg = trainer_lib.TrainConfig()
    if train_cfg.init_from:
        raise config.ConfigError("TrainConfig.init_from is for pre-training stages; fine-tuning starts from "
                                 "FinetuneConfig.init_from")
    task = make_task(model_cfg, finetune_cfg, stream_cfg)
    trainer = make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), train_cfg, devices)
    stream = task.train_stream(jax.process_index(), jax.process_count())
    partitioning.check_batch_sizes({k: v for k, v in stream.kind_batch_sizes.items() if v}, trainer.mesh)

    def initial_params():
        params = trainer.init_params()
        if not finetune_cfg.init_from:
            print("encoder: random initialization (no FinetuneConfig.init_from)", flush=True)
            return params
        return warm_start_encoder(finetune_cfg.init_from, trainer, params, finetune_cfg.fresh_prefixes)

    def evaluate(params, step: int, local: dict) -> dict[str, float]:
        scores = task.evaluate(trainer, params, train_cfg.eval_split, step, model_dir)
        return {f"eval/{k}": v for k, v in scores.items()}

    return trainer_lib.run_loop(trainer, stream, model_dir, initial_params=initial_params, evaluate=evaluate,
                          meta={"finetune_task": task.name, "init_from": finetune_cfg.init_from or ""})
