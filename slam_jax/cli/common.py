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


# One definition per flag name: a flag that several commands take means the same in each of them (README, "Flags";
# tests/test_config_cli.py checks every command's parser against this table).
FLAGS: dict[str, dict[str, Any]] = {
    "model_dir": dict(help="run directory: config.gin, checkpoints/, metrics.jsonl (local or gs://); slam-transcribe "
                      "and slam-translate also take a slam-export folder"),
    "step": dict(type=int, default=None, help="checkpoint step to read (default: the latest)"),
    "split": dict(default=None, help="split of the mixture or task to read (e.g. validation)"),
    "mixture": dict(default=None, help="registered seqio mixture or task (e.g. mini_slam, mini_paired)"),
    "module_import": dict(action="append", default=[],
                          help="import this module after gin parsing (e.g. your seqio tasks); repeatable"),
    "batch_size": dict(type=int, default=None,
                       help="rows per batch, all processes together (default: the run's StreamConfig.batch_size)"),
    "speech_frames": dict(type=int, default=None, help="log-mel frames per speech row (StreamConfig.speech_frames)"),
    "text_tokens": dict(type=int, default=None, help="tokens per text row (StreamConfig.text_tokens)"),
    "paired_frames": dict(type=int, default=None, help="log-mel frames per paired row (StreamConfig.paired_frames)"),
    "paired_tokens": dict(type=int, default=None,
                          help="transcript tokens per paired row (StreamConfig.paired_tokens)"),
    "on_error": dict(choices=("raise", "skip"), default=None,
                     help="a bad example or file: stop naming it (raise, the default) or count and skip it"),
    "output_dir": dict(help="folder this command writes (local or gs://)"),
    "output": dict(default=None, help="out.jsonl or out.tsv (default: TSV on stdout)"),
    "beam_size": dict(type=int, default=None, help="beam search width (default: the run's)"),
    "json": dict(action="store_true", help="print one JSON object"),
    "onnx": dict(action="store_true", help="also write model.onnx (CTC ASR runs: log-mel in, log-probs out)"),
    "onnx_batch": dict(type=int, default=1, help="rows of the ONNX graph's fixed input shape"),
    "onnx_frames": dict(type=int, default=3000,
                        help="log-mel frames (100 per second) of the ONNX graph's fixed input shape; pad to it"),
    "coordinator_address": dict(default=None, help="host:port of process 0 (multi-process)"),
    "num_processes": dict(type=int, default=None,
                          help="processes in the run, with --coordinator_address (or $JAX_NUM_PROCESSES)"),
    "process_id": dict(type=int, default=None,
                       help="this process' index in [0, num_processes) (or $JAX_PROCESS_ID)"),
    "distributed": dict(action="store_true",
                        help="call jax.distributed.initialize() with no arguments (Cloud TPU pods)"),
    "verbose": dict(action="store_true",
                    help="print the traceback of an expected failure (bad data, files, checkpoints) too"),
}
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "distributed")


def add_flags(parser: argparse.ArgumentParser, *names: str, required: Sequence[str] = ()) -> None:
    """Adds the `FLAGS` entries `names` to `parser` (`required`: those that must be given)."""
    for name in names:
        kwargs = dict(FLAGS[name])
        if name in required:
            kwargs.pop("default", None)
            kwargs["required"] = True
        parser.add_argument(f"--{name}", **kwargs)


