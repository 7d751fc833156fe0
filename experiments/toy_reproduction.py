#!/usr/bin/env python
"""Toy-scale reproduction of the SLAM paper's qualitative claims (Bapna et al. 2021, arXiv 2110.10329).

The paper's runs take TPU-months; this sweep asks whether its qualitative claims hold at toy scale, measuring every
variant the same way:

  python scripts/make_toy_corpus.py --out /data/toy_corpus                   # once; needs espeak-ng
  python experiments/toy_reproduction.py --corpus /data/toy_corpus --out /data/toy_runs --budget cpu --seeds 0,1,2
  # or one pre-training per variant, fine-tuned with three seeds (fine-tuning's spread only; ~40% of the time):
  python experiments/toy_reproduction.py --corpus /data/toy_corpus --out /data/toy_runs --seeds 0 --finetune_seeds 0,1,2

For each seed it pre-trains the tiny model (`models/tiny.gin`) with each variant for the same number of steps
(`slam-train`, `gin/experiments/toy_pretrain.gin`), fine-tunes CTC ASR on the corpus' labelled subset
(`slam-finetune`, `gin/experiments/toy_ctc.gin`), scores dev and test WER / CER (`slam-eval`) and probes the
pre-trained encoder's cross-modal alignment on dev pairs (`slam-eval --probes`: STM accuracy, retrieval R@1). It then
writes `results.json` under `--out`, and a table, plots and the claims the numbers support into the section of
`--doc` (default docs/EXPERIMENTS.md) between the markers below; a re-run replaces that section. Every step runs as a
subprocess whose command and output go to `<run dir>/toy_log.txt`; a finished step leaves `toy_done.json` and is
skipped on re-runs, so an interrupted sweep resumes (`slam-train` / `slam-finetune` themselves resume from their
checkpoints). `--dry_run` prints the commands only. The same command runs on a GPU (install `.[gpu]`).

Variants (the paper's named variants, one `gin/objectives/` file each; batches hold 8 speech / 4 text / 4 paired
rows of the kinds the variant trains on, so all see the same speech per step):
  random_init         no pre-training: the fine-tuning baseline
  w2v_conformer       speech contrastive only                   speech
  w2v_bert            contrastive + masked prediction           speech
  w2v_conformer_bert  contrastive + SpanBERT                    speech + text
  bert                SpanBERT only (text-quality reference, not fine-tuned for ASR)       text
  slam                w2v-BERT + SpanBERT                       speech + text
  slam_tlm            SLAM, then + TLM                          speech + text + paired
  slam_tlm_stm        SLAM, then + TLM + STM                    speech + text + paired
The three SLAM variants share one stage-1 run (w2v-BERT + SpanBERT for `stage1_steps`) and then train
`pretrain_steps - stage1_steps` steps with their own objectives (`slam` continues with stage 1's objectives), so
they differ only in what stage 2 adds (the paper's multi-stage recipe: stage 1 w2v-BERT + SpanBERT, stage 2 adds
TLM / STM). A stage-2 run restarts the learning-rate warm-up (a fresh optimizer, t5x-style warm start) and continues
the Gumbel temperature where stage 1 left it; every run anneals the temperature from 2.0 to 0.5 over the whole budget
(our choice, as runs/cpu_smoke.gin anneals within its budget).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # `tasks` imports TensorFlow
from tasks import toy  # noqa: E402  (rows per kind; registers nothing unless $SLAM_TOY_CORPUS is set)

SECTION = "toy_reproduction"   # default --section: the markers of the doc's section and the plots' folder


def markers(section: str = SECTION) -> tuple[str, str]:
    """The (begin, end) comments around a section that a run writes (and a re-run replaces) in --doc."""
    return (f"<!-- {section}:begin (written by experiments/toy_reproduction.py; edits here are replaced) -->",
            f"<!-- {section}:end -->")


BEGIN, END = markers()
DONE, LOG = "toy_done.json", "toy_log.txt"
PRETRAIN_GIN = "experiments/toy_pretrain.gin"
# Each arm fine-tunes with its own recipe: random init with plain full fine-tuning (toy_ctc.gin), a pre-trained
# encoder keeping its speech side under a re-initialized shared stack (toy_ctc_pretrained.gin; the pilot in
# docs/EXPERIMENTS.md picked it), so that neither arm is handicapped by the other's recipe.
FINETUNE_GIN = {"random": ("experiments/toy_ctc.gin",),
                "pretrained": ("experiments/toy_ctc.gin", "experiments/toy_ctc_pretrained.gin")}
MODULES = {"train": "slam_jax.cli.train", "finetune": "slam_jax.cli.finetune", "eval": "slam_jax.cli.eval"}
GUMBEL_START, GUMBEL_END = 2.0, 0.5


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    objective: str | None            # gin/objectives file; None = no pre-training
    mixture: str | None = None       # tasks/toy.py mixture of the (stage-2) pre-training
    staged: bool = False             # starts from the shared SLAM stage-1 run
    finetune: bool = True            # fine-tuned for ASR


VARIANTS = {
    "random_init": Variant("random init", None),
    "w2v_conformer": Variant("w2v-Conformer", "objectives/w2v_conformer.gin", "toy_speech_mix"),
    "w2v_bert": Variant("w2v-BERT", "objectives/w2v_bert.gin", "toy_speech_mix"),
    "w2v_conformer_bert": Variant("w2v-Conformer + BERT", "objectives/w2v_conformer_bert.gin", "toy_unpaired"),
    "bert": Variant("BERT (text only)", "objectives/bert.gin", "toy_text_only", finetune=False),
    "slam": Variant("SLAM", "objectives/slam.gin", "toy_unpaired", staged=True),
    "slam_tlm": Variant("SLAM-TLM", "objectives/slam_tlm.gin", "toy_slam", staged=True),
    "slam_tlm_stm": Variant("SLAM-TLM-STM", "objectives/slam_tlm_stm.gin", "toy_slam", staged=True),
}
STAGE1 = Variant("SLAM stage 1", "objectives/slam.gin", "toy_unpaired", finetune=False)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Steps of one variant (all its pre-training stages together) and of its fine-tuning, and run settings."""

    pretrain_steps: int
    stage1_steps: int
    finetune_steps: int
    log_every: int
    eval_batches: int                # pre-training's one held-out evaluation (held-out text MLM accuracy)
    checkpoint_every: int
    probe_seconds: float = 600.0     # frozen-feature probes: labelled training audio of the character-CTC probe
    probe_steps: int = 1000          # ... and its training steps
    bindings: tuple[str, ...] = ()   # extra gin bindings of every pre-training and fine-tuning run
    pretrain_warmup_steps: int | None = None  # LR warm-up of a run from scratch (None: a tenth of its steps)
    finetune_recipes: bool = False   # each arm its own fine-tuning recipe (FINETUNE_GIN), else toy_ctc.gin for all

    def __post_init__(self):
        if not 0 < self.stage1_steps < self.pretrain_steps or self.finetune_steps < 1:
            raise ValueError(f"budget: need 0 < stage1_steps < pretrain_steps and finetune_steps >= 1, got {self}")


