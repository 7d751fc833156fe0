"""`slam-translate`: translate audio files with a fine-tuned speech-translation run.

    slam-translate --model_dir=/tmp/slam_st a.flac dir/ list.txt [--output=out.jsonl|out.tsv] [--beam_size=4]
                   [--step=N] [--batch_size=8]

Inputs, outputs, bad files and exit codes as slam-transcribe (slam_jax/cli/transcribe.py): one line per file, in
input order ("path" and "text"); a file that cannot be read is reported on its own line and skipped; exit 0 all
translated, 1 some file failed, 2 a bad model directory or option.
"""
from __future__ import annotations

import sys
from typing import Sequence

from slam_jax.cli import transcribe


def build_parser():
    return transcribe.build_parser("slam-translate", __doc__, lm=False)


def main(argv: Sequence[str] | None = None) -> int:
    return transcribe.decode_files("slam-translate", "translate", build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
