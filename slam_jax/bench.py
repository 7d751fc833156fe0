"""Train-step time, throughput, model FLOPs, MFU, compile time and peak memory of a gin model (the `slam-bench`
command: `slam_jax/cli/bench.py`).

Modes (synthetic, fully valid batches in the data contract of `slam_jax.data.schema`):
- `full`: the SLAM-TLM-STM objective set (`objectives/slam_tlm_stm.gin`, overridable by later gin files or
  bindings) on speech + text + paired sub-batches.
- `speech`: the speech-encoder objective only: conv subsampling, the N speech Conformer layers, the quantizer and
  the contrastive (+ diversity) loss (the backward reaches that path only; Adam updates every parameter, as
  `slam-train` would with these objectives).
Either way the timed step is `slam-train`'s own (`trainer.Trainer`: the gin optimizer, donated state, the finite
guard, the metrics, shardings from the gin `MeshConfig` rules over the local devices), compiled ahead of time.
Frames count log-mel frames (10 ms), as in `StreamConfig`; the Conformer sees a quarter of them.

After the warm-up steps the median of the timed step times is reported, with throughput (seconds of speech and
text tokens per second), analytic model FLOPs per step (`slam_jax.flops`), the FLOPs of every dot and convolution
in the traced step (`flops.jaxpr_matmul_flops`, a cross-check that includes remat recomputation and excludes the
gradient of the input features), XLA's cost analysis (which also counts elementwise ops, and on CPU misses the dots
XLA hands to its YNNPACK fusions), MFU against the device's peak (a table of bf16 peaks for TPU / GPU; on CPU a timed
f32 or bf16 `jnp.dot`), the AOT compile time and peak memory (`device.memory_stats()`; on CPU the process' max RSS).
With a profile directory, `profile_steps` more steps run under `jax.profiler.trace` after the timed ones (so tracing
does not slow the timed steps): the trace opens in TensorBoard's profile plugin or Perfetto, and `profile_ops` sums
its device time per XLA op / kernel name.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import glob
import gzip
import json
import os
import platform
import re
import resource
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax import config, flops, optim, partitioning, pretraining
from slam_jax.trainer import TrainConfig, Trainer
from slam_jax.data import schema
from slam_jax.model import ModelConfig

FRAME_SECONDS = 0.01  # log-mel hop: 100 frames per second


# ------------------------------------------------------------------------------------------ device facts
def measure_matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 7) -> float:
    """Best FLOP/s of a jitted `jnp.dot` of two [n, n] matrices on the default device (f32 accumulation)."""
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dt)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dt)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def device_peak(device: jax.Device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if device.platform == "cpu":
        return measure_matmul_peak(dtype), f"measured {dtype} jnp.dot 2048x2048 (best of 7), all host cores"
    kind = getattr(device, "device_kind", "")
    peak = flops.peak_flops(device)
    if peak is None:
        return float("nan"), f"unknown device kind {kind!r}: no peak in flops.PEAK_BF16_FLOPS"
    return peak, f"vendor dense bf16 peak for {kind}"


def peak_memory_bytes(device: jax.Device) -> tuple[int, str]:
    """(peak bytes, what was measured): device peak bytes in use, or the process' max RSS on CPU."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if platform.system() == "Darwin" else 1024), "process max RSS (CPU: no device stats)"


