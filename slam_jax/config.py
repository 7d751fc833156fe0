"""The gin edge: registers the configurable dataclasses and parses gin files and bindings with clear errors.

Gin binds only top-level config dataclasses and entry-point functions; layers never read gin. The search path
holds the current directory and the package's `gin/` folder, so `--gin_file=models/tiny.gin` works anywhere.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import gin

from slam_jax import model, optim, partitioning, pretraining
from slam_jax.data import converter

GIN_DIR = Path(__file__).resolve().parent / "gin"

ModelConfig = gin.external_configurable(model.ModelConfig, name="ModelConfig")
ObjectiveConfig = gin.external_configurable(pretraining.ObjectiveConfig, name="ObjectiveConfig")
OptimizerConfig = gin.external_configurable(optim.OptimizerConfig, name="OptimizerConfig")
MeshConfig = gin.external_configurable(partitioning.MeshConfig, name="MeshConfig")
StreamConfig = gin.external_configurable(converter.StreamConfig, name="StreamConfig")


class ConfigError(ValueError):
    """A gin file or binding that cannot be applied; the message says which and why."""


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
            files.append(next(it))
        elif arg.startswith("--gin."):
            name, sep, value = arg[len("--gin."):].partition("=")
            if not sep:
                raise ConfigError(f"gin binding {arg!r} has no '=VALUE'")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return files, bindings, rest
