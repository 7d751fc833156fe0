"""`slam-eval`: scores a run's latest checkpoint (or `--step`) and prints one JSON line.

    slam-eval --model_dir=/tmp/slam_ft [--split=validation]            # a fine-tuning run: its task's metric
    slam-eval --model_dir=/tmp/slam_ft --gin.CtcDecodeConfig.beam_size=8 \\
        --gin.CtcDecodeConfig.lm_path="'/data/lm.arpa'"                 # CTC beam search + n-gram LM fusion
    slam-eval --model_dir=/tmp/slam_smoke --probes [--mixture=mini_paired] [--split=validation]
                                                                        # a pre-training run: alignment probes
    slam-eval --model_dir=/tmp/slam_smoke --layer_probes --mixture=mini_paired [--random_init]
                                                                        # frozen-feature probes of every layer

The run's own `config.gin` is parsed first, then any `--gin_file` / `--gin.NAME=VALUE` given here (decoding
options, a different `StreamConfig.mixture`, ...). Multi-process (a pod slice, several GPU hosts): the flags of
`slam-train` plus `--eval_batches=N`, enough batches per process to cover its shard of the split (processes step in
lockstep and pad with empty rows once their shard is done); scores are summed over processes and printed by every
one. Results go under `model_dir/eval/` (`slam_jax/evaluation/run.py`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from slam_jax import config
from slam_jax.cli import common


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("slam-eval", __doc__, gin=True)
    common.add_flags(parser, "model_dir", "split", "step", "mixture", required=("model_dir",))
    parser.add_argument("--probes", action="store_true", help="alignment probes of a pre-training run")
    parser.add_argument("--layer_probes", action="store_true",
                        help="frozen-feature probes of every layer of a pre-training run: character CTC and speaker "
                        "identification (slam_jax/evaluation/layer_probes.py)")
    parser.add_argument("--random_init", action="store_true",
                        help="--layer_probes: probe a freshly initialized encoder of the run's configuration")
    parser.add_argument("--train_split", default="train", help="--layer_probes: split the CTC probe trains on")
    parser.add_argument("--train_seconds", type=float, default=600.0,
                        help="--layer_probes: seconds of --train_split audio for the CTC probe (default 10 min)")
    parser.add_argument("--probe_steps", type=int, default=1000, help="--layer_probes: CTC probe training steps")
    parser.add_argument("--eval_batches", type=int, default=0,
                        help="batches per process (default 0: the whole split; required with several processes)")
    common.add_flags(parser, "module_import", *common.DISTRIBUTED_FLAGS, "verbose")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, files, bindings = common.parse_gin_args(parser, argv, example_gin_file=None)
    from slam_jax.evaluation import run as evaluation

    def parse():
        run_config = evaluation.run_config(args.model_dir)
        finetuned = evaluation.is_finetune_run(run_config)
        if args.layer_probes and finetuned:
            raise config.ConfigError(f"{args.model_dir} is a fine-tuning run: --layer_probes needs a pre-training run")
        if not args.layer_probes and args.probes == finetuned:
            raise config.ConfigError(
                f"{args.model_dir} is a {'fine-tuning' if finetuned else 'pre-training'} run: "
                + ("--probes needs a pre-training run (its STM head and both modalities)" if finetuned else
                   "evaluate it with --probes (alignment probes), or fine-tune it with slam-finetune first"))
        config.parse([run_config, *files], bindings)
        config.register_tasks(args.module_import)

    code = common.run_guarded(parser.prog, parse, verbose=args.verbose)
    if code:
        return code
    common.initialize_distributed(args)
    common.use_compilation_cache()
    results = []

    def run():
        if args.layer_probes:
            results.append(evaluation.evaluate_layer_probes(
                args.model_dir, args.split, args.step, args.mixture, train_split=args.train_split,
                train_seconds=args.train_seconds, probe_steps=args.probe_steps, random_init=args.random_init))
        elif args.probes:
            results.append(evaluation.evaluate_probes(args.model_dir, args.split, args.step, args.mixture,
                                                      args.eval_batches))
        else:
            results.append(evaluation.evaluate_task(args.model_dir, args.split, args.step, args.eval_batches))

    code = common.run_guarded(parser.prog, run, verbose=args.verbose, errors=(ValueError,))
    if code:
        return code
    result = results[0]
    if args.layer_probes:  # the per-utterance CERs stay in the result file
        result = {**result, "layers": {k: {m: v for m, v in layer.items() if m != "utterance_cer"}
                                       for k, layer in result["layers"].items()}}
    print(json.dumps(result), flush=True)
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