BUDGETS = {
    # A few steps of a smaller model: checks the whole pipeline end to end (tests/test_toy_reproduction.py).
    "miniature": Budget(pretrain_steps=4, stage1_steps=2, finetune_steps=4, log_every=1, eval_batches=1,
                        checkpoint_every=4, probe_seconds=20.0, probe_steps=5, bindings=(
                            "ModelConfig.d_model=32", "ModelConfig.ffn_dim=64", "ModelConfig.speech_layers=1",
                            "ModelConfig.shared_layers=1", "ModelConfig.subsampling_channels=4",
                            "ModelConfig.codebook_size=32", "ModelConfig.code_dim=16",
                            "StreamConfig.speech_frames=256", "ObjectiveConfig.num_negatives=10")),
    # The tiny model for a few hours per seed on 2 CPU cores (docs/EXPERIMENTS.md has the measured times).
    "cpu": Budget(pretrain_steps=1500, stage1_steps=1000, finetune_steps=1000, log_every=10, eval_batches=8,
                  checkpoint_every=500),
    # The pre-training that learns (docs/EXPERIMENTS.md, the w2v-BERT ablation's `speech_layers_4+warmup_1000` at
    # 6000 steps: contrastive accuracy 0.42, speech-MLM 0.24, top rank 10.5) and each arm's fine-tuning recipe.
    # About 35 min per 6000-step w2v-BERT run on 2 idle cores.
    "cpu_long": Budget(pretrain_steps=6000, stage1_steps=4000, finetune_steps=1000, log_every=10, eval_batches=8,
                       checkpoint_every=500, bindings=("ModelConfig.speech_layers=4",), pretrain_warmup_steps=1000,
                       finetune_recipes=True),
}


@dataclasses.dataclass(frozen=True)
class Step:
    """One subprocess of the sweep: `module` with `args`, run in `run_dir` (done when run_dir/toy_done.json exists)."""

    name: str            # e.g. "seed0/pretrain/slam_tlm"
    module: str
    args: tuple[str, ...]
    run_dir: str         # where toy_done.json / toy_log.txt go (the model_dir of train / finetune steps)

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def _gin(name: str, value) -> str:
    return f"--gin.{name}={value!r}" if isinstance(value, str) else f"--gin.{name}={value}"


def pretrain_dir(out: str, seed: int, name: str) -> str:
    return os.path.join(out, f"seed{seed}", "pretrain", name)


def finetune_dir(out: str, seed: int, name: str, finetune_seed: int | None = None) -> str:
    """seed<S>/finetune/<name> for fine-tuning with the pre-training's seed S, seed<S>/finetune_seed<F>/<name> else."""
    sub = "finetune" if finetune_seed in (None, seed) else f"finetune_seed{finetune_seed}"
    return os.path.join(out, f"seed{seed}", sub, name)


def finetune_key(seed: int, finetune_seed: int) -> str:
    """The results.json key of a run: "S" when fine-tuned with the pre-training's seed, "S/ftF" otherwise."""
    return str(seed) if finetune_seed == seed else f"{seed}/ft{finetune_seed}"


