#!/usr/bin/env python
"""What makes w2v-BERT learn at toy scale: one change at a time against the toy baseline, with health metrics.

  python experiments/w2v_bert_ablation.py --corpus /data/toy_corpus --out /data/w2v_ablation [--steps 1500] \
      [--variants baseline,argmax_targets,...] [--doc docs/EXPERIMENTS.md]

Each variant pre-trains the tiny model with w2v-BERT (`gin/experiments/toy_pretrain.gin` + `objectives/w2v_bert.gin`,
8 speech rows per batch, the toy sweep's settings) for `--steps` steps with its own gin bindings on top, evaluates on
the dev split at the end (`eval/...` metrics: losses, accuracies, per-layer effective rank), and records the final
training health (mean of the last 5 logs) and the eval metrics in `<out>/results.json`. A finished run leaves
`toy_done.json` and is skipped when the command is repeated, so an interrupted ablation resumes. The table goes into
the section of `--doc` between the markers below.

The gate (the pre-training issue's bar for "w2v-BERT learns"): dev contrastive accuracy >= 0.4, dev speech-MLM
accuracy >= 0.2 and top-layer effective rank > 10.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from typing import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toy_reproduction as toy_sweep  # noqa: E402  (the sweep's runner, environment and metric reader)

BEGIN = "<!-- w2v_bert_ablation:begin (written by experiments/w2v_bert_ablation.py; edits here are replaced) -->"
END = "<!-- w2v_bert_ablation:end -->"

# name -> (what changes, extra gin bindings). Each departs from the baseline in one respect unless it says so.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the toy sweep's w2v-BERT (LR 2e-3, Gumbel 2.0 -> ~0.45, sampled targets)", []),
    "argmax_targets": ("MLM targets = argmax codes", ["ObjectiveConfig.speech_mlm_targets='argmax'"]),
    "fairseq_quantizer": ("quantizer logits over LayerNorm(z), N(0, 1) init (fairseq)",
                          ["ModelConfig.quantizer_input_norm=True", "ModelConfig.quantizer_logit_init_std=1.0"]),
    "feature_grad_0.1": ("gradient into the subsampling x 0.1", ["ModelConfig.feature_grad_mult=0.1"]),
    "feature_pen_10": ("L2 penalty on z, weight 10", ["ObjectiveConfig.feature_penalty=10.0"]),
    "project_targets": ("linear projection of q before the similarity (fairseq project_q)",
                        ["ModelConfig.project_targets=True"]),
    "keep_same_code": ("distractors with the positive's code are kept",
                       ["ObjectiveConfig.exclude_same_code_negatives=False"]),
    "frozen_targets": ("no gradient into the targets (fixed random quantizer)",
                       ["ObjectiveConfig.target_gradient=False"]),
    # Combinations of the single changes above (named by their parts).
    "fairseq_quantizer+frozen_targets": ("a sharp fixed random-projection quantizer (BEST-RQ-like)", [
        "ModelConfig.quantizer_input_norm=True", "ModelConfig.quantizer_logit_init_std=1.0",
        "ObjectiveConfig.target_gradient=False"]),
    "fairseq_quantizer+keep_same_code+diversity_1.0": ("sharp quantizer, no trivial optimum, 10x diversity", [
        "ModelConfig.quantizer_input_norm=True", "ModelConfig.quantizer_logit_init_std=1.0",
        "ObjectiveConfig.exclude_same_code_negatives=False", "ObjectiveConfig.diversity_weight=1.0"]),
    "fairseq_quantizer+keep_same_code": ("both", ["ModelConfig.quantizer_input_norm=True",
                                                  "ModelConfig.quantizer_logit_init_std=1.0",
                                                  "ObjectiveConfig.exclude_same_code_negatives=False"]),
    "fairseq_quantizer+keep_same_code+argmax_targets": ("all three", [
        "ModelConfig.quantizer_input_norm=True", "ModelConfig.quantizer_logit_init_std=1.0",
        "ObjectiveConfig.exclude_same_code_negatives=False", "ObjectiveConfig.speech_mlm_targets='argmax'"]),
    "lr_5e-4": ("peak LR 5e-4", ["OptimizerConfig.peak_learning_rate=5e-4"]),
    "diversity_1.0": ("diversity weight 1.0", ["ObjectiveConfig.diversity_weight=1.0"]),
    "mask_0.035": ("mask start probability 0.035 (~30% of frames masked, paper 0.065: ~49%)",
                   ["ObjectiveConfig.speech_mask_prob=0.035"]),
    "lr_4e-3": ("peak LR 4e-3", ["OptimizerConfig.peak_learning_rate=4e-3"]),
    "batch_16": ("16 speech rows per batch (twice the speech per step)", ["StreamConfig.batch_size=16"]),
    "codebook_normal": ("codebook entries N(0, 1) instead of U[0, 1) (code vectors start apart)",
                        ["ModelConfig.quantizer_codebook_init='normal'"]),
    "speech_layers_4": ("4 speech (contrastive-module) layers instead of 2", ["ModelConfig.speech_layers=4"]),
    "speech_layers_4+batch_16": ("a deeper contrastive module and twice the speech per step",
                                 ["ModelConfig.speech_layers=4", "StreamConfig.batch_size=16"]),
    "warmup_1000": ("linear LR warm-up over 1000 steps instead of 150 (inverse-sqrt decay from a later peak: the LR "
                    "at step 3000 is 2.6x the baseline's)", ["OptimizerConfig.warmup_steps=1000"]),
    "speech_layers_4+warmup_1000": ("a deeper contrastive module and the 1000-step warm-up",
                                    ["ModelConfig.speech_layers=4", "OptimizerConfig.warmup_steps=1000"]),
    "d_model_256": ("width 256 (FFN 1024) instead of 128", ["ModelConfig.d_model=256", "ModelConfig.ffn_dim=1024"]),
}
GATE = {"eval/speech/contrastive_accuracy": 0.4, "eval/speech/mlm_accuracy": 0.2, "eval/speech/top_rank": 10.0}
COLUMNS = [  # (metric, header, digits)
    ("eval/speech/contrastive_accuracy", "dev contr. acc", 3), ("eval/speech/contrastive_chance", "chance", 3),
    ("eval/speech/mlm_accuracy", "dev MLM acc", 3), ("eval/speech/top_rank", "dev top rank", 1),
    ("eval/speech/feature_rank", "dev z rank", 1), ("speech/sampled_is_argmax", "sampled=argmax", 2),
    ("speech/max_code_prob", "max p", 2), ("speech/code_perplexity", "code ppl", 1),
    ("speech/prob_perplexity", "prob ppl", 1), ("speech/contrastive_loss", "train contr. loss", 2),
]


def train_args(name: str, steps: int, vocab_size: int, run_dir: str, seed: int = 0) -> tuple[str, ...]:
    return ("--gin_file=experiments/toy_pretrain.gin", "--gin_file=objectives/w2v_bert.gin",
            f"--gin.TRAIN_STEPS={steps}", "--gin.StreamConfig.mixture='toy_speech_mix'",
            "--gin.StreamConfig.batch_size=8", f"--gin.ModelConfig.vocab_size={vocab_size}",
            f"--gin.ModelConfig.gumbel_temperature_decay={0.25 ** (1 / steps):.8f}",
            "--gin.TrainConfig.checkpoint_every=500", f"--model_dir={run_dir}",
            f"--gin.TrainConfig.seed={seed}", f"--gin.StreamConfig.seed={seed}",
            *[f"--gin.{b}" for b in VARIANTS[name][1]])


def summarize(run_dir: str) -> dict[str, float]:
    """Mean of the last 5 training logs (health is noisy per step) and the final evaluation."""
    records = toy_sweep.read_metrics(run_dir)
    train = [r for r in records if "loss" in r][-5:]
    out = {k: sum(r[k] for r in train) / len(train) for k in train[-1] if k != "step"}
    for r in records:
        out.update({k: v for k, v in r.items() if k.startswith("eval/")})
    return out


def render(results: dict, command_line: str, machine: str) -> str:
    """The markdown table of every recorded run (`results.json`), by training length, then as recorded."""
    lines = [BEGIN, "", f"Last command: `{command_line}` (each row: `--variants NAME [--steps N] [--seed S]`)  ",
             f"Machine: {machine}. Dev metrics from the run's final evaluation (8 batches); training health: mean "
             "of the last 5 logs.", "",
             "| variant | steps | change | " + " | ".join(h for _, h, _ in COLUMNS) + " | gate | wall |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for key, r in sorted(results.items(), key=lambda kv: kv[1]["steps"]):
        m = r["metrics"]
        cells = [f"{m[k]:.{d}f}" if k in m else "-" for k, _, d in COLUMNS]
        # A collapsed codebook passes the accuracies trivially (one code: nothing to tell apart).
        gate = all(m.get(k, 0) >= v for k, v in GATE.items()) and \
            m.get("eval/speech/code_perplexity", 0) >= 2.0
        lines.append(f"| {key} | {r['steps']} | {VARIANTS[key.split('/')[0]][0]} | " + " | ".join(cells) +
                     f" | {'pass' if gate else 'fail'} | {r['seconds'] / 60:.0f} min |")
    return "\n".join(lines + ["", END])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="the toy corpus folder (scripts/make_toy_corpus.py)")
    parser.add_argument("--out", required=True, help="folder for the runs and results.json")
    parser.add_argument("--steps", type=int, default=1500, help="pre-training steps of every variant")
    parser.add_argument("--seed", type=int, default=0, help="pre-training seed (initialization, data order)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names: " + ", ".join(VARIANTS))
    parser.add_argument("--doc", default=None, help="markdown file whose ablation section is (re)written")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    with open(os.path.join(args.corpus, "toy_corpus.json")) as f:
        vocab_size = json.load(f)["spm_pieces"]
    env = toy_sweep.subprocess_env(args.corpus, args.out)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    results_path = os.path.join(args.out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    for name in names:
        key = name + (f"/seed{args.seed}" if args.seed else "") + (f"/{args.steps}" if args.steps != 1500 else "")
        run_dir = os.path.join(args.out, f"{name}_s{args.steps}" + (f"_seed{args.seed}" if args.seed else ""))
        step = toy_sweep.Step(name=key, module="slam_jax.cli.train", run_dir=run_dir,
                              args=train_args(name, args.steps, vocab_size, run_dir, args.seed))
        record = toy_sweep.run_step(step, env)
        results[key] = {"seconds": record["seconds"], "metrics": summarize(run_dir), "steps": args.steps,
                         "finished": record["finished"], "commit": commit}
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    command_line = "python experiments/w2v_bert_ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(results, command_line, toy_sweep.machine(env))
    print(section)
    if args.doc:
        toy_sweep.write_section(args.doc, section, BEGIN, END)
    print(f"results: {results_path} ({datetime.datetime.now().isoformat(timespec='seconds')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
