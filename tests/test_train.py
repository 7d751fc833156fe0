"""slam-train end to end: outputs in model_dir, SIGTERM + resume, bad configurations."""
import glob
import os
import signal

import numpy as np
import pytest

from train_utils import TEXT_ONLY, read_metrics, slam_train

ACTIVE = ["speech/contrastive_loss", "speech/mlm_loss", "text/mlm_loss", "paired/tlm_text_loss",
          "paired/tlm_speech_loss", "paired/stm_loss"]


def test_end_to_end_writes_checkpoint_config_tensorboard_and_metrics(pretrained_run):
    d, out = pretrained_run   # 8 steps, checkpoint_every=4, eval_every=8 (conftest.py)
    assert (d / "config.gin").read_text().count("ModelConfig.d_model = 32") == 1
    assert sorted(os.listdir(d / "checkpoints")) == ["4", "8"]
    assert glob.glob(str(d / "tensorboard" / "events.out.tfevents.*"))
    records = read_metrics(d)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for name in ACTIVE + ["learning_rate", "grad_norm", "steps_per_sec", "examples_per_sec",
                          "speech/code_perplexity", "speech/prob_perplexity", "speech/sampled_is_argmax",
                          "speech/max_code_prob", "speech/top_rank", "speech/contrastive_chance",
                          "gumbel_temperature"]:
        assert all(np.isfinite(r[name]) for r in train), name
    evals = [r for r in records if "eval/loss" in r]
    assert evals and "eval/text/mlm_accuracy" in evals[0]
    assert "step 8/8" in out and "ETA" in out
    # "compiling..." comes first, and the first rate (hence the ETA) counts the step, not the compilation.
    lines = out.splitlines()
    compiling = next(i for i, x in enumerate(lines) if x.startswith("compiling the train step..."))
    compiled = next(i for i, x in enumerate(lines) if x.startswith("compiled the train step in"))
    assert compiling < compiled
    # The eval step compiles when the first evaluation comes, not before step 1.
    eval_compiled = [i for i, x in enumerate(lines) if x.startswith("compiled the eval step in")]
    first_eval = next(i for i, x in enumerate(lines) if x.startswith("eval "))
    first_step = next(i for i, x in enumerate(lines) if x.startswith("step 1/"))
    assert len(eval_compiled) == 1 and first_step < eval_compiled[0] < first_eval, lines
    compile_seconds = float(lines[compiled].split(" in ")[1].split(" s")[0])
    assert train[0]["steps_per_sec"] > 1.0 / compile_seconds, (train[0]["steps_per_sec"], compile_seconds)


def test_a_deliberately_collapsing_run_prints_the_health_warning(tmp_path):
    # A negative diversity weight rewards a one-code quantizer: the codebook collapses within ~40 steps. w2v-BERT's
    # speech objectives alone: the health metrics watch the speech side (a third of the five objectives' step time).
    w2v_bert = ["--gin_file=objectives/w2v_bert.gin", "--gin.ObjectiveConfig.tlm=False",
                "--gin.ObjectiveConfig.stm=False", "--gin.StreamConfig.mixture='mini_speech_mix'"]
    out = slam_train(tmp_path / "run", *w2v_bert, "--gin.TRAIN_STEPS=120", "--gin.TrainConfig.log_every=10",
                     "--gin.TrainConfig.checkpoint_every=1000", "--gin.ObjectiveConfig.diversity_weight=-100.0").stdout
    warnings = [line for line in out.splitlines() if line.startswith("WARNING (step")]
    assert any("the codebook has collapsed" in line for line in warnings), out[-3000:]
    assert all(not line.startswith("WARNING (step 110)") for line in warnings)  # one line per warning, not per log
    logged = {r["step"]: r["health/warnings"] for r in read_metrics(tmp_path / "run") if "health/warnings" in r}
    assert logged[50] == 0 and logged[120] >= 1  # quiet before HealthThresholds.after_step


def test_sigterm_then_resume_matches_straight_run(tmp_path, pretrained_run):
    straight, steps = pretrained_run[0], 8   # checkpoints and an evaluation on the way change no training value
    resumed = tmp_path / "resumed"
    proc = slam_train(resumed, f"--gin.TRAIN_STEPS={steps}", "--gin.TrainConfig.checkpoint_every=100", popen=True)
    # Interrupt once the train step is compiled: the handler is installed by then and the 8 steps still to run
    # leave the signal time to land (polling metrics.jsonl instead raced the last steps on a fast machine).
    head = []
    for line in proc.stdout:
        head.append(line)
        if line.startswith("compiled the train step"):
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(head) + proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    stopped = max(r["step"] for r in read_metrics(resumed))
    assert "received signal" in out and stopped < steps, out
    slam_train(resumed, f"--gin.TRAIN_STEPS={steps}", "--gin.TrainConfig.checkpoint_every=100")

    a = {r["step"]: r for r in read_metrics(straight) if "loss" in r}
    b = {r["step"]: r for r in read_metrics(resumed) if "loss" in r}
    assert sorted(b) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        for name in ACTIVE + ["loss", "grad_norm"]:
            assert a[step][name] == pytest.approx(b[step][name], rel=1e-6, abs=1e-6), (step, name)
    from slam_jax.checkpointing import _reader
    import orbax.checkpoint as ocp
    import jax
    pa = _reader(str(straight)).restore(steps, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    pb = _reader(str(resumed)).restore(steps, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    for x, y in zip(jax.tree.leaves(pa["params"]), jax.tree.leaves(pb["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("args,message", [
    (["--gin.ModelConfig.d_modle=3"], "d_modle"),
    (["--gin.MeshConfig.data=3"], "does not divide the"),
    (["--gin.MeshConfig.data=4"], "not divisible by the batch mesh axes"),
])
def test_bad_configuration_fails_fast_with_clear_message(tmp_path, args, message):
    devices = 4 if "data=4" in args[0] else 2
    if "data=4" in args[0]:
        args = args + ["--gin.StreamConfig.batch_size=6"]
    result = slam_train(tmp_path / "bad", *args, devices=devices, check=False, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_mismatched_checkpoint_names_the_parameters(tmp_path):
    d = tmp_path / "run"
    slam_train(d, *TEXT_ONLY, "--gin.TRAIN_STEPS=1")
    result = slam_train(d, *TEXT_ONLY, "--gin.TRAIN_STEPS=2", "--gin.ModelConfig.ffn_dim=48", check=False)
    assert result.returncode == 1
    assert "does not match the model configuration" in result.stderr
    assert "ffn1/up/kernel" in result.stderr and "shape differs" in result.stderr


def test_non_finite_loss_stops_with_step_objective_and_last_checkpoint(tmp_path):
    result = slam_train(tmp_path / "nan", *TEXT_ONLY, "--gin.TRAIN_STEPS=6",
                        "--gin.OptimizerConfig.peak_learning_rate=1e30",
                        "--gin.OptimizerConfig.clip_norm=None", "--gin.TrainConfig.checkpoint_every=1",
                        check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "non-finite loss at step" in result.stderr and "Last good checkpoint: step" in result.stderr
