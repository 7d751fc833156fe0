"""`slam-export`: write a fine-tuned ASR or speech-translation run as safetensors + JSON + SentencePiece model(s)
(`slam_jax.export`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
    from slam_jax import export as export_lib
    from slam_jax.cli import common
    parser = common.new_parser("slam-export", export_lib.__doc__, gin=False)
    common.add_flags(parser, "model_dir", "output_dir", "step", "verbose", required=("model_dir", "output_dir"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from slam_jax import export as export_lib
    from slam_jax.cli import common
    parser = build_parser()
    args = parser.parse_args(argv)

    def run():
        from slam_jax import config, inference
        try:
            model = inference.load(args.model_dir, step=args.step)
            path = export_lib.export(model, args.output_dir)
        except (inference.InferenceError, ValueError) as e:
            raise config.ConfigError(str(e)) from None
        print(f"exported {args.model_dir} step {model.step} ({model.task.name}) to {os.path.dirname(path)}")

    return common.run_guarded("slam-export", run, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
