"""What every command line shares: gin flags, `--module_import`, the multi-process flags, and errors -> exit codes."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, Sequence

import jax

from slam_jax import checkpointing, config, partitioning
from slam_jax.trainer import NonFiniteLossError


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The multi-process flags of every CLI (`initialize_distributed` reads them)."""
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() with no arguments (Cloud TPU pods)")


def initialize_distributed(args: argparse.Namespace) -> None:
    """Joins the JAX cluster named by the flags (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).

    Must run before anything initializes a JAX backend (jax.devices(), a computation). The CPU backend's
    cross-process collectives use gloo: the fake-device CPU clusters of the tests and a CPU-only run need it, and it
    does not touch GPU / TPU collectives.
    """
    address = args.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = args.process_id if args.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if address or num:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(address, num_processes=num or None,
                                   process_id=None if pid is None else int(pid))
    elif args.distributed:
        jax.distributed.initialize()


def cli_main(argv: Sequence[str] | None, *, prog: str, description: str, run: Callable[[str], Any],
             errors: tuple[type[Exception], ...] = ()) -> int:
    """The command line shared by `slam-train` and `slam-finetune`: gin flags, --model_dir, --module_import,
    multi-process flags.

    Parses the gin configuration, registers the seqio tasks and the `--module_import` modules (with the gin-bound
    `DataConfig` paths, see `config.register_tasks`), then runs `run(model_dir)`; configuration errors exit 2,
    known run-time errors (bad mesh, mismatched checkpoint, non-finite loss, `errors`) print their message and
    exit 1.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=config.GIN_FLAGS_HELP)
    parser.add_argument("--model_dir", required=True, help="run directory (local or gs://)")
    config.add_module_import_flag(parser)
    add_distributed_flags(parser)
    args, files, bindings = config.parse_gin_command_line(parser, argv, "runs/cpu_smoke.gin")
    try:
        config.parse(files, bindings)
        config.register_tasks(args.module_import)
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    initialize_distributed(args)
    try:
        run(args.model_dir)
    except (config.ConfigError, partitioning.MeshError, checkpointing.CheckpointMismatchError,
            NonFiniteLossError, *errors) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0
