"""The gin edge: registers the configurable dataclasses and parses gin files and bindings with clear errors.

Gin binds only top-level config dataclasses and entry-point functions; layers never read gin. The search path
holds the current directory and the package's `gin/` folder, so `--gin_file=models/tiny.gin` works anywhere.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Sequence

import gin

from slam_jax import model, optim, partitioning, pretraining
from slam_jax.data import schema

GIN_DIR = Path(__file__).resolve().parent / "gin"

ModelConfig = gin.external_configurable(model.ModelConfig, name="ModelConfig")
ObjectiveConfig = gin.external_configurable(pretraining.ObjectiveConfig, name="ObjectiveConfig")
OptimizerConfig = gin.external_configurable(optim.OptimizerConfig, name="OptimizerConfig")
MeshConfig = gin.external_configurable(partitioning.MeshConfig, name="MeshConfig")
StreamConfig = gin.external_configurable(schema.StreamConfig, name="StreamConfig")
# `TrainConfig` (slam_jax.trainer) and the fine-tuning configs (slam_jax.finetune.run) are registered by their own
# modules; an entry point imports what it runs before parsing.


class ConfigError(ValueError):
    """A gin file or binding that cannot be applied; the message says which and why."""


GIN_FLAGS_HELP = """gin flags (t5x conventions):
  --gin_file=FILE         gin file, repeatable; looked up in the current directory, then in the package's gin/
                          (e.g. runs/cpu_smoke.gin, models/base.gin, objectives/slam.gin)
  --gin.NAME=VALUE        one binding after the files, repeatable (e.g. --gin.TrainConfig.train_steps=20,
                          --gin.StreamConfig.mixture="'mini_slam'"); unknown names fail before any work"""


# The environment variables that give `DataConfig`'s fields their defaults (a gin binding wins).
DATA_ENV = {"spm_model": "SLAM_SPM_MODEL", "tfds_data_dir": "TFDS_DATA_DIR",
            "librispeech_dir": "SLAM_LIBRISPEECH_DIR", "librispeech_prepared": "SLAM_LIBRISPEECH_PREPARED",
            "librilight_dir": "SLAM_LIBRILIGHT_DIR", "librilight_prepared": "SLAM_LIBRILIGHT_PREPARED",
            "covost_dir": "SLAM_COVOST_DIR", "common_voice_dir": "SLAM_COMMON_VOICE_DIR",
            "covost_spm": "SLAM_COVOST_SPM", "toy_corpus": "SLAM_TOY_CORPUS"}


def _env(name: str):
    return dataclasses.field(default_factory=lambda: os.environ.get(DATA_ENV[name]) or None)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data live (local or gs://): gin bindings, defaulting to the environment variables of `DATA_ENV`.

    spm_model: SentencePiece model of the text tasks (None: the bundled 512-piece mini-corpus model).
    tfds_data_dir: TFDS data directory (librispeech, librispeech_lm, c4 built with `tfds build`).
    librispeech_dir / librispeech_prepared: LibriSpeech folder / `slam-prepare` records (registers the folder tasks).
    librilight_dir / librilight_prepared: Libri-Light folder / `slam-prepare` records.
    covost_dir / common_voice_dir / covost_spm: CoVoST 2 split TSVs, the Common Voice clips, the target
      SentencePiece model (registers `covost2_en_*`, tasks/covost.py).
    toy_corpus: a `scripts/make_toy_corpus.py` folder (registers the `toy_*` tasks, tasks/toy.py).
    """

    spm_model: str | None = _env("spm_model")
    tfds_data_dir: str | None = _env("tfds_data_dir")
    librispeech_dir: str | None = _env("librispeech_dir")
    librispeech_prepared: str | None = _env("librispeech_prepared")
    librilight_dir: str | None = _env("librilight_dir")
    covost_dir: str | None = _env("covost_dir")
    common_voice_dir: str | None = _env("common_voice_dir")
    covost_spm: str | None = _env("covost_spm")
    toy_corpus: str | None = _env("toy_corpus")
    librilight_prepared: str | None = _env("librilight_prepared")


DataConfig = gin.external_configurable(DataConfig, name="DataConfig")


def register_tasks(modules: Sequence[str] = ()) -> None:
    """Registers our seqio tasks for the gin-bound `DataConfig` (`tasks.register`), then imports the user's `modules`
    (`--module_import`): their tasks get `DataConfig.spm_model` as default vocabulary (`sources.default_vocabulary`)
    and may read the other paths from `DataConfig()`. Call after `parse`."""
    import tasks
    tasks.register(DataConfig())
    import_modules(modules)


def import_modules(modules: Sequence[str]) -> None:
    """Imports each module named by `--module_import` (t5x convention), failing with the module's name."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"--module_import={name}: cannot import it ({e}); is it on PYTHONPATH?") from None


def macro(name: str) -> str | None:
    """The value of the gin macro `name` of the parsed configuration, or None when it is not bound."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return None



def _resolve(path: str) -> str:
    for candidate in (Path(path), GIN_DIR / path):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"gin file {path!r} not found (looked in {os.getcwd()} and {GIN_DIR})")


def parse(gin_files: Sequence[str], bindings: Sequence[str] = (), *, finalize: bool = True) -> None:
    """Parses gin files then `NAME=VALUE` bindings; unknown or misspelled names fail here, before any work."""
    gin.clear_config()
    gin.add_config_file_search_path(str(GIN_DIR))
    # gin probes each `include` as a Python resource first and logs a misleading "Path not found" error.
    quiet = _DropMessages("Path not found")
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings([_resolve(f) for f in gin_files], list(bindings),
                                            finalize_config=finalize)
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        raise ConfigError(f"invalid gin configuration: {e}") from None
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Splits t5x-style flags: `--gin_file=F` (repeatable), `--gin.NAME=VALUE`; returns (files, bindings, rest)."""
    files, bindings, rest = [], [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file":
            value = next(it, None)
            if value is None:
                raise ConfigError("--gin_file needs a file name")
            files.append(value)
        elif arg.startswith("--gin."):
            name, sep, value = arg[len("--gin."):].partition("=")
            if not sep:
                raise ConfigError(f"gin binding {arg!r} has no '=VALUE'")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return files, bindings, rest
