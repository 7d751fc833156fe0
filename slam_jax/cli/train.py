"""`slam-train`: gin-configured SLAM pre-training (t5x conventions).

    slam-train --gin_file=runs/cpu_smoke.gin --model_dir=/tmp/slam [--gin.TRAIN_STEPS=200] [--gin.NAME=VALUE ...]

See `slam_jax/train.py` for the run folder, resume and multi-process start.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slam_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    return common.run_parser("slam-train", "SLAM pre-training (gin-configured).")


def main(argv: Sequence[str] | None = None) -> int:
    from slam_jax import train
    return common.run_main(build_parser(), argv, run=train.train, example_gin_file="runs/cpu_smoke.gin")


if __name__ == "__main__":
    sys.exit(main())
