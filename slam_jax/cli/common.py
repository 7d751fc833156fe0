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
    parser.add_argument("--num_processes", type=int, default=None,
                        help="processes in the run, with --coordinator_address (or $JAX_NUM_PROCESSES)")
    parser.add_argument("--process_id", type=int, default=None,
                        help="this process' index in [0, num_processes) (or $JAX_PROCESS_ID)")
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


# Exit codes of every slam-* command (README, "Exit codes").
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def expected_failures() -> tuple[type[BaseException], ...]:
    """Run-time failures a user can cause and fix (bad data, missing or unwritable files, a full disk, a locked or
    damaged run folder, a mismatched checkpoint): one message line, exit 1, no traceback (see `--verbose`)."""
    import tensorflow as tf
    from slam_jax.data.converter import DataError, StreamMismatchError
    from slam_jax.data.watchdog import StoppedWhileWaiting
    from slam_jax.trainer.run_folder import RunFolderLockedError
    from slam_jax.trainer.warm_start import WarmStartError
    return (partitioning.MeshError, checkpointing.CheckpointMismatchError, checkpointing.CheckpointUnreadableError,
            NonFiniteLossError, DataError, StreamMismatchError, RunFolderLockedError, StoppedWhileWaiting,
            WarmStartError, OSError, tf.errors.OpError)


def describe_failure(error: BaseException) -> str:
    """The message of an expected failure, naming the file for OS errors (`[Errno 28] No space left on device`)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip()


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="print the traceback of an expected failure (bad data, files, checkpoints) too")


def run_guarded(prog: str, run: Callable[[], Any], *, verbose: bool = False,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """Runs `run()` and maps its failures to the exit-code table: ConfigError -> 2, an expected failure (and
    `errors`) -> 1, each as `prog: message` on stderr; Ctrl-C -> 130. Anything else is a bug: its traceback."""
    try:
        run()
    except config.ConfigError as e:
        _report(prog, e, verbose)
        return EXIT_CONFIG
    except (*expected_failures(), *errors) as e:
        _report(prog, e, verbose)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _report(prog: str, error: BaseException, verbose: bool) -> None:
    if verbose:
        import traceback
        traceback.print_exception(error, file=sys.stderr)
    print(f"{prog}: {describe_failure(error)}", file=sys.stderr, flush=True)


def cli_main(argv: Sequence[str] | None, *, prog: str, description: str, run: Callable[[str], Any],
             example_gin_file: str, errors: tuple[type[Exception], ...] = ()) -> int:
    """The command line shared by `slam-train` and `slam-finetune`: gin flags, --model_dir, --module_import,
    multi-process flags, --verbose.

    Parses the gin configuration, registers the seqio tasks and the `--module_import` modules (with the gin-bound
    `DataConfig` paths, see `config.register_tasks`), then runs `run(model_dir)` under `run_guarded` (exit codes:
    0 done, 1 a run-time failure, 2 a configuration that cannot work, 130 interrupted).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=config.GIN_FLAGS_HELP)
    parser.add_argument("--model_dir", required=True, help="run directory (local or gs://)")
    config.add_module_import_flag(parser)
    add_distributed_flags(parser)
    add_verbose_flag(parser)
    args, files, bindings = config.parse_gin_command_line(parser, argv, example_gin_file)

    def parse():
        config.parse(files, bindings)
        config.register_tasks(args.module_import)

    code = run_guarded(prog, parse, verbose=args.verbose)
    if code:
        return code
    initialize_distributed(args)
    code = run_guarded(prog, lambda: run(args.model_dir), verbose=args.verbose, errors=errors)
    from slam_jax.data import watchdog
    if watchdog.any_blocked():  # a worker is stuck inside tf.data: a normal shutdown would abort under it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
