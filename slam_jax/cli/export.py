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
    common.add_flags(parser, "model_dir", "output_dir", "step", "onnx", "onnx_batch", "onnx_frames", "verbose",
                     required=("model_dir", "output_dir"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from slam_jax import export as export_lib
    from slam_jax.cli import common
    parser = build_parser()
    args = parser.parse_args(argv)

    def run():
        from slam_jax import config, inference
        try:
            if args.onnx and min(args.onnx_batch, args.onnx_frames) < 1:
                raise ValueError(f"--onnx_batch and --onnx_frames must be >= 1, got {args.onnx_batch}, "
                                 f"{args.onnx_frames}")
            model = inference.load(args.model_dir, step=args.step)
            path = export_lib.export(model, args.output_dir,
                                     onnx_shape=(args.onnx_batch, args.onnx_frames) if args.onnx else None)
        except (inference.InferenceError, ValueError) as e:
            raise config.ConfigError(str(e)) from None
        print(f"exported {args.model_dir} step {model.step} ({model.task.name}) to {os.path.dirname(path)}")
        if args.onnx:
            _check_onnx(model, os.path.dirname(path), args.onnx_batch, args.onnx_frames)

    return common.run_guarded("slam-export", run, verbose=args.verbose)


def _check_onnx(model, out_dir: str, batch: int, frames: int) -> None:
    """Runs the ONNX graph in onnxruntime (when installed) beside JAX on a random batch and prints the difference."""
    import numpy as np

    from slam_jax import onnx_export
    path = os.path.join(out_dir, onnx_export.ONNX_FILE)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print(f"wrote {path}; onnxruntime is not installed, so it was not run")
        return
    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, frames, model.task.model_cfg.num_mel_bins)).astype(np.float32)
    segment_ids = np.ones((batch, frames), np.int32)
    diff = onnx_export.max_difference(model, path, features, segment_ids)
    print(f"wrote {path}: onnxruntime vs JAX (float32) on a random batch, max |difference| of log-probs {diff:.2e}")


if __name__ == "__main__":
    sys.exit(main())
