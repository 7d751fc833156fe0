"""Helpers to run the slam-* commands with small, fast settings on the bundled mini corpus.

A command runs in this test process (its `main(argv)`: same argument parsing, exit code, stdout and stderr lines) unless
it needs a process of its own: a signal, several fake devices, a concurrent second run, or a stalled tf.data worker
that ends the process. Such a process is forked from a server that has imported the commands' modules once
(warm_process.py); a fresh interpreter would pay ~8 s of imports (TensorFlow, seqio, orbax) first. Output that only
a fresh interpreter shows (TensorFlow's C++ start-up lines, which modules an import pulls in) is tested with
`subprocess` itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import logging
import os
import subprocess
import tempfile

import warm_process

SMALL = [
    "--gin_file=runs/cpu_smoke.gin",
    "--gin.StreamConfig.batch_size=8",
    "--gin.StreamConfig.speech_frames=256",
    "--gin.StreamConfig.paired_frames=640",
    "--gin.StreamConfig.text_tokens=32",
    "--gin.StreamConfig.paired_tokens=48",
    "--gin.ObjectiveConfig.num_negatives=10",
    "--gin.ModelConfig.d_model=32",
    "--gin.ModelConfig.ffn_dim=64",
    "--gin.ModelConfig.subsampling_channels=4",
    "--gin.ModelConfig.codebook_size=32",
    "--gin.ModelConfig.code_dim=16",
    "--gin.ModelConfig.speech_layers=1",
    "--gin.ModelConfig.shared_layers=1",
    "--gin.TrainConfig.log_every=1",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.async_checkpointing=False",
    # One program, the default everywhere but the smoke run (tests/test_loop.py compares the two).
    "--gin.TrainConfig.step_programs=()",
    # The smoke run's per-program XLA level 1 would override TEST_XLA_FLAGS' level 0 (below): 57 s -> 47 s for
    # test_end_to_end_writes_checkpoint_config_tensorboard_and_metrics alone with an empty compilation cache.
    "--gin.TrainConfig.compiler_options={}",
]

# Tests of a mechanism that does not depend on the objectives (the run folder's lock, checkpoints and their recovery,
# signals, warm-start errors, the multi-process stop) train text MLM alone: its train step traces, lowers and loads
# from the compilation cache in ~2.4 s where SMALL's five objectives (four encoder passes) take ~12 s (in-process,
# measured on 2 loaded cores), and these tests run ~25 training commands.
TEXT_ONLY = [
    "--gin.ObjectiveConfig.contrastive=False",
    "--gin.ObjectiveConfig.speech_mlm=False",
    "--gin.ObjectiveConfig.tlm=False",
    "--gin.ObjectiveConfig.stm=False",
    "--gin.StreamConfig.mixture='mini_text_mix'",
]


# The tests compile hundreds of tiny programs whose run time is negligible next to their compile time. XLA's CPU
# backend optimisation (LLVM -O2 and its expensive passes) is about half of each compile: the tiny train step compiled
# in 128 s with it and 69 s without (two loaded cores), and test_model's overfit + unrolled tests ran in 102 s instead
# of 131 s. Losses are unchanged to the printed digits; the product itself keeps XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


XDG_CACHE_HOME = os.path.join(tempfile.gettempdir(), "slam_jax_tests_xdg")
# The commands' default persistent compilation cache (cli.common.use_compilation_cache) under XDG_CACHE_HOME.
COMPILATION_CACHE = os.path.join(XDG_CACHE_HOME, "slam_jax", "jax")
# Fake CPU devices are threads sharing 2 cores with a second test worker: give a slow device more than XLA's
# default 40 s at a collective rendezvous, yet still abort a real deadlock well within the test timeout.
COLLECTIVE_XLA_FLAGS = "--xla_cpu_collective_call_terminate_timeout_seconds=300"


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ)
    # The device count is not part of JAX's compilation cache key; every other XLA flag is, so the subprocesses and
    # the commands run in the test process (conftest.py) use the same ones and load each other's compiled programs.
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {COLLECTIVE_XLA_FLAGS} {TEST_XLA_FLAGS}"
    e["JAX_PLATFORMS"] = "cpu"
    # A subprocess runs as a user's command does: without JAX_COMPILATION_CACHE_DIR, so it caches its compiled
    # programs in the commands' default folder, COMPILATION_CACHE, which the test process uses too (below).
    e.pop("JAX_COMPILATION_CACHE_DIR", None)
    e["XDG_CACHE_HOME"] = XDG_CACHE_HOME
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    e["PYTHONUNBUFFERED"] = "1"
    return e


# The tests compile the same few programs again and again, in this process and in subprocesses: one persistent
# cache for both (a train step compiled cold by one test loads in seconds in the next). Read when JAX is first
# imported, which conftest.py's import of this module precedes.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@dataclasses.dataclass
class Completed:
    """What a command left: its exit code and output (the fields tests read of `subprocess.CompletedProcess`)."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def in_process(module: str, args: list[str]) -> Completed:
    """Runs `python -m module *args` as `module.main(args)` in this process.

    stdout and stderr are captured, Python logging at WARNING goes to the captured stderr in the commands' own format
    (what `logging.basicConfig` gives a fresh process), and what a run leaves behind in the process is undone: the
    parsed gin configuration and the environment variables it set.
    """
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_env, saved_level = dict(os.environ), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse: --help exits 0, a bad flag 2
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        import gin
        gin.clear_config()
        root.removeHandler(handler)
        root.setLevel(saved_level)
        os.environ.clear()
        os.environ.update(saved_env)
    return Completed([module, *args], code, out.getvalue(), err.getvalue())


