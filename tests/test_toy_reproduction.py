"""The toy-reproduction pipeline: corpus plan (no espeak needed), toy tasks, sweep plan and report; and (slow) the
whole pipeline end to end at the miniature budget on a freshly generated tiny corpus."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import seqio

from train_utils import env as runner_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, os.path.join(REPO, "experiments"))
import make_mini_corpus as mini  # noqa: E402
import make_toy_corpus as toy_corpus  # noqa: E402
import toy_reproduction as repro  # noqa: E402
from slam_jax.data import sources  # noqa: E402
from tasks import toy  # noqa: E402

PLAN_ARGS = dict(hours=0.5, dev_utterances=60, test_utterances=50, labelled_fraction=0.2, text_factor=3,
                 dev_voices=5, test_voices=4, seed=7)


@pytest.fixture(scope="module")
def corpus_plan() -> toy_corpus.Plan:
    return toy_corpus.make_plan(**PLAN_ARGS)


def transcripts(utterances) -> list[str]:
    return [mini.transcript(s) for _, _, s in utterances]


# ------------------------------------------------------------------------------------------------ corpus plan
def test_plan_is_deterministic_given_the_seed(corpus_plan):
    assert toy_corpus.make_plan(**PLAN_ARGS) == corpus_plan
    other = toy_corpus.make_plan(**{**PLAN_ARGS, "seed": 8})
    assert other.utterances["dev"] != corpus_plan.utterances["dev"]
    assert other.voices["test"] != corpus_plan.voices["test"]


def test_plan_sizes(corpus_plan):
    u = corpus_plan.utterances
    n_train = toy_corpus.train_utterances(PLAN_ARGS["hours"])
    assert n_train == round(PLAN_ARGS["hours"] * 3600 / toy_corpus.PLANNED_MEAN_S)
    assert len(u["train/labelled"]) + len(u["train/unlabelled"]) == n_train
    assert len(u["train/labelled"]) == round(PLAN_ARGS["labelled_fraction"] * n_train)
    assert (len(u["dev"]), len(u["test"])) == (PLAN_ARGS["dev_utterances"], PLAN_ARGS["test_utterances"])
    assert len(corpus_plan.text) == PLAN_ARGS["text_factor"] * n_train
    assert len(set(corpus_plan.text)) == len(corpus_plan.text)


def test_voices_are_disjoint_and_each_voice_is_one_speaker(corpus_plan):
    v = corpus_plan.voices
    assert (len(v["dev"]), len(v["test"])) == (PLAN_ARGS["dev_voices"], PLAN_ARGS["test_voices"])
    assert len(v["train"]) + len(v["dev"]) + len(v["test"]) == len(toy_corpus.VOICES)
    names = {split: {voice for _, voice in v[split]} for split in v}
    assert not names["train"] & names["dev"] and not names["train"] & names["test"] and not names["dev"] & names["test"]
    speaker_of = {voice: spk for split in v for spk, voice in v[split]}
    assert len(set(speaker_of.values())) == len(speaker_of)
    for split, pool in (("train/labelled", "train"), ("train/unlabelled", "train"), ("dev", "dev"), ("test", "test")):
        for speaker, voice, _ in corpus_plan.utterances[split]:
            assert voice in names[pool] and speaker_of[voice] == speaker


def test_train_voices_are_balanced(corpus_plan):
    counts = collections.Counter(voice for split in ("train/labelled", "train/unlabelled")
                                 for _, voice, _ in corpus_plan.utterances[split])
    assert max(counts.values()) - min(counts.values()) <= 1


def test_sentences_are_distinct_and_held_out(corpus_plan):
    u = corpus_plan.utterances
    train = transcripts(u["train/labelled"]) + transcripts(u["train/unlabelled"])
    dev, test = transcripts(u["dev"]), transcripts(u["test"])
    for lines in (train, dev, test):
        assert len(set(lines)) == len(lines)
    assert not set(train) & set(dev) and not set(train) & set(test) and not set(dev) & set(test)
    assert not set(corpus_plan.text) & (set(dev) | set(test))
    assert all(line == mini.transcript(line) for line in corpus_plan.text)


@pytest.mark.parametrize("bad", [dict(hours=0), dict(labelled_fraction=0), dict(labelled_fraction=1.5),
                                 dict(dev_voices=0), dict(dev_voices=len(toy_corpus.VOICES)), dict(text_factor=0)])
def test_plan_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        toy_corpus.make_plan(**{**PLAN_ARGS, **bad})


def test_generator_refuses_a_non_empty_out(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_toy_corpus.py"),
                             f"--out={tmp_path}", "--espeak", sys.executable], capture_output=True, text=True)
    assert result.returncode != 0 and "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"


# ------------------------------------------------------------------------------------------------ toy tasks
def test_toy_tasks_register_over_a_folder(tmp_path):
    shutil.copy(os.path.join(sources.MINI_CORPUS, "spm.model"), tmp_path / "spm.model")
    toy.register(str(tmp_path))
    for name, kind in (("toy_speech", "speech"), ("toy_paired", "paired"), ("toy_text", "text"),
                       ("toy_transcripts", "text")):
        assert sources.kind_of(name) == kind
    assert seqio.get_mixture_or_task("toy_paired").source.splits == ("train", "validation", "test")
    for mixture, kinds in toy.KINDS.items():
        if mixture in ("toy_text_only", "toy_unpaired", "toy_slam"):
            children = {sources.kind_of(t) for t, _ in toy.MIXTURES[mixture]}
            assert children == set(kinds)
        assert toy.batch_size(mixture) == sum(toy.ROWS[k] for k in kinds)


def test_no_toy_task_without_the_environment_variable():
    env = {k: v for k, v in runner_env().items() if k != toy.ENV}
    code = "import seqio, tasks; print(sorted(n for n in seqio.TaskRegistry.names() if n.startswith('toy_')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------------ sweep plan
def _arg(step: repro.Step, name: str) -> str | None:
    prefix = f"--gin.{name}="
    found = [a[len(prefix):] for a in step.args if a.startswith(prefix)]
    return found[-1] if found else None


@pytest.mark.parametrize("budget_name", ["cpu", "cpu_long"])
def test_every_variant_gets_the_same_budget(tmp_path, budget_name):
    budget = repro.BUDGETS[budget_name]
    steps = {s.name: s for s in repro.plan(budget, [0, 3], list(repro.VARIANTS), str(tmp_path), 300)}
    for seed in (0, 3):
        stage1 = steps[f"seed{seed}/pretrain/slam_stage1"]
        stage1_steps = int(_arg(stage1, "TRAIN_STEPS"))
        decay = float(_arg(stage1, "ModelConfig.gumbel_temperature_decay"))
        for name, variant in repro.VARIANTS.items():
            tune = steps.get(f"seed{seed}/finetune/{name}")
            assert (tune is not None) == variant.finetune
            if variant.objective is None:
                assert _arg(tune, "FinetuneConfig.init_from") is None
                assert [a for a in tune.args if a.startswith("--gin_file=")] == ["--gin_file=experiments/toy_ctc.gin"]
                continue
            pre = steps[f"seed{seed}/pretrain/{name}"]
            n = int(_arg(pre, "TRAIN_STEPS"))
            start = float(_arg(pre, "ModelConfig.gumbel_temperature_start"))
            assert _arg(pre, "TrainConfig.seed") == _arg(pre, "StreamConfig.seed") == str(seed)
            assert _arg(pre, "ModelConfig.vocab_size") == "300"
            rows = int(_arg(pre, "StreamConfig.batch_size"))
            assert rows == sum(toy.ROWS[k] for k in toy.KINDS[variant.mixture])
            for binding in budget.bindings:   # e.g. the model's depth: the same in pre-training and fine-tuning
                assert f"--gin.{binding}" in pre.args and (tune is None or f"--gin.{binding}" in tune.args)
            warmup = int(_arg(pre, "OptimizerConfig.warmup_steps"))
            if variant.staged:
                assert _arg(pre, "TrainConfig.init_from") == repr(stage1.run_dir)
                assert n + stage1_steps == budget.pretrain_steps
                assert start == pytest.approx(repro.GUMBEL_START * decay ** stage1_steps)
                assert warmup == n // 10   # a fresh optimizer on a warm start
            else:
                assert _arg(pre, "TrainConfig.init_from") is None and n == budget.pretrain_steps
                assert start == repro.GUMBEL_START
                assert warmup == (budget.pretrain_warmup_steps or n // 10)
            assert repro.GUMBEL_START * decay ** budget.pretrain_steps == pytest.approx(repro.GUMBEL_END, rel=1e-4)
            if tune is not None:
                assert _arg(tune, "FinetuneConfig.init_from") == repr(pre.run_dir)
                assert int(_arg(tune, "TRAIN_STEPS")) == budget.finetune_steps
                recipe = "pretrained" if budget.finetune_recipes else "random"
                assert [a for a in tune.args if a.startswith("--gin_file=")] == \
                    [f"--gin_file={f}" for f in repro.FINETUNE_GIN[recipe]]
        for name, variant in repro.VARIANTS.items():   # every variant probed on the whole dev split, same batches
            if variant.objective is not None:
                probe = steps[f"seed{seed}/probes/{name}"]
                assert _arg(probe, "TrainConfig.eval_batches") == "0"
                assert _arg(probe, "StreamConfig.batch_size") == str(toy.ROWS["paired"])
    order = list(steps)
    for name, step in steps.items():   # a step comes after the run it starts from
        for arg in step.args:
            if "init_from=" in arg or arg.startswith("--model_dir=") and "/probes" in step.run_dir:
                source = arg.split("=", 1)[1].strip("'")
                producer = next(n for n, s in steps.items() if s.run_dir == source)
                assert order.index(producer) < order.index(name)


def test_finetune_seeds_tune_every_encoder_once_per_seed(tmp_path):
    steps = {s.name: s for s in repro.plan(repro.BUDGETS["cpu"], [0], list(repro.VARIANTS), str(tmp_path), 300,
                                           finetune_seeds=[0, 1, 2])}
    assert sum(name.startswith("seed0/pretrain/") for name in steps) == 8   # pre-trained once per variant
    tuned = [n for n, v in repro.VARIANTS.items() if v.finetune]
    dirs = set()
    for key, tune_seed in (("0", 0), ("0/ft1", 1), ("0/ft2", 2)):
        for name in tuned:
            tune = steps[f"seed{key}/finetune/{name}"]
            assert _arg(tune, "StreamConfig.seed") == _arg(tune, "TrainConfig.seed") == str(tune_seed)
            init = _arg(tune, "FinetuneConfig.init_from")
            assert init == (None if name == "random_init" else repr(steps[f"seed0/pretrain/{name}"].run_dir))
            for split in ("validation", "test"):
                assert steps[f"seed{key}/eval_{split}/{name}"].args[0] == f"--model_dir={tune.run_dir}"
            dirs.add(tune.run_dir)
    assert len(dirs) == 3 * len(tuned)
    # Fine-tuning with the pre-training's own seed keeps the directory of a run without --finetune_seeds.
    default = {s.name: s for s in repro.plan(repro.BUDGETS["cpu"], [0], list(repro.VARIANTS), str(tmp_path), 300)}
    assert {n: s.run_dir for n, s in default.items()}.items() <= {n: s.run_dir for n, s in steps.items()}.items()


def test_a_missing_report_library_fails_before_any_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "toy_corpus.json").write_text(json.dumps({"spm_pieces": 300}))
    real = repro.importlib.util.find_spec
    monkeypatch.setattr(repro.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real(name))
    with pytest.raises(SystemExit):
        repro.main([f"--corpus={tmp_path}", f"--out={tmp_path / 'runs'}"])
    assert "matplotlib not installed" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_plan_rejects_an_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="unknown variants"):
        repro.plan(repro.BUDGETS["miniature"], [0], ["slam", "w2v_bart"], str(tmp_path), 300)


# ------------------------------------------------------------------------------------------------ report
def test_paired_comparison_cancels_the_seed_noise():
    # Seeds differ a lot, the arms by a steady 2 points: unpaired cannot tell, paired can.
    a, b = [0.30, 0.50, 0.70, 0.40, 0.60], [0.32, 0.52, 0.73, 0.41, 0.62]
    assert repro.compare(a, b, lower_is_better=True)[0] == "cannot decide"
    verdict, evidence = repro.compare_paired(a, b, lower_is_better=True)
    assert verdict == "supported" and "better in 5 of 5" in evidence
    assert repro.compare_paired(b, a, lower_is_better=True)[0] == "contradicted"
    assert repro.compare_paired([0.3], [0.4], lower_is_better=True)[0] == "cannot decide"
    # Identical differences: two pairs decide nothing (sign test p = 0.5), six do (p = 0.031).
    assert repro.compare_paired([0.3, 0.5], [0.4, 0.6], lower_is_better=True)[0] == "cannot decide"
    assert repro.compare_paired([0.3] * 6, [0.4] * 6, lower_is_better=True)[0] == "supported"
    results = {"runs": {"x": {"0": {"test": {"wer": 0.3}}, "0/ft1": {"test": {"wer": 0.5}}, "1": {}},
                        "y": {"0": {"test": {"wer": 0.4}}, "0/ft1": {"test": {"wer": 0.6}}, "0/ft2": {}}}}
    assert repro.paired(results, "x", "y", lambda r: r["test"]["wer"]) == ([0.3, 0.5], [0.4, 0.6])


def test_compare_decides_only_with_spread():
    assert repro.compare([0.2], [0.3], lower_is_better=True)[0] == "cannot decide"
    assert repro.compare([0.20, 0.21, 0.19], [0.30, 0.31, 0.29], lower_is_better=True)[0] == "supported"
    assert repro.compare([0.30, 0.31, 0.29], [0.20, 0.21, 0.19], lower_is_better=True)[0] == "contradicted"
    assert repro.compare([0.2, 0.4, 0.3], [0.25, 0.35, 0.3], lower_is_better=True)[0] == "cannot decide"
    assert repro.compare([], [0.3], lower_is_better=True)[0] == "not measured"


def _probe_run(cer_shift, rng, degenerate=False):
    layers = {}
    for i, name in enumerate(["logmel", "z", "speech_1", "shared_1"]):
        utt = np.clip(0.6 - 0.05 * i + cer_shift + 0.05 * rng.normal(size=40), 0, 1)
        layers[name] = {"cer": float(utt.mean()), "utterance_cer": list(utt), "degenerate": degenerate,
                        "speaker_accuracy": 0.5}
    return {"layer_probes": {"layers": layers, "train_seconds": 600.0, "train_utterances": 280,
                             "eval_utterances": 40, "speakers": 12, "speaker_chance": 1 / 12}}


def test_probe_claims_use_paired_utterances_and_refuse_degenerate_output():
    rng = np.random.default_rng(0)
    results = {"variants": ["random_init", "w2v_bert", "slam"], "runs": {
        "random_init": {"0": _probe_run(0.0, rng), "1": _probe_run(0.0, rng)},
        "w2v_bert": {"0": _probe_run(-0.1, rng), "1": _probe_run(-0.1, rng)},
        "slam": {"0": _probe_run(-0.3, rng, degenerate=True)}}}
    assert repro.best_probe_layer(results, "w2v_bert") == "shared_1"   # the log-mel input is never "best"
    verdict, evidence = repro.compare_probes(results, "w2v_bert", "random_init")
    assert verdict == "supported" and "80 paired utterance CERs" in evidence
    assert repro.compare_probes(results, "random_init", "w2v_bert")[0] == "contradicted"
    assert repro.compare_probes(results, "slam", "random_init")[0] == "cannot decide"
    section = repro.probe_section(results)
    assert "| w2v-BERT |" in section and "(degenerate)" in section and "**supported**" in section


def test_merge_adds_an_earlier_sweeps_seeds_and_refuses_other_settings():
    import dataclasses
    rng = np.random.default_rng(1)
    budget = json.loads(json.dumps(dataclasses.asdict(repro.BUDGETS["cpu_long"])))
    corpus = {"args": {"out": "/a", "seed": 1}, "spm_pieces": 258}
    earlier = {"budget": budget, "budget_name": "cpu_long", "corpus": corpus, "seeds": [0],
               "finetune_seeds": [0, 1], "variants": ["random_init", "slam"], "runs": {
                   "random_init": {"0": {**_probe_run(0.0, rng), "test": {"wer": 0.5}},
                                   "0/ft1": {"test": {"wer": 0.6}}},
                   "slam": {"0": {**_probe_run(-0.1, rng), "test": {"wer": 0.4}}, "0/ft1": {"test": {"wer": 0.3}}}}}
    now = {"budget": dataclasses.asdict(repro.BUDGETS["cpu_long"]), "budget_name": "cpu_long",
           "corpus": {**corpus, "args": {"out": "/b", "seed": 1}}, "seeds": [1], "finetune_seeds": [],
           "variants": ["random_init", "slam", "slam_tlm_stm"], "runs": {
               "random_init": {"1": _probe_run(0.0, rng)}, "slam": {"1": _probe_run(-0.1, rng)},
               "slam_tlm_stm": {"1": _probe_run(-0.1, rng)}}}
    merged = repro.merge(now, earlier, "old/results.json")
    assert merged["seeds"] == [0, 1] and merged["variants"] == ["random_init", "slam", "slam_tlm_stm"]
    assert sorted(merged["runs"]["slam"]) == ["0", "0/ft1", "1"]
    assert repro.finetuned_with(merged) == {0: [0, 1], 1: []}
    verdict, evidence = repro.compare_probes(merged, "slam", "random_init")
    assert verdict == "supported" and "seeds 0, 1" in evidence and "80 paired" in evidence
    assert repro.paired(merged, "slam", "random_init", lambda r: r["test"]["wer"]) == ([0.4, 0.3], [0.5, 0.6])
    # An arm with one seed is compared on that seed only, its means included.
    random_seed1 = merged["runs"]["random_init"]["1"]["layer_probes"]["layers"]["shared_1"]["cer"]
    evidence = repro.compare_probes(merged, "slam_tlm_stm", "random_init")[1]
    assert f"vs {100 * random_seed1:.1f}% (shared_1), corpus-level mean over seeds 1;" in evidence
    assert merged["merged_from"] == [{"file": "old/results.json", "seeds": [0]}]
    text = repro.render(merged, command="python experiments/toy_reproduction.py ...", machine_desc="2 cores",
                        corpus=corpus, images=[], image_dir="plots")
    assert "fine-tuning seeds 0, 1 for pre-training seed 0; none for pre-training seed 1" in text
    assert "seed 0 come from `old/results.json`" in text and "**supported**" in text
    with pytest.raises(ValueError, match="budget"):
        repro.merge({**now, "budget_name": "cpu"}, earlier, "old/results.json")
    assert merged["finetune_seeds"] == [0, 1]   # the fine-tuning seeds that ran
    with pytest.raises(ValueError, match="not a results.json of this script .no runs"):
        repro.merge(now, {k: v for k, v in earlier.items() if k != "runs"}, "old/results.json")
    with pytest.raises(ValueError, match="another corpus"):
        repro.merge({**now, "corpus": {**corpus, "spm_pieces": 300}}, earlier, "old/results.json")


def test_write_section_replaces_only_its_section(tmp_path):
    doc = tmp_path / "EXPERIMENTS.md"
    repro.write_section(str(doc), f"{repro.BEGIN}\nfirst\n{repro.END}\n")
    doc.write_text(doc.read_text() + "\n## Other results\nkept\n")
    repro.write_section(str(doc), f"{repro.BEGIN}\nsecond\n{repro.END}\n")
    text = doc.read_text()
    assert "second" in text and "first" not in text and "kept" in text and text.count(repro.BEGIN) == 1
    # A second section (another budget's sweep, --section) sits beside the first; each run replaces its own.
    begin, end = repro.markers("toy_reproduction_cpu_long")
    repro.write_section(str(doc), f"{begin}\nlong\n{end}\n", begin, end)
    repro.write_section(str(doc), f"{repro.BEGIN}\nthird\n{repro.END}\n")
    text = doc.read_text()
    assert "long" in text and "third" in text and "second" not in text and text.count(begin) == 1
    doc.write_text(f"{repro.BEGIN}\nbroken")
    with pytest.raises(ValueError, match="only one"):
        repro.write_section(str(doc), f"{repro.BEGIN}\nthird\n{repro.END}\n")


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_miniature_pipeline_end_to_end(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng): the toy corpus cannot be generated")
    corpus, out, doc = tmp_path / "corpus", tmp_path / "runs", tmp_path / "docs" / "EXPERIMENTS.md"
    env = runner_env()
    gen = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_toy_corpus.py"), f"--out={corpus}",
                          "--hours=0.03", "--dev_utterances=8", "--test_utterances=8", "--dev_voices=2",
                          "--test_voices=2", "--text_factor=20"], env=env, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    argv = [sys.executable, os.path.join(REPO, "experiments", "toy_reproduction.py"), f"--corpus={corpus}",
            f"--out={out}", "--budget=miniature", "--seeds=0", "--finetune_seeds=0,1", f"--doc={doc}"]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    for name, variant in repro.VARIANTS.items():
        run = results["runs"][name]["0"]
        if variant.finetune:
            for r in (run, results["runs"][name]["0/ft1"]):   # fine-tuned with seeds 0 and 1
                for split in ("dev", "test"):
                    assert r[split]["utterances"] == 8 and np.isfinite(r[split]["wer"]) and r[split]["wer"] > 0
                assert len(r["finetune_curve"]) == repro.BUDGETS["miniature"].finetune_steps
            assert "probes" not in results["runs"][name]["0/ft1"]   # a pre-training counts once
        if variant.objective is not None:
            assert run["probes"]["pairs"] == 8 and 0 <= run["probes"]["speech_to_text_r1"] <= 1
            assert run["probes"]["stm_trained"] == (name == "slam_tlm_stm")
            assert run["pretrain_curve"][-1][0] == repro.BUDGETS["miniature"].pretrain_steps
    text = doc.read_text()
    for variant in repro.VARIANTS.values():
        assert f"| {variant.label} |" in text
    for image in ("loss_curves.png", "wer.png"):
        assert (doc.parent / "toy_reproduction" / image).stat().st_size > 1000

    # A re-run skips every finished step and rewrites the same section.
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and " ..." not in again.stdout
    assert doc.read_text().count(repro.BEGIN) == 1

    # --report_only renders what has finished: an unfinished fine-tuning run is left out, nothing runs; an
    # unfinished pre-training is an error.
    (out / "seed0" / "finetune_seed1" / "w2v_bert" / repro.DONE).unlink()
    partial = subprocess.run(argv + ["--report_only"], env=env, capture_output=True, text=True, timeout=600)
    assert partial.returncode == 0 and " ..." not in partial.stdout, partial.stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert "0/ft1" not in runs["w2v_bert"] and "0/ft1" in runs["random_init"]
    assert "--report_only" in doc.read_text()
    (out / "seed0" / "pretrain" / "bert" / repro.DONE).unlink()
    missing = subprocess.run(argv + ["--report_only"], env=env, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "seed0/pretrain/bert has not finished" in missing.stderr
