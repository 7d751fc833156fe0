"""What the loop writes about a run: metrics.jsonl, TensorBoard and the console progress line."""
from __future__ import annotations

import json
import math
import os

import jax


class MetricLogger:
    """metrics.jsonl + TensorBoard (process 0 only) + a console progress line with ETA."""

    def __init__(self, model_dir: str, total_steps: int):
        from clu import metric_writers
        self.enabled = jax.process_index() == 0
        self.total = total_steps
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self.writer = metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard")) if self.enabled \
            else None

    def write(self, step: int, scalars: dict[str, float], console: bool = True, steps_per_sec: float = 0.0):
        if not self.enabled:
            return
        import tensorflow as tf
        record = {"step": step, **{k: float(v) for k, v in sorted(scalars.items())}}
        with tf.io.gfile.GFile(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.writer.write_scalars(step, {k: v for k, v in record.items() if k != "step"})
        self.writer.flush()
        if console:
            eta = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
            losses = " ".join(f"{k.split('/')[0][0]}/{k.split('/')[-1]}={v:.3f}" for k, v in sorted(scalars.items())
                              if k.endswith("_loss") and not k.startswith("eval/"))
            eta_s = f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}" if math.isfinite(eta) \
                else "?"
            print(f"step {step}/{self.total} loss={scalars.get('loss', float('nan')):.4f} {losses} "
                  f"{steps_per_sec:.2f} steps/s ETA {eta_s}", flush=True)

    def close(self):
        if self.writer:
            self.writer.close()


def stream_scalars(stats: dict) -> dict[str, float]:
    """Data-stream statistics of this host for the metrics (see `OneStream.stats`): padding fraction per kind,
    skipped and too-long examples per task, cumulative since the stream started."""
    out: dict[str, float] = {}
    for kind in ("speech", "text", "paired"):
        if kind not in stats:
            continue
        s = stats[kind]
        out[f"data/{kind}/padding_fraction"] = s["padding_fraction"]
        if "token_padding_fraction" in s:
            out[f"data/{kind}/token_padding_fraction"] = s["token_padding_fraction"]
        if "unk_fraction" in s:
            out[f"data/{kind}/unk_fraction"] = s["unk_fraction"]
        for task, n in s["skipped"].items():
            out[f"data/{kind}/skipped/{task}"] = n
        for task, n in s["too_long"].items():
            out[f"data/{kind}/too_long/{task}"] = n
    return out
