import subprocess
import sys
from pathlib import Path

from train_utils import env


def test_2x2x2_mesh_matches_single_device_loss_and_gradients():
    script = Path(__file__).with_name("sharding_check.py")
    result = subprocess.run([sys.executable, str(script)], env=env(devices=8), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK"), result.stdout
