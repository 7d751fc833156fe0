"""slam-aot: the run's own train step compiled by XLA:TPU for a TPU topology on this CPU machine (libtpu describes
the chips; no TPU is used), with the compiler's per-chip memory and FLOPs; a step that does not fit fails."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.libtpu
pytest.importorskip("libtpu", reason="slam-aot needs libtpu (pip install -e '.[test]' installs it on Linux)")

from slam_jax import aot  # noqa: E402
from slam_jax.cli import aot as aot_cli  # noqa: E402
from train_utils import SMALL  # noqa: E402

# The tiny smoke run shrunk further (d 32, 1 + 1 layers, short rows); 16 rows = 8 speech / 4 text / 4 paired over
# the 4 chips of a v5p:2x2x1 slice.
TINY_RUN = SMALL + ["--gin.StreamConfig.batch_size=16", "--gin.StreamConfig.speech_frames=128",
                    "--gin.StreamConfig.paired_frames=128", "--gin.ModelConfig.scan_layers=True",
                    "--topology=v5p:2x2x1", "--json"]


def test_tiny_run_compiles_for_a_v5p_slice_and_reports_memory(capsys, monkeypatch):
    # Shrink the chip's HBM below what the step needs: the same compile shows the report and the failure.
    monkeypatch.setitem(aot.HBM_GIB, "v5p", 1e-4)
    rc = aot_cli.main(TINY_RUN)
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert rc == 1 and "DOES NOT FIT" not in captured.out and "needs" in captured.err and "v5p:2x2x1" in captured.err
    assert report["topology"] == "v5p:2x2x1" and report["chips"] == 4 and report["hosts"] == 1
    assert report["device_kind"].startswith("TPU v5")
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert report["rows"] == {"speech": 8, "text": 4, "paired": 4}
    m = report["memory_per_chip"]
    for key in ("argument", "output", "temp", "generated_code"):
        assert m[key] > 0, key
    # Parameters and optimizer state are donated: their outputs reuse the argument buffers.
    assert 0 < m["alias"] <= min(m["argument"], m["output"])
    assert m["total"] == m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]
    assert report["hbm_per_chip"] == int(1e-4 * aot.GIB)
    assert report["headroom_per_chip"] == report["hbm_per_chip"] - m["total"] < 0 and not report["fits"]
    assert report["xla_flops_per_chip"] > 0 and report["model_flops_per_step"] > 0
    assert report["compile_s"] > 0


def test_topology_errors_name_the_problem():
    with pytest.raises(aot.AotError, match="unknown TPU generation 'v9'"):
        aot.hbm_bytes("v9:2x2")
    with pytest.raises(aot.AotError, match="must look like 'v5p:2x4x4'"):
        aot.topology_devices("v5p")
    with pytest.raises(aot.AotError, match="cannot describe TPU topology 'v5p:3x3x3x3'"):
        aot.topology_devices("v5p:3x3x3x3")
    assert aot.hbm_bytes("v5p:4x4x2") == 95 * aot.GIB and aot.hbm_bytes("v4:4x4x2") == 32 * aot.GIB


def test_rnnt_finetune_step_compiles_for_a_slice(capsys):
    """A fine-tuning config (FinetuneConfig.task bound) compiles slam-finetune's step: the RNN-T head, its chunked
    loss and the paired rows only."""
    from train_utils import MODEL
    rc = aot_cli.main(["--gin_file=finetune/mini_rnnt.gin", *MODEL, "--gin.StreamConfig.batch_size=4",
                   "--gin.StreamConfig.paired_frames=128", "--gin.StreamConfig.paired_tokens=16",
                   "--gin.TransducerConfig.loss_time_chunk=8", "--topology=v5p:2x2x1", "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and report["fits"] and report["objectives"] == ["asr_rnnt"]
    assert report["rows"] == {"paired": 4} and report["model_flops_per_step"] is None
    assert report["parameters"] > 0 and report["memory_per_chip"]["temp"] > 0