def plan(budget: Budget, seeds: Sequence[int], variants: Sequence[str], out: str, vocab_size: int,
         finetune_seeds: Sequence[int] | None = None) -> list[Step]:
    """Every subprocess of the sweep, in an order that respects dependencies (a pure function).

    vocab_size: the corpus' SentencePiece pieces (`toy_corpus.json`), the model's `ModelConfig.vocab_size`.
    finetune_seeds: every pre-trained encoder is fine-tuned once per seed here (data order, SpecAugment, head
      initialization); None fine-tunes each with its pre-training's seed.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    decay = round((GUMBEL_END / GUMBEL_START) ** (1.0 / budget.pretrain_steps), 8)  # as the ablation binds it
    common = [*(f"--gin.{b}" for b in budget.bindings), _gin("ModelConfig.vocab_size", vocab_size)]
    steps: list[Step] = []

    def pretrain(seed: int, name: str, variant: Variant, n_steps: int, init_from: str | None, done_before: int):
        model_dir = pretrain_dir(out, seed, name)
        # A stage-2 run warm-starts with a fresh optimizer: a short warm-up of a tenth of its steps.
        warmup = max(1, n_steps // 10) if init_from or budget.pretrain_warmup_steps is None \
            else budget.pretrain_warmup_steps
        args = [f"--model_dir={model_dir}", f"--gin_file={PRETRAIN_GIN}", f"--gin_file={variant.objective}",
                *common, _gin("TRAIN_STEPS", n_steps), _gin("StreamConfig.mixture", variant.mixture),
                _gin("StreamConfig.batch_size", toy.batch_size(variant.mixture)),
                _gin("StreamConfig.seed", seed), _gin("TrainConfig.seed", seed),
                _gin("TrainConfig.log_every", budget.log_every), _gin("TrainConfig.eval_batches", budget.eval_batches),
                _gin("TrainConfig.checkpoint_every", budget.checkpoint_every),
                _gin("OptimizerConfig.warmup_steps", warmup),
                _gin("ModelConfig.gumbel_temperature_decay", decay),
                _gin("ModelConfig.gumbel_temperature_start", GUMBEL_START * decay ** done_before)]
        if init_from:
            args.append(_gin("TrainConfig.init_from", init_from))
        steps.append(Step(f"seed{seed}/pretrain/{name}", MODULES["train"], tuple(args), model_dir))

    def layer_probes(name: str, model_dir: str, run_dir: str, *extra: str) -> Step:
        """Frozen-feature probes of every layer (the primary endpoint): character CTC trained on
        `budget.probe_seconds` of train/labelled, scored on dev; speaker identification among dev voices."""
        return Step(name, MODULES["eval"], (f"--model_dir={model_dir}", "--layer_probes", "--mixture=toy_paired",
                                            "--split=validation", f"--train_seconds={budget.probe_seconds}",
                                            f"--probe_steps={budget.probe_steps}", *extra), run_dir)

    for seed in seeds:
        if any(VARIANTS[v].staged for v in variants):
            pretrain(seed, "slam_stage1", STAGE1, budget.stage1_steps, None, 0)
        for name in variants:
            variant = VARIANTS[name]
            if variant.objective is None:
                continue
            if variant.staged:
                pretrain(seed, name, variant, budget.pretrain_steps - budget.stage1_steps,
                         pretrain_dir(out, seed, "slam_stage1"), budget.stage1_steps)
            else:
                pretrain(seed, name, variant, budget.pretrain_steps, None, 0)
            model_dir = pretrain_dir(out, seed, name)
            if variant.mixture != "toy_text_only":
                steps.append(layer_probes(f"seed{seed}/layer_probes/{name}", model_dir,
                                          os.path.join(model_dir, "probes_layers")))
            # Every dev pair (not the run's eval_batches), in the same batches for every variant: retrieval's
            # chance level depends on the pool size.
            steps.append(Step(f"seed{seed}/probes/{name}", MODULES["eval"],
                              (f"--model_dir={model_dir}", "--probes", "--mixture=toy_paired", "--split=validation",
                               _gin("TrainConfig.eval_batches", 0),
                               _gin("StreamConfig.batch_size", toy.ROWS["paired"])),
                              os.path.join(model_dir, "probes")))
        probed = [n for n in variants if VARIANTS[n].objective and VARIANTS[n].mixture != "toy_text_only"]
        if "random_init" in variants and probed:
            # The same probes on a freshly initialized encoder (this seed) of the same configuration.
            steps.append(layer_probes(f"seed{seed}/layer_probes/random_init", pretrain_dir(out, seed, probed[0]),
                                      os.path.join(out, f"seed{seed}", "probes_random_init"), "--random_init"))
        for tune_seed in (seed,) if finetune_seeds is None else finetune_seeds:
            key = "seed" + finetune_key(seed, tune_seed)
            for name in variants:
                variant = VARIANTS[name]
                if not variant.finetune:
                    continue
                model_dir = finetune_dir(out, seed, name, tune_seed)
                recipe = "pretrained" if budget.finetune_recipes and variant.objective is not None else "random"
                args = [f"--model_dir={model_dir}", *(f"--gin_file={f}" for f in FINETUNE_GIN[recipe]), *common,
                        _gin("TRAIN_STEPS", budget.finetune_steps), _gin("StreamConfig.seed", tune_seed),
                        _gin("TrainConfig.seed", tune_seed), _gin("TrainConfig.log_every", budget.log_every),
                        _gin("TrainConfig.checkpoint_every", budget.checkpoint_every),
                        _gin("OptimizerConfig.warmup_steps", max(1, budget.finetune_steps // 10))]
                if variant.objective is not None:
                    args.append(_gin("FinetuneConfig.init_from", pretrain_dir(out, seed, name)))
                steps.append(Step(f"{key}/finetune/{name}", MODULES["finetune"], tuple(args), model_dir))
                for split in ("validation", "test"):
                    steps.append(Step(f"{key}/eval_{split}/{name}", MODULES["eval"],
                                      (f"--model_dir={model_dir}", f"--split={split}"),
                                      os.path.join(model_dir, f"eval_{split}")))
    return steps


# ------------------------------------------------------------------------------------------------ running
def run_step(step: Step, env: dict[str, str]) -> dict:
    """Runs `step` unless done; returns its record {"seconds", "output" (the last JSON line printed, if any)}."""
    done_path = os.path.join(step.run_dir, DONE)
    if os.path.exists(done_path):
        with open(done_path) as f:
            return json.load(f)
    os.makedirs(step.run_dir, exist_ok=True)
    log_path = os.path.join(step.run_dir, LOG)
    print(f"[{time.strftime('%H:%M:%S')}] {step.name} ...", flush=True)
    start = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + shlex.join(step.command) + "\n")
        log.flush()
        proc = subprocess.run(step.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=REPO)
        log.write(proc.stdout)
    seconds = time.time() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise RuntimeError(f"{step.name} failed (exit {proc.returncode}); full log: {log_path}\n{tail}")
    output = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            output = json.loads(line)
            break
    record = {"name": step.name, "command": step.command, "seconds": seconds, "output": output,
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    with open(done_path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"[{time.strftime('%H:%M:%S')}] {step.name} done in {seconds:.0f} s", flush=True)
    return record


def subprocess_env(corpus: str, out: str) -> dict[str, str]:
    env = dict(os.environ)
    env[toy.ENV] = os.path.abspath(corpus)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The sweep compiles the same programs once per seed: JAX's persistent cache keeps them across subprocesses.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(out), "jax_cache"))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def machine(env: dict[str, str]) -> str:
    """'<cpu model>, <n> cores; JAX devices: ...' (the devices as a subprocess sees them)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = subprocess.run([sys.executable, "-c", "import jax; print(', '.join(str(d.device_kind) for d in "
                              "jax.devices()))"], env=env, capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} cores visible; JAX devices: {devices or 'unknown'}"


# ------------------------------------------------------------------------------------------------ results
# Training health metrics kept per logged step for the plots (slam_jax.health; the speech ones exist only for
# variants that train on unlabeled speech): (metric, panel title).
HEALTH = {"speech/contrastive_accuracy": "contrastive accuracy", "speech/mlm_accuracy": "speech-MLM accuracy",
          "speech/top_rank": "top-layer effective rank", "speech/code_perplexity": "argmax-code perplexity",
          "speech/sampled_is_argmax": "sampled code = argmax code", "text/mlm_accuracy": "text MLM accuracy"}


