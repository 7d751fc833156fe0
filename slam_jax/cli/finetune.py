"""`slam-finetune`: gin-configured fine-tuning of the SLAM encoder (CTC / RNN-T ASR, speech translation, GLUE).

    slam-finetune --gin_file=finetune/mini_ctc.gin --model_dir=/tmp/ft \\
        [--gin.FinetuneConfig.init_from="'/tmp/slam_smoke'"] [--gin.TRAIN_STEPS=200] [--gin.NAME=VALUE ...]

See `slam_jax/finetune/run.py` for the run folder and the warm start.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slam_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    return common.run_parser("slam-finetune", "SLAM fine-tuning (gin-configured).")


def main(argv: Sequence[str] | None = None) -> int:
    from slam_jax.finetune import run
    return common.run_main(build_parser(), argv, run=run.finetune, example_gin_file="finetune/mini_ctc.gin",
                           errors=(run.FinetuneError,))


if __name__ == "__main__":
    sys.exit(main())
