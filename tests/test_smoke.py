"""The README's smoke pre-training, in full (slow: several minutes on 2 cores; `pytest -m slow`)."""
import numpy as np
import pytest

from train_utils import env, read_metrics

LOSSES = ["speech/contrastive_loss", "speech/mlm_loss", "text/mlm_loss", "paired/tlm_text_loss",
          "paired/tlm_speech_loss", "paired/stm_loss"]


@pytest.mark.slow
def test_cpu_smoke_run_every_loss_decreases(tmp_path):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "slam_jax.cli.train", "--gin_file=runs/cpu_smoke.gin",
                             f"--model_dir={tmp_path}"], env=env(), capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = [r for r in read_metrics(tmp_path) if "loss" in r]
    tenth = max(1, len(train) // 10)
    for name in LOSSES:
        first = np.mean([r[name] for r in train[:tenth]])
        last = np.mean([r[name] for r in train[-tenth:]])
        assert last < first, f"{name}: first-10% mean {first:.4f}, last-10% mean {last:.4f}"