def start(kind: str, target: str, args: list[str], devices: int = 1, extra_env: dict[str, str] | None = None,
          merge_stderr: bool = True) -> warm_process.WarmProcess:
    """Starts `python -m target` (kind 'module'), `python target` ('script') or `python -c target` ('code') with
    `args` in a process of its own, forked from the warm server (warm_process.py), environment `env(devices)`."""
    return warm_process.popen(kind, target, args, {**env(devices), **(extra_env or {})},
                              merge_stderr=merge_stderr, server_env=env())


def run_process(kind: str, target: str, args: list[str], devices: int = 1, timeout: float = 900,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`start`, run to completion: the CompletedProcess of `subprocess.run(capture_output=True, text=True)`."""
    return warm_process.run(kind, target, args, {**env(devices), **(extra_env or {})}, timeout=timeout,
                            server_env=env())


def _run(module: str, args: list[str], check: bool, timeout: int, devices: int = 1, subprocess_: bool = False):
    """Runs a slam-* command: in this process (see the module docstring) unless `devices` > 1 or `subprocess_`."""
    if devices == 1 and not subprocess_:
        result = in_process(module, args)
    else:
        result = run_process("module", module, args, devices, timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def slam_train(model_dir, *args: str, devices: int = 1, check: bool = True, timeout: int = 900,
               popen: bool = False, subprocess_: bool = False):
    """Runs slam-train to completion (or, with popen=True, returns the running process, stderr in its stdout)."""
    argv = [f"--model_dir={model_dir}", *SMALL, *args]
    if popen:
        return start("module", "slam_jax.cli.train", argv, devices)
    return _run("slam_jax.cli.train", argv, check, timeout, devices, subprocess_)


def read_metrics(model_dir) -> list[dict]:
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


MODEL = [a for a in SMALL if a.startswith("--gin.ModelConfig.")]

FINETUNE_SMALL = [
    "--gin_file=finetune/mini_ctc.gin",
    *MODEL,
    "--gin.StreamConfig.batch_size=4",
    "--gin.StreamConfig.paired_frames=256",
    "--gin.StreamConfig.paired_tokens=32",
    "--gin.TrainConfig.log_every=1",
    "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.async_checkpointing=False",
]


def slam_finetune(model_dir, *args: str, check: bool = True, timeout: int = 900):
    """Runs slam-finetune (tiny model, mini corpus CTC) to completion."""
    return _run("slam_jax.cli.finetune", [f"--model_dir={model_dir}", *FINETUNE_SMALL, *args], check, timeout)


def slam_eval(model_dir, *args: str, check: bool = True, timeout: int = 900):
    """Runs slam-eval; returns the CompletedProcess (the last stdout line is the JSON result)."""
    return _run("slam_jax.cli.eval", [f"--model_dir={model_dir}", *args], check, timeout)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])