def read_metrics(model_dir: str) -> list[dict]:
    path = os.path.join(model_dir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(records: dict[str, dict], budget: Budget, seeds: Sequence[int], variants: Sequence[str], out: str,
            finetune_seeds: Sequence[int] | None = None) -> dict:
    """results.json: per variant and run the scores, probes, held-out text MLM accuracy, times and loss curves.

    runs[variant][finetune_key(S, F)]: the pre-training fields (curve, probes, text MLM accuracy) sit in the run
    fine-tuned with the pre-training's own seed ("S", also when S is not among finetune_seeds); "S/ftF" runs hold
    only fine-tuning fields, so per-seed statistics count each pre-training once and each fine-tuning once.
    """
    runs: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        stage1 = pretrain_dir(out, seed, "slam_stage1")
        for name in variants:
            variant, r = VARIANTS[name], {}
            if variant.objective is not None:
                model_dir = pretrain_dir(out, seed, name)
                curve = [(m["step"], m["loss"]) for m in read_metrics(model_dir) if "loss" in m]
                seconds = records[f"seed{seed}/pretrain/{name}"]["seconds"]
                if variant.staged:
                    head = [(m["step"], m["loss"]) for m in read_metrics(stage1) if "loss" in m]
                    curve = head + [(s + budget.stage1_steps, v) for s, v in curve]
                    seconds += records[f"seed{seed}/pretrain/slam_stage1"]["seconds"]
                final_eval = {k: v for m in read_metrics(model_dir) for k, v in m.items() if k.startswith("eval/")}
                health = {key: [(m["step"], m[key]) for m in read_metrics(model_dir) if key in m] for key in HEALTH}
                if variant.staged:
                    head = {key: [(m["step"], m[key]) for m in read_metrics(stage1) if key in m] for key in HEALTH}
                    health = {key: head[key] + [(s + budget.stage1_steps, v) for s, v in health[key]] for key in HEALTH}
                r.update(pretrain_curve=curve, pretrain_seconds=seconds, pretrain_eval=final_eval,
                         pretrain_health={k: v for k, v in health.items() if v},
                         probes=records[f"seed{seed}/probes/{name}"]["output"])
            layers = records.get(f"seed{seed}/layer_probes/{name}")
            if layers is not None:  # the whole result (with per-utterance CERs) is in the file slam-eval names
                with open(layers["output"]["file"]) as f:
                    r["layer_probes"] = json.load(f)
            if r:
                runs.setdefault(name, {})[str(seed)] = r
            for tune_seed in (seed,) if finetune_seeds is None else finetune_seeds:
                if not variant.finetune:
                    continue
                key = finetune_key(seed, tune_seed)
                if not all(f"seed{key}/{kind}/{name}" in records for kind in ("finetune", "eval_validation",
                                                                               "eval_test")):
                    continue      # not finished (--report_only)
                model_dir = finetune_dir(out, seed, name, tune_seed)
                runs.setdefault(name, {}).setdefault(key, {}).update(
                    finetune_curve=[(m["step"], m["asr/ctc_loss"]) for m in read_metrics(model_dir)
                                    if "asr/ctc_loss" in m],
                    finetune_seconds=records[f"seed{key}/finetune/{name}"]["seconds"],
                    dev=records[f"seed{key}/eval_validation/{name}"]["output"],
                    test=records[f"seed{key}/eval_test/{name}"]["output"])
    return {"budget": dataclasses.asdict(budget), "seeds": list(seeds),
            "finetune_seeds": None if finetune_seeds is None else list(finetune_seeds), "variants": list(variants),
            "runs": runs}


def check_mergeable(earlier: dict, budget: dict, budget_name: str, corpus: dict, source: str) -> None:
    """ValueError unless `earlier` (a results.json) was made with this budget and corpus: else its runs would not be
    comparable with this sweep's."""
    missing = [k for k in ("runs", "seeds", "variants", "budget", "corpus") if k not in earlier]
    if missing:
        raise ValueError(f"{source}: not a results.json of this script (no {', '.join(missing)})")
    for field, ours in (("budget", budget), ("budget_name", budget_name)):
        if json.loads(json.dumps(earlier.get(field))) != json.loads(json.dumps(ours)):   # (tuples vs JSON lists)
            raise ValueError(f"{source}: {field} {earlier.get(field)!r} differs from this sweep's {ours!r}")

    def corpus_id(c: dict) -> dict:   # the folder it was written to does not matter
        return {**c, "args": {k: v for k, v in c.get("args", {}).items() if k != "out"}}
    if corpus_id(earlier["corpus"]) != corpus_id(corpus):
        raise ValueError(f"{source}: made from another corpus (toy_corpus.json differs beyond its folder)")


def merge(results: dict, earlier: dict, source: str) -> dict:
    """`results` with the runs of an `earlier` results.json added (e.g. the committed one of another session's sweep,
    whose run folders are gone): a sweep can add pre-training seeds in a new folder. Both must have the same budget
    and corpus (`check_mergeable`, else ValueError); a run of `results` replaces the earlier run with the same variant
    and key."""
    check_mergeable(earlier, results["budget"], results.get("budget_name"), results.get("corpus", {}), source)
    runs = {name: dict(earlier["runs"].get(name, {})) for name in earlier["runs"]}
    for name, by_key in results["runs"].items():
        runs.setdefault(name, {}).update(by_key)
    variants = list(earlier["variants"]) + [v for v in results["variants"] if v not in earlier["variants"]]
    merged = {**results, "seeds": sorted({*earlier["seeds"], *results["seeds"]}), "variants": variants, "runs": runs,
              "merged_from": [*earlier.get("merged_from", []), *results.get("merged_from", []),
                              {"file": source, "seeds": earlier["seeds"]}]}
    merged["finetune_seeds"] = sorted({t for ts in finetuned_with(merged).values() for t in ts})   # those that ran
    return merged


def finetuned_with(results: dict) -> dict[int, list[int]]:
    """{pre-training seed: the fine-tuning seeds of its finished fine-tuning runs} over every variant."""
    out: dict[int, set[int]] = {int(s): set() for s in results["seeds"]}
    for runs in results["runs"].values():
        for key, run in runs.items():
            if "test" in run:
                seed, _, tune = key.partition("/ft")
                out.setdefault(int(seed), set()).add(int(tune or seed))
    return {s: sorted(t) for s, t in sorted(out.items())}


def values(results: dict, variant: str, get) -> list[float]:
    """The per-run values `get(run)` of a variant (runs where it is missing or not finite left out): one per
    pre-training seed for pre-training fields, one per fine-tuning run for fine-tuning fields."""
    out = []
    for run in results["runs"].get(variant, {}).values():
        try:
            v = float(get(run))
        except (KeyError, TypeError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def fmt(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """'mean ± std (n)' of per-seed values (sample std), or the value for one seed, or '—'."""
    if not xs:
        return "—"
    import numpy as np
    a = np.asarray(xs) * scale
    if len(a) == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f} ({len(a)})"


def compare(a: list[float], b: list[float], lower_is_better: bool) -> tuple[str, str]:
    """Verdict of 'a is better than b' from per-run values (fractions): Welch's t-test, two-sided, p < 0.05 decides.

    Returns (verdict, evidence): "supported" / "contradicted" (significant either way) or "cannot decide" (fewer than
    two seeds on a side, or p >= 0.05).
    """
    import numpy as np
    from scipy import stats
    if not a or not b:
        return "not measured", "the runs are missing"
    ma, mb = float(np.mean(a)), float(np.mean(b))
    evidence = f"{100 * ma:.1f}% vs {100 * mb:.1f}% (mean of n = {len(a)} / {len(b)} runs)"
    if len(a) < 2 or len(b) < 2:
        return "cannot decide", evidence + "; one run gives no spread"
    if np.std(a) == 0 and np.std(b) == 0:
        p = 0.0 if ma != mb else 1.0
    else:
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    evidence += f", Welch p = {p:.3f}"
    if p >= 0.05:
        return "cannot decide", evidence
    better = ma < mb if lower_is_better else ma > mb
    return ("supported" if better else "contradicted"), evidence


def paired(results: dict, a: str, b: str, get) -> tuple[list[float], list[float]]:
    """The values of runs that `a` and `b` share by key (same pre-training seed and fine-tuning seed: the same data
    order, SpecAugment draws and head initialization), in the same order."""
    xs, ys = [], []
    for key, run in results["runs"].get(a, {}).items():
        other = results["runs"].get(b, {}).get(key)
        try:
            x, y = float(get(run)), float(get(other))
        except (KeyError, TypeError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def compare_paired(a: list[float], b: list[float], lower_is_better: bool) -> tuple[str, str]:
    """Verdict of 'a is better than b' from paired runs (a[i] and b[i] share their seeds): paired t-test, two-sided,
    p < 0.05 decides; with how many pairs `a` wins."""
    import numpy as np
    from scipy import stats
    if len(a) < 2:
        return "cannot decide", f"{len(a)} paired run(s)"
    d = np.asarray(a) - np.asarray(b)
    wins = int(np.sum(d < 0) if lower_is_better else np.sum(d > 0))
    evidence = (f"{100 * np.mean(a):.1f}% vs {100 * np.mean(b):.1f}% (mean of {len(a)} paired runs; better in "
                f"{wins} of {len(a)}")
    if not np.any(d):
        return "cannot decide", evidence + "; no difference)"
    if np.std(d) > 1e-9:   # (differences equal up to rounding count as identical)
        p = float(stats.ttest_rel(a, b).pvalue)
        evidence += f", paired t-test p = {p:.3f})"
    else:   # every pair differs by the same amount: the t statistic is undefined; a sign test (all n the same way)
        p = 2 * 0.5 ** len(d)
        evidence += f", identical differences, sign test p = {p:.3f})"
    if p >= 0.05:
        return "cannot decide", evidence
    better = np.mean(d) < 0 if lower_is_better else np.mean(d) > 0
    return ("supported" if better else "contradicted"), evidence


def probe_layer_names(results: dict) -> list[str]:
    """The probed layers (the log-mel input first), from the first run that has layer probes."""
    for runs in results["runs"].values():
        for run in runs.values():
            if "layer_probes" in run:
                return list(run["layer_probes"]["layers"])
    return []


def probe_cer(results: dict, variant: str, layer: str) -> list[float]:
    return values(results, variant, lambda r: r["layer_probes"]["layers"][layer]["cer"])


def best_probe_layer(results: dict, variant: str) -> str | None:
    """The encoder layer (not the log-mel input) with the lowest mean character-CTC probe CER."""
    layers = [l for l in probe_layer_names(results) if l != "logmel" and probe_cer(results, variant, l)]
    if not layers:
        return None
    import numpy as np
    return min(layers, key=lambda l: float(np.mean(probe_cer(results, variant, l))))


def compare_probes(results: dict, a: str, b: str) -> tuple[str, str]:
    """'a's encoder beats b's on the frozen character-CTC probe': each at its best layer, per-utterance CERs paired
    (same dev utterance, same pre-training seed), pooled over the seeds both have; Wilcoxon signed-rank, two-sided,
    p < 0.05 decides. A degenerate probe (the same output everywhere) of `a` never supports the claim."""
    import numpy as np
    from scipy import stats
    la, lb = best_probe_layer(results, a), best_probe_layer(results, b)
    if la is None or lb is None:
        return "not measured", "the probe runs are missing"
    diffs, seeds, cers = [], [], []
    for seed, run in results["runs"][a].items():
        other = results["runs"][b].get(seed, {})
        if "layer_probes" not in run or "layer_probes" not in other:
            continue
        pa, pb = run["layer_probes"]["layers"][la], other["layer_probes"]["layers"][lb]
        if pa["degenerate"]:
            return "cannot decide", f"{VARIANTS[a].label}'s probe output is degenerate (seed {seed}, {la})"
        diffs += list(np.asarray(pa["utterance_cer"]) - np.asarray(pb["utterance_cer"]))
        seeds.append(seed)
        cers.append((pa["cer"], pb["cer"]))
    if not seeds:
        return "not measured", "no pre-training seed has both arms' probes"
    ma, mb = np.mean(cers, axis=0)      # over the seeds both arms have (the ones tested)
    evidence = (f"CER {100 * ma:.1f}% ({la}) vs {100 * mb:.1f}% ({lb}), corpus-level mean over seeds "
                f"{', '.join(seeds)}")
    if not diffs or not np.any(diffs):
        return "cannot decide", evidence + "; no paired difference"
    p = float(stats.wilcoxon(diffs).pvalue)
    evidence += f"; Wilcoxon signed-rank over {len(diffs)} paired utterance CERs, p = {p:.2g}"
    if p >= 0.05:
        return "cannot decide", evidence
    return ("supported" if np.mean(diffs) < 0 else "contradicted"), evidence


PROBE_CLAIMS = [
    # (claim, variant a, variant b): "a's frozen encoder beats b's on the character-CTC probe".
    ("(primary) w2v-BERT pre-training beats random initialization", "w2v_bert", "random_init"),
    ("(primary) SLAM pre-training beats random initialization", "slam", "random_init"),
    ("(primary) SLAM-TLM-STM pre-training beats random initialization", "slam_tlm_stm", "random_init"),
    ("(1) w2v-BERT beats contrastive-only pre-training (frozen probe)", "w2v_bert", "w2v_conformer"),
    ("(2) TLM improves over plain SLAM (frozen probe)", "slam_tlm", "slam"),
]


def probe_section(results: dict) -> str:
    """The frozen-feature probe table (CER per layer, speaker accuracy) and its claims, or '' without probes."""
    layers = probe_layer_names(results)
    if not layers:
        return ""
    rows = []
    for name in results["variants"]:
        if not any("layer_probes" in r for r in results["runs"].get(name, {}).values()):
            continue
        cells = []
        for layer in layers:
            cell = fmt(probe_cer(results, name, layer), 100)
            if any(r["layer_probes"]["layers"][layer]["degenerate"] for r in results["runs"][name].values()
                   if "layer_probes" in r):
                cell += " (degenerate)"
            cells.append(cell)
        best = best_probe_layer(results, name)
        speaker = fmt(values(results, name, lambda r: r["layer_probes"]["layers"][best]["speaker_accuracy"]), 100)
        rows.append(f"| {VARIANTS[name].label} | " + " | ".join(cells) + f" | {best} | {speaker} |")
    rank_rows = []
    for name in results["variants"]:
        runs = [r["layer_probes"] for r in results["runs"].get(name, {}).values() if "layer_probes" in r]
        if runs:
            ranks = [fmt([run["layers"][layer]["effective_rank"] for run in runs
                          if "effective_rank" in run["layers"].get(layer, {})]) for layer in layers]
            rank_rows.append(f"| {VARIANTS[name].label} | " + " | ".join(ranks) + " |")
    any_run = next(r["layer_probes"] for runs in results["runs"].values() for r in runs.values()
                   if "layer_probes" in r)
    chance = "not measurable: fewer than two voices with two utterances" if any_run["speaker_chance"] is None \
        else f"chance {100 * any_run['speaker_chance']:.1f}%"
    claims = []
    for text, a, b in PROBE_CLAIMS:
        if a in results["variants"] and b in results["variants"]:
            verdict, evidence = compare_probes(results, a, b)
            claims.append(f"- {text}: **{verdict}** — {evidence}.")
    return f"""
### Frozen-feature probes (primary endpoint)

Each encoder frozen; a linear character-CTC probe per layer trained on {any_run['train_seconds'] / 60:.1f} min of
`train/labelled` ({any_run['train_utterances']} utterances) and scored on dev ({any_run['eval_utterances']} utterances,
held-out voices and sentences): corpus-level CER in % (mean ± std over pre-training seeds); `logmel` is the probe on
the input features (4 frames stacked). "degenerate": the probe emits the same string for most utterances. Speaker
identification: logistic regression on the utterance mean of the best CTC layer, {any_run['speakers']} dev voices
({chance}), half of each voice's utterances to train, half to score.

| variant | {' | '.join(layers)} | best layer | speaker acc. |
|---|{'---|' * len(layers)}---|---|
{chr(10).join(rows)}

Effective rank of each layer's frames on the dev utterances (participation ratio of the covariance eigenvalues; mean
over pre-training seeds):

| variant | {' | '.join(layers)} |
|---|{'---|' * len(layers)}
{chr(10).join(rank_rows)}

{chr(10).join(claims)}
"""


CLAIMS = [
    # (claim, variant a, variant b, metric, lower is better): "a beats b" is the paper's claim.
    ("(1) With text added, w2v-BERT speech pre-training beats contrastive-only (SLAM beats w2v-Conformer + BERT; "
     "test WER)", "slam", "w2v_conformer_bert", lambda r: r["test"]["wer"], True),
    ("(2) TLM improves over plain SLAM (SLAM-TLM beats SLAM; test WER)", "slam_tlm", "slam",
     lambda r: r["test"]["wer"], True),
    ("(3) Joint speech-text pre-training costs text quality versus text-only (BERT beats SLAM in held-out text MLM "
     "accuracy)", "bert", "slam",
     lambda r: r["pretrain_eval"]["eval/text/mlm_accuracy"], False),
    ("(4) Joint training on paired data aligns the modalities (SLAM-TLM-STM beats unpaired SLAM in speech-to-text "
     "retrieval R@1 on dev pairs)", "slam_tlm_stm", "slam", lambda r: r["probes"]["speech_to_text_r1"], False),
    ("(4b) ... and text-to-speech retrieval R@1", "slam_tlm_stm", "slam",
     lambda r: r["probes"]["text_to_speech_r1"], False),
    ("(sanity) Pre-training helps at all (SLAM-TLM-STM beats random init; test WER)", "slam_tlm_stm", "random_init",
     lambda r: r["test"]["wer"], True),
    ("(secondary) w2v-BERT pre-training beats random init after fine-tuning (test WER)", "w2v_bert", "random_init",
     lambda r: r["test"]["wer"], True),
]


def plots(results: dict, folder: str) -> list[str]:
    """Loss curves (pre-training, fine-tuning) of the first seed, WER per variant, the training health metrics over
    steps (every pre-training seed) and the frozen probes' CER and effective rank per layer; returns the PNG names."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    seed = str(results["seeds"][0])
    names = results["variants"]
    color = {name: f"C{i}" for i, name in enumerate(VARIANTS)}  # one colour per variant in every panel
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name in names:
        run = results["runs"][name].get(seed, {})
        for ax, key in zip(axes, ("pretrain_curve", "finetune_curve")):
            if run.get(key):
                steps, losses = zip(*run[key])
                ax.plot(steps, losses, label=VARIANTS[name].label, lw=1, color=color[name])
    axes[0].set(title=f"pre-training total loss (seed {seed}; objectives differ)", xlabel="step", yscale="log")
    axes[1].set(title=f"CTC fine-tuning loss (seed {seed})", xlabel="step", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "loss_curves.png"), dpi=80)
    plt.close(fig)

    tuned = [n for n in names if VARIANTS[n].finetune]
    fig, ax = plt.subplots(figsize=(10, 3.4))
    x = np.arange(len(tuned))
    for offset, split in ((-0.2, "dev"), (0.2, "test")):
        per = [np.asarray(values(results, n, lambda r, s=split: r[s]["wer"])) * 100 for n in tuned]
        means = [p.mean() if len(p) else np.nan for p in per]
        ax.bar(x + offset, means, width=0.4, label=f"{split} WER")
        for xi, p in zip(x, per):
            ax.plot([xi + offset] * len(p), p, "k.", ms=4)
    ax.set_xticks(x, [VARIANTS[n].label for n in tuned], fontsize=8)
    ax.set(ylabel="WER (%)", title="WER after CTC fine-tuning (bars: mean over runs; dots: runs)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "wer.png"), dpi=80)
    plt.close(fig)
    images = ["loss_curves.png", "wer.png"]

    shown = [key for key in HEALTH if any(key in run.get("pretrain_health", {}) for n in names
                                          for run in results["runs"].get(n, {}).values())]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.3 * len(shown), 3.0), squeeze=False)
        for ax, key in zip(axes[0], shown):
            for name in names:
                for i, (run_key, run) in enumerate(sorted(results["runs"].get(name, {}).items())):
                    curve = run.get("pretrain_health", {}).get(key)
                    if curve:
                        steps, vals = zip(*curve)
                        ax.plot(steps, vals, lw=1, color=color[name], ls="-" if i == 0 else "--",
                                label=f"{VARIANTS[name].label} (seed {run_key})")
            ax.set(title=HEALTH[key], xlabel="step")
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "health.png"), dpi=80)
        plt.close(fig)
        images.append("health.png")

    layers = probe_layer_names(results)
    if layers:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        x = np.arange(len(layers))
        for name in names:
            runs = [r["layer_probes"] for r in results["runs"].get(name, {}).values() if "layer_probes" in r]
            for ax, field, scale in ((axes[0], "cer", 100), (axes[1], "effective_rank", 1)):
                per_seed = np.array([[run["layers"].get(layer, {}).get(field, np.nan) for layer in layers]
                                     for run in runs]) * scale
                if len(per_seed):
                    ax.errorbar(x, np.nanmean(per_seed, 0), yerr=np.nanstd(per_seed, 0) if len(runs) > 1 else None,
                                marker="o", ms=3, lw=1, capsize=2, color=color[name],
                                label=f"{VARIANTS[name].label} ({len(runs)} seeds)")
        axes[0].set(title="frozen character-CTC probe: dev CER (%)", ylabel="CER (%)")
        axes[1].set(title="effective rank of the layer's frames (dev)", ylabel="rank")
        for ax in axes:
            ax.set_xticks(x, layers, fontsize=7, rotation=30)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "probes.png"), dpi=80)
        plt.close(fig)
        images.append("probes.png")
    return images


COLUMNS = ("variant", "dev WER", "dev CER", "test WER", "test CER", "STM acc.", "R@1 speech→text",
           "R@1 text→speech", "held-out text MLM acc.", "pre-train min", "fine-tune min")


def render(results: dict, *, command: str, machine_desc: str, corpus: dict, images: list[str], image_dir: str,
           section: str = SECTION
           ) -> str:
    """The markdown section: setup, table, plots, claims."""
    b = results["budget"]
    rows = []
    for name in results["variants"]:
        get = lambda f, n=name: values(results, n, f)  # noqa: E731
        stm = fmt(get(lambda r: r["probes"]["stm_accuracy"]), 100)
        rows.append("| " + " | ".join([
            VARIANTS[name].label,
            fmt(get(lambda r: r["dev"]["wer"]), 100), fmt(get(lambda r: r["dev"]["cer"]), 100),
            fmt(get(lambda r: r["test"]["wer"]), 100), fmt(get(lambda r: r["test"]["cer"]), 100),
            stm + ("*" if stm != "—" and name != "slam_tlm_stm" else ""),
            fmt(get(lambda r: r["probes"]["speech_to_text_r1"]), 100),
            fmt(get(lambda r: r["probes"]["text_to_speech_r1"]), 100),
            fmt(get(lambda r: r["pretrain_eval"]["eval/text/mlm_accuracy"]), 100),
            fmt(get(lambda r: r["pretrain_seconds"]), 1 / 60), fmt(get(lambda r: r["finetune_seconds"]), 1 / 60),
        ]) + " |")
    pairs = values(results, "slam_tlm_stm", lambda r: r["probes"]["pairs"]) or \
        [v for n in results["variants"] for v in values(results, n, lambda r: r["probes"]["pairs"])]
    chance = f"{100 / pairs[0]:.1f}%" if pairs else "1/pairs"
    claims = []
    for text, a, b_, get, lower in CLAIMS:
        if a not in results["variants"] or b_ not in results["variants"]:
            continue
        xs, ys = paired(results, a, b_, get)
        # Paired where both arms ran the same seeds (the fine-tuning noise cancels), else unpaired.
        verdict, evidence = compare_paired(xs, ys, lower) if len(xs) >= 2 else \
            compare(values(results, a, get), values(results, b_, get), lower)
        claims.append(f"- {text}: **{verdict}** — {evidence}.")
    pre_seeds = ", ".join(map(str, results["seeds"]))
    tuned_with = finetuned_with(results)
    if all(t == [s] for s, t in tuned_with.items()):
        seeds_line = f"seeds {pre_seeds} (each pre-training fine-tuned with its own seed)."
    else:
        groups: dict[tuple, list[int]] = {}
        for s, t in tuned_with.items():
            groups.setdefault(tuple(t), []).append(s)
        tuned = "; ".join(f"{'seeds ' + ', '.join(map(str, t)) if t else 'none'} for pre-training "
                          f"seed{'s' * (len(ss) > 1)} {', '.join(map(str, ss))}" for t, ss in groups.items())
        seeds_line = (f"pre-training seeds {pre_seeds}, fine-tuning {tuned}: the WER / CER spread is over all "
                      f"fine-tuning runs, the probe and MLM spread over pre-training seeds only.")
    for merged in results.get("merged_from", []):
        seeds_line += (f" The runs of pre-training seed{'s' * (len(merged['seeds']) > 1)} "
                       f"{', '.join(map(str, merged['seeds']))} come from `{merged['file']}` (an earlier sweep's "
                       "results; its run folders are not needed).")
    splits = corpus.get("splits", {})
    corpus_line = ", ".join(f"{k} {v['utterances']} utterances / {v['hours']:.2f} h" for k, v in splits.items())
    figures = "\n".join(f"![{img}]({image_dir}/{img})" for img in images)
    begin, end = markers(section)
    title = "" if section == SECTION else f", budget `{results.get('budget_name', '?')}`"
    return f"""{begin}
## Toy-scale reproduction{title} (`experiments/toy_reproduction.py`)

Generated {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine_desc}.

```bash
{command}
```

Corpus (`scripts/make_toy_corpus.py`, seed {corpus.get('args', {}).get('seed', '?')}): {corpus_line};
{corpus.get('text_lines', '?')} text lines, {corpus.get('spm_pieces', '?')} SentencePiece pieces. Budget
`{results.get('budget_name', '')}`: every variant pre-trains {b['pretrain_steps']} steps (the SLAM variants
{b['stage1_steps']} of them in the shared stage 1), then CTC fine-tunes {b['finetune_steps']} steps on
`train/labelled`; {seeds_line} Values are mean ± sample std (number of runs) over runs,
in %; times in minutes (a SLAM variant's includes the shared stage 1).

| {' | '.join(COLUMNS)} |
|{'---|' * len(COLUMNS)}
{chr(10).join(rows)}

STM accuracy (dev pairs, each with one rolled negative; chance 50%) means something only for SLAM-TLM-STM, the
one variant that trains the STM head; the others' (marked *) is an untrained head's. Retrieval (dev pairs, mean-pooled
top-layer outputs of each modality encoded alone, cosine similarity; chance R@1 ≈ {chance}) and held-out text MLM
accuracy (the pre-training evaluation on dev transcripts) come from the pre-trained encoder before fine-tuning.

{figures}

### The paper's claims at toy scale

A claim is *supported* or *contradicted* when a two-sided test gives p < 0.05 in that direction, and *cannot decide*
otherwise (including with one run): a paired t-test where both arms ran the same pre-training and fine-tuning seeds
(the fine-tuning noise cancels in the pairs), else Welch's t-test over the per-run values. Where the runs share one pre-training per
variant (fine-tuning seeds only), the test measures fine-tuning noise alone: a difference it calls significant can
still be one pre-training run's luck.

{chr(10).join(claims)}
{probe_section(results)}
{end}
"""


def write_section(doc: str, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replaces the section of `doc` between the markers `begin` / `end` (appends it, or creates the file, when
    absent)."""
    text = ""
    if os.path.exists(doc):
        with open(doc, encoding="utf-8") as f:
            text = f.read()
    if begin in text and end in text:
        text = text[:text.index(begin)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    else:
        if begin in text or end in text:
            raise ValueError(f"{doc}: holds only one of the markers {begin!r} / {end!r}; restore or remove it")
        text = (text.rstrip("\n") + "\n\n" if text else "# Experiments\n\n") + section
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=os.environ.get(toy.ENV),
                        help=f"the toy corpus folder (scripts/make_toy_corpus.py; default ${toy.ENV})")
    parser.add_argument("--out", required=True, help="sweep folder (run directories, results.json); resumable")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    parser.add_argument("--seeds", default="0", help="comma-separated pre-training seeds, e.g. 0,1,2")
    parser.add_argument("--finetune_seeds", default=None,
                        help="comma-separated fine-tuning seeds, each pre-trained encoder fine-tuned once per seed "
                             "(default: each with its pre-training's seed)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " +
                        ", ".join(VARIANTS))
    parser.add_argument("--doc", default=os.path.join(REPO, "docs", "EXPERIMENTS.md"),
                        help="markdown file whose --section is (re)written; plots go beside it")
    parser.add_argument("--section", default=SECTION,
                        help="name of the doc's section (its marker comments) and of the plots' folder beside the "
                             "doc: another name keeps a second sweep (another budget) beside the first")
    parser.add_argument("--merge", action="append", default=[], metavar="RESULTS_JSON",
                        help="an earlier sweep's results.json (same budget and corpus, e.g. experiments/results/"
                             "<section>/results.json) whose runs join this sweep's table; a run of this sweep with "
                             "the same variant and seeds replaces it (repeatable)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: write results.json, the plots and the doc section from the finished runs "
                             "(a fine-tuning run or evaluation not finished yet is left out; pre-training must be done)")
    args = parser.parse_args(argv)
    if not args.corpus:
        parser.error(f"--corpus (or ${toy.ENV}) is required: the folder scripts/make_toy_corpus.py wrote")
    manifest_path = os.path.join(args.corpus, "toy_corpus.json")
    if not os.path.exists(manifest_path):
        parser.error(f"{manifest_path} does not exist: --corpus must be a folder written by scripts/make_toy_corpus.py")
    def int_list(flag: str, text: str) -> list[int]:
        try:
            return [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--{flag} must be comma-separated integers, got {text!r}")

    seeds = int_list("seeds", args.seeds)
    finetune_seeds = None if args.finetune_seeds is None else int_list("finetune_seeds", args.finetune_seeds)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    budget = BUDGETS[args.budget]
    with open(manifest_path) as f:
        corpus = json.load(f)
    try:
        steps = plan(budget, seeds, variants, args.out, corpus["spm_pieces"], finetune_seeds)
    except ValueError as e:
        parser.error(str(e))
    # The report at the end needs these: fail now, not after hours of runs.
    missing = [m for m in ("matplotlib", "scipy") if importlib.util.find_spec(m) is None]
    if missing and not args.dry_run:
        parser.error(f"{', '.join(missing)} not installed (pip install -e . installs them): the table and plots "
                     "at the end need them")
    earlier = {}
    for path in args.merge:   # checked now, not after hours of runs
        try:
            with open(path) as f:
                earlier[path] = json.load(f)
            check_mergeable(earlier[path], dataclasses.asdict(budget), args.budget, corpus, path)
        except (OSError, json.JSONDecodeError, ValueError) as e:
            parser.error(f"--merge {path}: {e}")
    env = subprocess_env(args.corpus, args.out)
    if args.dry_run:
        for step in steps:
            print(shlex.join(step.command))
        return 0
    records = {}
    for step in steps:
        if args.report_only:
            done_path = os.path.join(step.run_dir, DONE)
            if os.path.exists(done_path):
                with open(done_path) as f:
                    records[step.name] = json.load(f)
            elif "/finetune/" not in step.name and "/eval_" not in step.name:
                parser.error(f"--report_only: {step.name} has not finished ({step.run_dir})")
            continue
        try:
            records[step.name] = run_step(step, env)
        except RuntimeError as e:
            print(f"toy_reproduction: {e}", file=sys.stderr)
            return 1
    results = {**collect(records, budget, seeds, variants, args.out, finetune_seeds), "budget_name": args.budget,
               "corpus": corpus}
    for path in args.merge:
        try:
            results = merge(results, earlier[path], path)
        except ValueError as e:
            print(f"toy_reproduction: --merge {e}", file=sys.stderr)
            return 2
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    image_dir = args.section
    images = plots(results, os.path.join(os.path.dirname(os.path.abspath(args.doc)), image_dir))
    command = " ".join(["python experiments/toy_reproduction.py", f"--corpus {args.corpus}", f"--out {args.out}",
                        f"--budget {args.budget}", f"--seeds {','.join(map(str, seeds))}",
                        *([] if finetune_seeds is None else [f"--finetune_seeds={','.join(map(str, finetune_seeds))}"]),
                        f"--variants {','.join(variants)}",
                        *([] if args.section == SECTION else [f"--section {args.section}"]),
                        *(f"--merge {path}" for path in args.merge),
                        *(["--report_only"] if args.report_only else [])])
    write_section(args.doc, render(results, command=command, machine_desc=machine(env), corpus=corpus,
                                   images=images, image_dir=image_dir, section=args.section),
                  *markers(args.section))
    print(f"results: {os.path.join(args.out, 'results.json')}; table and plots: {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