def tune_cpu_allocator() -> bool:
    """Keeps freed heap memory in the process (glibc: no mmap for large blocks, no trimming).

    XLA:CPU allocates each executable's buffers per run; glibc serves blocks above 32 MiB with fresh mmaps whose
    pages fault in (and are zeroed) on every step. Returns False when glibc's `mallopt` is unavailable.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 30))


# ------------------------------------------------------------------------------------------ synthetic batches
def synthetic_batch(shapes: flops.BatchShapes, vocab_size: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Fully valid batch (one segment per row, no padding) of `schema.batch_spec`'s shapes for the kinds with
    rows > 0: normal log-mel features, uniform token ids in [3, vocab_size)."""
    rng = np.random.default_rng(seed)
    stream = schema.StreamConfig("synthetic", speech_frames=shapes.speech_frames, text_tokens=shapes.text_tokens,
                                 paired_frames=shapes.paired_frames, paired_tokens=shapes.paired_tokens)
    rows = {"speech": shapes.speech_rows, "text": shapes.text_rows, "paired": shapes.paired_rows}

    def fill(key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if key == "features":
            return rng.normal(size=shape).astype(dtype)
        if key == "tokens":
            return rng.integers(3, vocab_size, size=shape).astype(dtype)
        if key == "positions":
            return np.broadcast_to(np.arange(shape[1], dtype=dtype), shape).copy()
        return np.ones(shape, dtype)   # segment ids: one segment per row

    batch = {kind: {key: fill(key, *spec) for key, spec in sub.items()}
             for kind, sub in schema.batch_spec(stream, rows).items()}
    schema.validate(batch)
    return batch


# ------------------------------------------------------------------------------------------ the step
@dataclasses.dataclass
class Step:
    """The compiled train step of `slam-train` and its state. `run(step)` advances params / opt_state and returns
    the loss."""

    compiled: Any
    params: Any
    opt_state: Any
    batch: Any
    compile_s: float
    lower_s: float
    traced_flops: float

    def run(self, step: int) -> jax.Array:
        self.params, self.opt_state, metrics = self.compiled(self.params, self.opt_state, self.batch,
                                                             jnp.asarray(step, jnp.int32))
        return metrics["loss"]


def speech_objectives() -> pretraining.ObjectiveConfig:
    """The speech-encoder step: contrastive (+ diversity) on the speech stack, no MLM, no text, no paired."""
    return pretraining.ObjectiveConfig(contrastive=True, speech_mlm=False, text_mlm=False, tlm=False, stm=False,
                                       ctc=False, contrastive_on="speech_stack")


def build_step(model_cfg: ModelConfig, objective_cfg: pretraining.ObjectiveConfig,
               optimizer_cfg: optim.OptimizerConfig, batch: dict, *,
               mesh_cfg: partitioning.MeshConfig | None = None, seed: int = 0) -> Step:
    """AOT-compiles `slam-train`'s train step (`trainer.Trainer.for_pretraining`: shardings from `mesh_cfg`'s logical
    rules, donated state, finite guard, metrics) for `batch` over the local devices, with initialized state."""
    trainer = Trainer.for_pretraining(
        model_cfg=model_cfg, objective_cfg=objective_cfg, optimizer_cfg=optimizer_cfg,
        mesh_cfg=mesh_cfg or partitioning.MeshConfig(data=-1), train_cfg=TrainConfig(seed=seed),
        devices=jax.local_devices())
    partitioning.check_batch_sizes({k: v["segment_ids"].shape[0] for k, v in batch.items()}, trainer.mesh)
    params = trainer.init_params()
    opt_state = trainer.init_opt_state(params)
    device_batch = trainer.device_batch(batch)
    t0 = time.perf_counter()
    lowered = trainer.lower(device_batch, params, opt_state)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    with jax.set_mesh(trainer.mesh):
        traced = flops.jaxpr_matmul_flops(
            jax.make_jaxpr(trainer._step_fn)(params, opt_state, device_batch, jnp.asarray(0, jnp.int32)))
    return Step(compiled=compiled, params=params, opt_state=opt_state, batch=device_batch, compile_s=t2 - t1,
                lower_s=t1 - t0, traced_flops=traced)


# ------------------------------------------------------------------------------------------ measurements
def bench_shapes(mode: str, *, speech_rows: int = 8, speech_frames: int = 1000, text_rows: int | None = None,
                 text_tokens: int = 64, paired_rows: int | None = None, paired_frames: int | None = None,
                 paired_tokens: int | None = None) -> flops.BatchShapes:
    """The benchmark batch of `mode` (frames are log-mel frames, as in StreamConfig): speech only, or with text and
    paired rows (default half the speech rows each, the speech rows' frames and the text rows' tokens)."""
    speech = flops.BatchShapes(speech_rows=speech_rows, speech_frames=speech_frames)
    if mode == "speech":
        return speech
    half = max(speech_rows // 2, 1)
    return dataclasses.replace(
        speech, text_rows=half if text_rows is None else text_rows, text_tokens=text_tokens,
        paired_rows=half if paired_rows is None else paired_rows, paired_frames=paired_frames or speech_frames,
        paired_tokens=paired_tokens or text_tokens)


def objectives_for(mode: str) -> pretraining.ObjectiveConfig:
    """The gin-bound ObjectiveConfig in mode 'full' (slam_tlm_stm.gin is parsed first); the speech set otherwise."""
    if mode == "speech":
        return speech_objectives()
    return config.ObjectiveConfig()


def benchmark(model_cfg: ModelConfig, mode: str, batch_shapes: flops.BatchShapes, *, steps: int = 10, warmup: int = 2,
              optimizer_cfg: optim.OptimizerConfig | None = None, measure_peak: bool = True,
              mesh_cfg: partitioning.MeshConfig | None = None, profile_dir: str | None = None,
              profile_steps: int = 3) -> dict[str, Any]:
    """Runs the step `warmup + steps` times (then `profile_steps` traced ones into `profile_dir`, if given); returns
    the JSON fields of `slam-bench` (see main's --help)."""
    if mode not in ("full", "speech"):
        raise ValueError(f"mode must be 'full' or 'speech', got {mode!r}")
    objective_cfg = objectives_for(mode)
    batch = synthetic_batch(batch_shapes, model_cfg.vocab_size)
    step = build_step(model_cfg, objective_cfg, optimizer_cfg or optim.OptimizerConfig(), batch, mesh_cfg=mesh_cfg)
    first = time.perf_counter()
    loss = step.run(0)
    loss.block_until_ready()
    first_step_s = time.perf_counter() - first
    for i in range(1, warmup):
        step.run(i).block_until_ready()
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss = step.run(warmup + i)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark step")
    profile: dict[str, Any] = {}
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            for i in range(profile_steps):
                step.run(warmup + steps + i).block_until_ready()
        op_times = trace_op_times(profile_dir)   # the trace is read once
        profile = {"profile_dir": profile_dir, "profile_steps": profile_steps,
                   # the device's (CPU: XLA threads') summed op time per step, against step_time_s: its busy share
                   "profile_op_ms_per_step": sum(op_times.values()) / profile_steps,
                   "profile_top_ops": top_ops(op_times, steps=profile_steps),
                   "profile_top_kinds": top_ops(op_times, steps=profile_steps, by_kind=True)}
    median = statistics.median(times)
    devices = jax.local_devices()
    model_flops = flops.train_step_flops(model_cfg, batch_shapes, objective_cfg)
    hw_flops = flops.hardware_flops(model_cfg, batch_shapes, objective_cfg)
    cost = step.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    peak, peak_source = device_peak(devices[0], model_cfg.dtype) if measure_peak else (float("nan"), "not measured")
    mem, mem_source = peak_memory_bytes(devices[0])
    speech_s = (batch_shapes.speech_rows * batch_shapes.speech_frames
                + batch_shapes.paired_rows * batch_shapes.paired_frames) * FRAME_SECONDS
    tokens = batch_shapes.text_rows * batch_shapes.text_tokens + batch_shapes.paired_rows * batch_shapes.paired_tokens
    return {
        "mode": mode,
        "objectives": list(objective_cfg.active),
        "backend": jax.default_backend(),
        "device": getattr(devices[0], "device_kind", str(devices[0])),
        "num_devices": len(devices),
        "d_model": model_cfg.d_model, "speech_layers": model_cfg.speech_layers,
        "shared_layers": model_cfg.shared_layers, "dtype": model_cfg.dtype, "remat": model_cfg.remat,
        "conv_impl": model_cfg.conv_impl, "attention_impl": model_cfg.attention_impl,
        "scan_layers": model_cfg.scan_layers,
        "batch": dataclasses.asdict(batch_shapes),
        "conformer_frames": flops.subsampled(batch_shapes.speech_frames),
        "steps": steps, "warmup": warmup,
        "step_time_s": median, "step_time_min_s": min(times), "step_time_max_s": max(times),
        "first_step_s": first_step_s,
        "steps_per_s": 1.0 / median,
        "speech_seconds_per_s": speech_s / median,
        "tokens_per_s": tokens / median,
        "model_flops_per_step": model_flops,
        "hardware_flops_per_step": hw_flops,
        "traced_matmul_flops_per_step": step.traced_flops,
        "xla_flops_per_step": xla_flops,
        "model_tflops_per_s_per_device": model_flops / median / len(devices) / 1e12,
        "peak_flops_per_device": peak, "peak_source": peak_source,
        "mfu": model_flops / median / len(devices) / peak,
        "lower_s": step.lower_s, "compile_s": step.compile_s,
        "peak_memory_bytes": mem, "peak_memory_source": mem_source,
        "loss": float(loss),
        **profile,
    }


IDLE_EVENTS = ("wait for completion", "Await")   # XLA:CPU's executor threads waiting, not computing


def profile_ops(profile_dir: str, *, steps: int = 1, top: int | None = 15, by_kind: bool = False
                ) -> list[dict[str, Any]]:
    """The ops that took the most time in the newest trace under `profile_dir`: [{"name", "ms_per_step", "share"}]
    (`top_ops` of `trace_op_times`)."""
    return top_ops(trace_op_times(profile_dir), steps=steps, top=top, by_kind=by_kind)


def top_ops(times: dict[str, float], *, steps: int = 1, top: int | None = 15, by_kind: bool = False
            ) -> list[dict[str, Any]]:
    """`times` ({op name: ms}) heaviest first, as [{"name", "ms_per_step", "share"}]. `by_kind` sums ops whose names
    differ only in a numeric suffix ("copy.12", "copy.40" -> "copy"). `share` is of the summed time, `ms_per_step`
    divides by `steps`."""
    total: collections.Counter = collections.Counter()
    for name, ms in times.items():
        total[re.sub(r"[._]\d+$", "", name) if by_kind else name] += ms
    whole = sum(total.values()) or 1.0
    return [{"name": name, "ms_per_step": ms / steps, "share": ms / whole} for name, ms in total.most_common(top)]


def trace_op_times(profile_dir: str) -> dict[str, float]:
    """Milliseconds per op name in the newest trace under `profile_dir`.

    Reads the Perfetto (Chrome JSON) trace that `jax.profiler.trace(..., create_perfetto_trace=True)` writes. Time is
    summed per event name over the accelerator's streams (process names starting "/device:"; XLA's derived "XLA Ops" /
    "XLA Modules" lines are skipped so nothing counts twice); on CPU, where there is no device process, over the
    threads that run XLA's compiled code ("tf_XLA..."). Only innermost events count (a while loop or an executor
    wrapper encloses others), waits excepted.
    """
    traces = sorted(glob.glob(os.path.join(profile_dir, "plugins", "profile", "*", "*perfetto_trace.json.gz")))
    if not traces:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {profile_dir}/plugins/profile")
    with gzip.open(traces[-1], "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name"}
    busy = {e["pid"] for e in events if e.get("ph") == "X"}
    device_pids = {pid for pid, name in process.items() if name.startswith("/device:") and pid in busy}

    def counted(e: dict) -> bool:
        name = thread.get((e["pid"], e.get("tid")), "")
        if device_pids:
            return e["pid"] in device_pids and not name.startswith(("XLA Ops", "XLA Modules", "Steps"))
        return name.startswith("tf_XLA")

    lines: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in events:
        # Zero-length markers (XLA:CPU's "ThreadpoolListener::Record", "end: <op>") time nothing and would make the
        # op around them look like a parent.
        if e.get("ph") == "X" and counted(e) and e.get("dur", 0.0) > 1e-3 and not e["name"].startswith("end: "):
            lines[(e["pid"], e.get("tid"))].append(e)
    total: collections.Counter = collections.Counter()
    for line in lines.values():
        # Innermost events only: an event that wholly contains the next one on its line (a while loop, an executor
        # wrapper) would count its children twice. Consecutive GPU kernels may overlap a little (Hopper's
        # programmatic dependent launch) without enclosing each other: both count.
        line.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
        for e, nxt in zip(line, line[1:] + [None]):
            end = e["ts"] + e.get("dur", 0.0)
            parent = nxt is not None and nxt["ts"] < end and nxt["ts"] + nxt.get("dur", 0.0) <= end
            if not parent and not any(w in e["name"] for w in IDLE_EVENTS):
                total[e["name"]] += float(e.get("dur", 0.0)) / 1e3                     # microseconds -> ms
    return dict(total)


def compile_scaling(model_cfg: ModelConfig, depths: Sequence[int], shapes: flops.BatchShapes
                    ) -> list[dict[str, Any]]:
    """Lower + compile time of the speech-encoder step (`shapes`' speech rows) at each depth; one row per depth."""
    rows = []
    batch = synthetic_batch(flops.BatchShapes(speech_rows=shapes.speech_rows, speech_frames=shapes.speech_frames),
                            model_cfg.vocab_size)
    for depth in depths:
        cfg = dataclasses.replace(model_cfg, speech_layers=depth)
        step = build_step(cfg, speech_objectives(), optim.OptimizerConfig(), batch)
        rows.append({"layers": depth, "lower_s": step.lower_s, "compile_s": step.compile_s,
                     "total_s": step.lower_s + step.compile_s})
        del step
    return rows
