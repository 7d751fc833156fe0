"""`TrainConfig`: the loop's gin-configurable settings, shared by pre-training and every fine-tuning task."""
from __future__ import annotations

import dataclasses
from typing import Any

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
      from stage 1); ignored once this run has checkpoints of its own. Every parameter must be found there with
      its shape, except those under a prefix of `init_from_allow_fresh` (e.g. ("stm/",) for a head stage 1 lacks);
      anything else freshly initialized is an error naming it.
    data_stall_timeout_s: seconds without a batch before the loop reports what the stream produced and dropped;
      under `StreamConfig.on_error='raise'` it then fails, under 'skip' it keeps waiting and reports again every
      such period (0 disables the watch).
    seed: parameter init and the per-step masking / negative-sampling / Gumbel / dropout keys.
    step_programs: () (default) compiles the train step as one XLA program. Groups of batch kinds, e.g.
      (('speech', 'text'), ('paired',)), give each group a gradient program of its own and one more program for
      the update (summed gradients, same optimizer, guard and metrics: the same step up to float summation
      order). Our choice for the CPU smoke run: XLA's compile time grows faster than the program, and the
      smaller programs compile in 10% less time in all (docs/PERFORMANCE.md); on accelerators one program is
      faster (no gradients written out per group). Valid for losses that sum over batch kinds with a key per
      kind (pre-training's `compute_losses`).
    compiler_options: XLA options for every program of the trainer (`jax.jit(compiler_options=...)`), e.g.
      {'xla_backend_optimization_level': 1}: the CPU smoke run's, which compiles in ~17% less time than XLA's
      default level and steps as fast there.
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
    init_from_allow_fresh: tuple[str, ...] = ()
    data_stall_timeout_s: float = 300.0
    seed: int = 0
    step_programs: tuple[tuple[str, ...], ...] = ()
    compiler_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from slam_jax.config import ConfigError  # here: slam_jax.config imports the modules that import this one

        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{name} = {getattr(self, name)!r}: must be {want}")
        for name in ("train_steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(name, "an integer")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        for name in ("train_steps", "eval_every", "eval_batches"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        if self.keep_every is not None and (not isinstance(self.keep_every, int) or self.keep_every < 1):
            raise bad("keep_every", "None or an integer >= 1")
        if not isinstance(self.data_stall_timeout_s, (int, float)) or self.data_stall_timeout_s < 0:
            raise bad("data_stall_timeout_s", "a number of seconds >= 0")
        kinds = [k for group in self.step_programs for k in group]
        if len(kinds) != len(set(kinds)) or not set(kinds) <= {"speech", "text", "paired"} or any(
                isinstance(group, str) for group in self.step_programs):
            raise bad("step_programs", "groups of distinct batch kinds ('speech', 'text', 'paired'), "
                      "e.g. (('speech', 'text'), ('paired',))")
        object.__setattr__(self, "step_programs", tuple(tuple(g) for g in self.step_programs))
        if not isinstance(self.compiler_options, dict):
            raise bad("compiler_options", "a dict of XLA option names to values")
        if isinstance(self.init_from_allow_fresh, str):
            object.__setattr__(self, "init_from_allow_fresh", (self.init_from_allow_fresh,))


TrainConfig = gin.external_configurable(TrainConfig, name="TrainConfig")


class NonFiniteLossError(RuntimeError):
    pass
