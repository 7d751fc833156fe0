#!/usr/bin/env python
"""Does a speech-translation run's decoder use the speech? Teacher-forced NLL with each row's own speech vs another's.

  python scripts/st_speech_dependence.py --model_dir=/tmp/slam_st [--batches 3]

For a few training batches of the run's stream, prints the token NLL with the right speech and with the speech rolled
by one row (every target paired with another utterance), and the spread of the encoder output across rows. Equal NLLs
mean the decoder ignores the encoder (it has only learned the target language); a collapsed encoder shows a spread
near 0. Used for docs/EXPERIMENTS.md.
"""
from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax import checkpointing, config
from slam_jax.finetune import run as finetune_run
from slam_jax.trainer import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="a slam-finetune run of the 'translate' task")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    config.parse([os.path.join(args.model_dir, "config.gin")], [])
    config.register_tasks()
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
    if task.name != "translate":
        raise SystemExit(f"{args.model_dir} is a {task.name!r} run, not a speech-translation run")
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    params, step = checkpointing.restore_params(args.model_dir, trainer.abstract_params, None)
    stream = task.train_stream(0, 1)
    for _ in range(args.batches):
        local = next(stream)
        other = {"paired": {k: np.roll(v, 1, axis=0) if k in ("features", "segment_ids") else v
                            for k, v in local["paired"].items()}}
        own, rolled = (trainer._eval_fn(params, trainer.device_batch(b), jnp.int32(step)) for b in (local, other))
        print(f"step {step}: NLL own speech {float(own['st/nll']):.3f}, other speech {float(rolled['st/nll']):.3f}")
    model = nnx.merge(trainer.graphdef, params)
    sub = local["paired"]
    memory, mask = model.encode(jnp.asarray(sub["features"]), jnp.asarray(sub["segment_ids"]))
    memory, frames = np.asarray(memory), int(np.asarray(mask).all(0).sum())
    print(f"encoder output over the first {frames} frames: std across rows "
          f"{memory[:, :frames].std(0).mean():.4f}, mean magnitude {np.abs(memory[:, :frames]).mean():.4f}")


if __name__ == "__main__":
    main()
