"""slam-bench CLI (tiny shapes, no timing asserted), the analytic FLOP model against a traced count of every matmul,
the memory model's sharding arithmetic, and the matmul form of the subsampling convolutions."""
import dataclasses
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import TINY
from slam_jax import bench, flops, pretraining
from slam_jax.cli import bench as bench_cli
from slam_jax.layers import subsampling
from slam_jax.model import ModelConfig, SlamModel

TINY_ARGS = ["--gin_file=models/tiny.gin", "--speech_rows", "2", "--speech_frames", "64", "--text_tokens", "8",
             "--steps", "2",
             "--warmup", "1"]
POSITIVE = ("step_time_s", "step_time_min_s", "first_step_s", "steps_per_s", "speech_seconds_per_s",
            "traced_matmul_flops_per_step",
            "model_flops_per_step", "hardware_flops_per_step", "xla_flops_per_step",
            "model_tflops_per_s_per_device", "compile_s", "lower_s", "peak_memory_bytes")


def _run_json(capsys, args):
    assert bench_cli.main(args + ["--json"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_bench_full_mode_json_fields(capsys):
    out = _run_json(capsys, TINY_ARGS + ["--mode", "full", "--no_peak"])
    for key in POSITIVE + ("tokens_per_s",):
        assert out[key] > 0, key
    assert out["mode"] == "full"
    assert set(out["objectives"]) >= {"contrastive", "speech_mlm", "text_mlm", "tlm", "stm"}
    assert out["batch"] == {"speech_rows": 2, "speech_frames": 64, "text_rows": 1, "text_tokens": 8,
                            "paired_rows": 1, "paired_frames": 64, "paired_tokens": 8}
    assert out["conformer_frames"] == 16
    assert (out["scan_layers"], out["conv_impl"], out["attention_impl"]) == (True, "shift", None)
    assert np.isfinite(out["loss"])


def test_bench_speech_mode_reports_mfu_and_profiles(capsys, tmp_path):
    out = _run_json(capsys, TINY_ARGS + ["--mode", "speech", "--profile_dir", str(tmp_path), "--profile_steps", "1"])
    for key in POSITIVE + ("peak_flops_per_device", "mfu"):
        assert out[key] > 0, key
    assert out["objectives"] == ["contrastive"]
    assert out["tokens_per_s"] == 0
    # The traced step's XLA ops, heaviest first (the real trace of XLA:CPU's executor threads).
    ops = out["profile_top_ops"]
    assert ops and all(op["ms_per_step"] > 0 for op in ops)
    assert [op["ms_per_step"] for op in ops] == sorted((op["ms_per_step"] for op in ops), reverse=True)
    assert 0 < sum(op["share"] for op in out["profile_top_kinds"]) <= 1 + 1e-9
    assert out["profile_op_ms_per_step"] >= sum(op["ms_per_step"] for op in out["profile_top_kinds"]) * (1 - 1e-9)


def test_profile_ops_counts_innermost_device_events_once(tmp_path):
    """A constructed Perfetto trace: a loop on the GPU stream encloses two kernels, the derived "XLA Ops" line repeats
    them, the host runs Python, two kernels overlap; only the stream's innermost events count, waits never, suffixes
    fold by kind."""
    def meta(kind, pid, name, tid=None):
        return {"ph": "M", "name": kind, "pid": pid, **({"tid": tid} if tid is not None else {}),
                "args": {"name": name}}

    def event(pid, tid, name, ts, dur):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}

    events = [meta("process_name", 1, "/device:GPU:0"), meta("process_name", 2, "/host:CPU"),
              meta("thread_name", 1, "Stream #13(Compute)", 7), meta("thread_name", 1, "XLA Ops", 8),
              meta("thread_name", 2, "python", 9),
              event(1, 7, "while.3", 0, 1000), event(1, 7, "fusion.1", 0, 600), event(1, 7, "fusion.2", 600, 300),
              event(1, 7, "gemm_7", 1000, 2000), event(1, 7, "gemm_8", 2990, 1000), event(1, 7, "end: fusion.1", 3000, 1),
              event(1, 8, "fusion.1", 0, 600), event(2, 9, "PjitFunction(step)", 0, 5000)]
    folder = tmp_path / "plugins" / "profile" / "2026_01_01"
    folder.mkdir(parents=True)
    with gzip.open(folder / "host.perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    ops = bench.profile_ops(str(tmp_path), steps=2)
    assert [(op["name"], op["ms_per_step"]) for op in ops] == [
        ("gemm_7", 1.0), ("gemm_8", 0.5), ("fusion.1", 0.3), ("fusion.2", 0.15)]   # gemm_8 overlaps gemm_7's end
    assert sum(op["share"] for op in ops) == pytest.approx(1.0)
    assert [op["name"] for op in bench.profile_ops(str(tmp_path), by_kind=True)] == ["gemm", "fusion"]
    with pytest.raises(FileNotFoundError, match="perfetto"):
        bench.profile_ops(str(tmp_path / "elsewhere"))


def test_bench_compile_scaling_one_row_per_depth(capsys):
    out = _run_json(capsys, TINY_ARGS + ["--compile_scaling", "--depths", "1,2"])
    assert [r["layers"] for r in out["compile_scaling"]] == [1, 2]
    for row in out["compile_scaling"]:
        assert row["compile_s"] > 0 and row["total_s"] >= row["compile_s"]


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        bench_cli.main(["--gin_file=models/tiny.gin", "--speech_rows", "0"])
    assert bench_cli.main(["--gin_file=models/tiny.gin", "--gin.ModelConfig.no_such_field=1"]) == 2


def test_conformer_layer_flops_hand_count():
    cfg = ModelConfig(d_model=64, num_heads=4, ffn_dim=128, conv_kernel=5, group_norm_groups=4)
    t = 48
    ffn = 2 * (2 * t * 64 * 128 + 2 * t * 128 * 64)
    proj = 2 * t * 64 * (3 * 64) + 2 * t * 64 * 64
    attn = 2 * (2 * t * t * 64)
    conv = 2 * t * 64 * 128 + 2 * t * 5 * 64 + 2 * t * 64 * 64
    assert flops.conformer_layer_flops(cfg, t) == ffn + proj + attn + conv


CASES = [
    ("speech", bench.speech_objectives(), flops.BatchShapes(2, 64)),
    ("slam", pretraining.ObjectiveConfig(), flops.BatchShapes(2, 64, 2, 12)),
    ("slam_tlm_stm", pretraining.ObjectiveConfig(tlm=True, stm=True), flops.BatchShapes(2, 64, 2, 12, 2, 48, 10)),
]


@pytest.mark.parametrize("remat", ["none", "full"])
@pytest.mark.parametrize("name,objectives,shapes", CASES, ids=[c[0] for c in CASES])
def test_flop_model_matches_traced_matmuls(remat, name, objectives, shapes):
    """Forward: exact against every dot/conv in the traced step. Train step: the traced gradient (which computes
    no gradient for the input features and none through stop-gradients) within 3% of 3 x forward, plus the
    recomputed forward under remat='full' (`hardware_flops`)."""
    cfg = dataclasses.replace(TINY, conv_impl="native", remat=remat)  # native: the depthwise conv is a conv op
    with nnx.use_eager_sharding(False):
        graphdef, params = nnx.split(SlamModel(cfg, rngs=nnx.Rngs(0)))
    batch = bench.synthetic_batch(shapes, cfg.vocab_size)

    def loss(p):
        return pretraining.compute_losses(nnx.merge(graphdef, p), batch, jnp.int32(0), jax.random.key(0),
                                          objectives)[0]

    forward = flops.forward_flops(cfg, shapes, objectives).forward
    np.testing.assert_allclose(flops.jaxpr_matmul_flops(jax.make_jaxpr(loss)(params)), forward, rtol=1e-9)
    traced_train = flops.jaxpr_matmul_flops(jax.make_jaxpr(jax.grad(loss))(params))
    np.testing.assert_allclose(traced_train, flops.hardware_flops(cfg, shapes, objectives), rtol=0.03)
    if remat == "none":
        np.testing.assert_allclose(traced_train, flops.train_step_flops(cfg, shapes, objectives), rtol=0.03)
    else:
        assert flops.hardware_flops(cfg, shapes, objectives) > 1.2 * flops.train_step_flops(cfg, shapes, objectives)


def test_batch_shapes_read_a_batch_spec_as_the_batch_it_describes():
    from slam_jax.data import schema
    cfg = schema.StreamConfig("x", speech_frames=512, text_tokens=64, paired_frames=640, paired_tokens=48)
    rows = {"speech": 4, "text": 2, "paired": 2}
    spec = schema.batch_spec(cfg, rows)
    batch = {kind: {key: np.zeros(shape, dtype) for key, (shape, dtype) in sub.items()} for kind, sub in spec.items()}
    assert flops.BatchShapes.from_batch(spec) == flops.BatchShapes.from_batch(batch) == flops.BatchShapes(
        4, 512, 2, 64, 2, 640, 48)


def test_memory_model_sharding_and_remat_order():
    cfg = ModelConfig(d_model=256, num_heads=4, ffn_dim=1024, speech_layers=2, shared_layers=2, vocab_size=1000,
                      codebook_size=64, code_dim=64)
    total = flops.parameter_count(cfg)
    assert flops.sharded_parameter_count(cfg, {"data": 1, "fsdp": 1, "tensor": 1}) == total
    half = flops.sharded_parameter_count(cfg, {"data": 1, "fsdp": 2, "tensor": 1})
    assert total / 2 <= half < 0.55 * total  # nearly every tensor has an `embed` axis divisible by 2
    assert flops.sharded_parameter_count(cfg, {"data": 4, "fsdp": 1, "tensor": 1}) == total  # data: replicated
    shapes = flops.BatchShapes(8, 400, 8, 64, 4, 400, 32)
    mem = {r: flops.memory_per_chip(dataclasses.replace(cfg, remat=r), shapes) for r in flops.REMAT_ORDER}
    acts = [mem[r]["activations"] for r in flops.REMAT_ORDER]
    assert acts == sorted(acts, reverse=True)
    m = mem["full"]
    assert m["params"] == 4 * total and m["adam"] == 8 * total
    assert m["total"] == pytest.approx(m["params"] + m["grads"] + m["adam"] + m["activations"])
    split = flops.memory_per_chip(cfg, shapes, {"data": 2, "fsdp": 2, "tensor": 1})
    assert split["activations"] < mem["full"]["activations"] and split["params"] < m["params"]


@pytest.mark.parametrize("frames,mel,channels", [(64, 80, 3), (43, 81, 6), (12, 7, 4)])
def test_subsampling_matmul_equals_convolution(frames, mel, channels):
    """The matmul form of the stride-2 frequency convolution equals `nnx.Conv` with the same parameters."""
    x = jax.random.normal(jax.random.key(1), (2, frames, mel, channels))
    conv = nnx.Conv(channels, 5, kernel_size=(1, 3), strides=(1, 2), padding="SAME", rngs=nnx.Rngs(2))
    conv.bias[...] = jax.random.normal(jax.random.key(3), (5,))
    np.testing.assert_allclose(subsampling._freq_conv(x, conv.kernel[...], conv.bias[...]), conv(x),
                               atol=1e-5, rtol=1e-5)


def test_benchmark_scripts_cannot_shadow_a_dependency():
    """Run as `python benchmarks/X.py`, the script's folder comes first on sys.path: a script named like an installed
    package (transformers imports Hugging Face's `kernels`) would replace it for every import in that process."""
    import importlib.util
    import pathlib
    folder = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    names = [p.stem for p in folder.glob("*.py")]
    assert names and all(n.startswith("slam_") for n in names), names
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is None or pathlib.Path(spec.origin).parent == folder, (name, spec.origin)


def test_bench_and_the_model_need_neither_tensorflow_nor_seqio():
    """slam-bench runs on accelerator images that have JAX but not the input pipeline (as the H200 run of
    docs/PERFORMANCE.md): importing it, the model and the objectives, and classifying a failure, load none of
    TensorFlow, seqio or soundfile."""
    import subprocess
    import sys
    script = """
import sys
BLOCKED = {"tensorflow", "seqio", "tensorflow_text", "tensorflow_datasets", "soundfile"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from slam_jax import flops, model, pretraining
from slam_jax.cli import bench, common
assert bench.build_parser().parse_args(["--steps", "3"]).steps == 3
errors = common.expected_failures()
assert OSError in errors and not any(e.__module__.startswith("tensorflow") for e in errors), errors
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