def new_parser(prog: str, description: str, *, gin: bool, epilog: str = "") -> argparse.ArgumentParser:
    """A command's parser; `gin`: it takes --gin_file / --gin.NAME=VALUE, listed in its --help."""
    epilog = "\n\n".join(e for e in (epilog, config.GIN_FLAGS_HELP if gin else "") if e)
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_gin_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, example_gin_file: str | None
                   ) -> tuple[argparse.Namespace, list[str], list[str]]:
    """-> (the parser's args, gin files, gin bindings); `example_gin_file`: at least one --gin_file is required
    (named in the error). Bad flags exit 2 through `parser.error`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        files, bindings, rest = config.split_argv(argv)
    except config.ConfigError as e:
        parser.error(str(e))
    args = parser.parse_args(rest)
    if example_gin_file and not files:
        parser.error(f"give at least one --gin_file (e.g. --gin_file={example_gin_file})")
    return args, files, bindings


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


def use_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in `$XDG_CACHE_HOME/slam_jax/jax` (default `~/.cache/slam_jax/jax`):
    a command that compiles a step it compiled before, in any earlier run of the same configuration, loads it from
    there (the smoke run's train step: docs/PERFORMANCE.md). A JAX_COMPILATION_CACHE_DIR in the environment wins
    (JAX reads it itself); set it empty to run without the cache. Our choice, as MaxText's `jax_cache_dir`."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    jax.config.update("jax_compilation_cache_dir", os.path.join(base, "slam_jax", "jax"))


# The exit codes of every slam-* command (README, "Exit codes"): 0 done; 1 a run-time failure a user can fix (bad
# data, missing or unwritable files, a full disk, a locked or damaged run folder, a mismatched checkpoint, a step that
# does not fit); 2 a configuration or command line that cannot work (argparse, gin, a mesh the devices cannot hold),
# before any work; 130 interrupted (Ctrl-C). Anything else is a bug and prints its traceback.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def expected_failures() -> tuple[type[BaseException], ...]:
    """Run-time failures a user can cause and fix: one message line, exit 1, no traceback (see `--verbose`).

    The input pipeline's own failures (audio decoding, TensorFlow ops) count only where the command loaded that
    pipeline: slam-bench and slam-aot run without TensorFlow or soundfile installed."""
    from slam_jax.data.schema import DataError, StreamMismatchError
    from slam_jax.data.watchdog import StoppedWhileWaiting
    from slam_jax.trainer.run_folder import RunFolderLockedError
    from slam_jax.trainer.warm_start import WarmStartError
    errors = [checkpointing.CheckpointMismatchError, checkpointing.CheckpointUnreadableError, NonFiniteLossError,
              DataError, StreamMismatchError, RunFolderLockedError, StoppedWhileWaiting, WarmStartError, OSError]
    if "slam_jax.data.audio" in sys.modules:
        errors.append(sys.modules["slam_jax.data.audio"].AudioError)
    if "tensorflow" in sys.modules:
        errors.append(sys.modules["tensorflow"].errors.OpError)
    return tuple(errors)


def describe_failure(error: BaseException) -> str:
    """The message of an expected failure, naming the file for OS errors (`[Errno 28] No space left on device`)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.strerror}: {error.filename}"
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return message.strip()


def run_guarded(prog: str, run: Callable[[], Any], *, verbose: bool = False,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """Runs `run()` and maps its failures to the exit-code table above, each as one `prog: message` line on stderr:
    ConfigError or MeshError -> 2, an expected failure (and `errors`) -> 1, Ctrl-C -> 130."""
    try:
        run()
    except (config.ConfigError, partitioning.MeshError) as e:
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


def exit_after_blocked_workers(code: int) -> int:
    """`code`, or an immediate exit with it when a tf.data worker is stuck (a normal shutdown would abort under it)."""
    from slam_jax.data import watchdog
    if watchdog.any_blocked():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of `slam-train` and `slam-finetune`: gin flags, --model_dir, --module_import, the
    multi-process flags, --verbose."""
    parser = new_parser(prog, description, gin=True)
    add_flags(parser, "model_dir", "module_import", *DISTRIBUTED_FLAGS, "verbose", required=("model_dir",))
    return parser


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, run: Callable[[str], Any],
             example_gin_file: str, errors: tuple[type[Exception], ...] = ()) -> int:
    """Parses `run_parser`'s command line and the gin configuration, registers the seqio tasks and the
    `--module_import` modules (with the gin-bound `DataConfig` paths, see `config.register_tasks`), joins the JAX
    cluster, then runs `run(model_dir)`; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args, files, bindings = parse_gin_args(parser, argv, example_gin_file=example_gin_file)

    def parse():
        config.parse(files, bindings)
        config.register_tasks(args.module_import)

    code = run_guarded(parser.prog, parse, verbose=args.verbose)
    if code:
        return code
    initialize_distributed(args)
    use_compilation_cache()
    code = run_guarded(parser.prog, lambda: run(args.model_dir), verbose=args.verbose, errors=errors)
    return exit_after_blocked_workers(code)
