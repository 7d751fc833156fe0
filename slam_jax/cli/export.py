"""`slam-export`: write a fine-tuned ASR run as safetensors + JSON + SentencePiece model (`slam_jax.export`)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from slam_jax import export as export_lib
    from slam_jax.cli import common
    parser = argparse.ArgumentParser(prog="slam-export", description=export_lib.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a slam-finetune ASR run (config.gin + checkpoints/)")
    parser.add_argument("--out", required=True, help="the export folder (local or gs://)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    common.add_verbose_flag(parser)
    args = parser.parse_args(argv)

    def run():
        from slam_jax import config, inference
        try:
            model = inference.load(args.model_dir, step=args.step)
            path = export_lib.export(model, args.out)
        except (inference.InferenceError, ValueError) as e:
            raise config.ConfigError(str(e)) from None
        print(f"exported {args.model_dir} step {model.step} ({model.task.name}) to {os.path.dirname(path)}")

    return common.run_guarded("slam-export", run, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
