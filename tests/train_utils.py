"""Helpers to run `slam-train` in a subprocess with small, fast settings on the bundled mini corpus."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

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
]


# The tests compile hundreds of tiny programs whose run time is negligible next to their compile time. XLA's CPU
# backend optimisation (LLVM -O2 and its expensive passes) is about half of each compile: the tiny train step compiled
# in 128 s with it and 69 s without (two loaded cores), and test_model's overfit + unrolled tests ran in 102 s instead
# of 131 s. Losses are unchanged to the printed digits; the product itself keeps XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ)
    # Fake CPU devices are threads sharing 2 cores with a second test worker: give a slow device more than XLA's
    # default 40 s at a collective rendezvous, yet still abort a real deadlock well within the test timeout.
    e["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                      f"--xla_cpu_collective_call_terminate_timeout_seconds=300 {TEST_XLA_FLAGS}")
    e["JAX_PLATFORMS"] = "cpu"
    # The test runs of slam-train compile the same few programs again and again: share JAX's persistent cache.
    e["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "slam_jax_tests_jax_cache")
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    e["PYTHONUNBUFFERED"] = "1"
    return e


def slam_train(model_dir, *args: str, devices: int = 1, check: bool = True, timeout: int = 900,
               popen: bool = False):
    """Runs slam-train to completion (or, with popen=True, returns the running process)."""
    cmd = [sys.executable, "-m", "slam_jax.cli.train", f"--model_dir={model_dir}", *SMALL, *args]
    if popen:
        return subprocess.Popen(cmd, env=env(devices), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(cmd, env=env(devices), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"slam-train failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


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


def _run(module: str, args: list[str], check: bool, timeout: int, devices: int = 1):
    result = subprocess.run([sys.executable, "-m", module, *args], env=env(devices), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def slam_finetune(model_dir, *args: str, check: bool = True, timeout: int = 900):
    """Runs slam-finetune (tiny model, mini corpus CTC) to completion."""
    return _run("slam_jax.cli.finetune", [f"--model_dir={model_dir}", *FINETUNE_SMALL, *args], check, timeout)


def slam_eval(model_dir, *args: str, check: bool = True, timeout: int = 900):
    """Runs slam-eval; returns the CompletedProcess (the last stdout line is the JSON result)."""
    return _run("slam_jax.cli.eval", [f"--model_dir={model_dir}", *args], check, timeout)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])
