from pathlib import Path

from train_utils import run_process


def test_2x2x2_mesh_matches_single_device_loss_and_gradients():
    script = Path(__file__).with_name("sharding_check.py")
    result = run_process("script", str(script), [], devices=8, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK"), result.stdout
