"""Speech translation: the label-smoothed loss, additive BLEU statistics, and a tiny slam-finetune + slam-eval run
on the bundled English->German set."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sacrebleu

from slam_jax.evaluation import bleu
from slam_jax.objectives import seq2seq


def test_shift_right():
    np.testing.assert_array_equal(np.asarray(seq2seq.shift_right(jnp.array([[5, 6, 1, 0]]))), [[0, 5, 6, 1]])


def test_label_smoothed_loss_matches_its_definition():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, size=(2, 5)))
    weights = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss, m = seq2seq.smoothed_cross_entropy(logits, targets, weights, label_smoothing=0.2)
    logp = np.asarray(jax.nn.log_softmax(logits))
    onehot = np.eye(7)[np.asarray(targets)]
    target_dist = 0.8 * onehot + 0.2 / 7
    per_token = -(target_dist * logp).sum(-1)
    w = np.asarray(weights, np.float64)
    np.testing.assert_allclose(float(loss), (per_token * w).sum() / w.sum(), rtol=1e-5)
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(m["nll"]), (nll * w).sum() / w.sum(), rtol=1e-5)
    assert float(m["tokens"]) == 8
    # label_smoothing=0 is plain cross-entropy
    plain, _ = seq2seq.smoothed_cross_entropy(logits, targets, weights, label_smoothing=0.0)
    np.testing.assert_allclose(float(plain), float(m["nll"]), rtol=1e-6)
    assert float(optax.smooth_labels(jnp.ones(1), 0.0)[0]) == 1.0


def test_bleu_statistics_add_up_to_sacrebleu_corpus_bleu():
    hyps = ["Der Hund bellt laut.", "Die Katze schläft auf dem Sofa", "Es regnet.", "Guten Morgen, Welt!"]
    refs = ["Der Hund bellte laut.", "Die Katze schläft auf der Decke.", "Es regnet heute.", "Guten Morgen Welt!"]
    stats = bleu.bleu_statistics(hyps[:2], refs[:2]) + bleu.bleu_statistics(hyps[2:], refs[2:])
    ours = bleu.bleu_from_statistics(stats)
    theirs = sacrebleu.corpus_bleu(hyps, [refs])
    assert ours["bleu"] == pytest.approx(theirs.score, abs=1e-9)
    assert ours["bleu_details"] == str(theirs)
    assert ours["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    with pytest.raises(ValueError, match="empty corpus"):
        bleu.bleu_from_statistics(bleu.bleu_statistics([], []))
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu.bleu_statistics(hyps[:2], refs[:1])


def _bindings():
    return ["TRAIN_STEPS = 4", "TrainConfig.eval_every = 4", "TrainConfig.log_every = 2",
            "TrainConfig.checkpoint_every = 4", "TrainConfig.eval_batches = 2", "StreamConfig.batch_size = 4",
            "TranslationConfig.beam_size = 2", "TranslationConfig.max_decode_length = 6",
            "OptimizerConfig.warmup_steps = 2",
            # one layer per stack keeps the compile short
            "ModelConfig.speech_layers = 1", "ModelConfig.shared_layers = 1", "TranslationConfig.decoder_layers = 1"]


def test_translate_task_trains_and_scores(tmp_path):
    """The task on the Trainer: two train steps lower the loss on a repeated batch; evaluate decodes by beam
    search and returns corpus BLEU over the scored sentences, writing the hypotheses."""
    from slam_jax import config
    from slam_jax.finetune import run as finetune_run
    from slam_jax.train import TrainConfig

    import tasks  # noqa: F401
    config.parse(["finetune/mini_st_de.gin"], _bindings() + ["TrainConfig.eval_batches = 1"])
    task = finetune_run.make_task(config.ModelConfig(), config.FinetuneConfig(), config.StreamConfig())
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    params = trainer.init_params()
    opt_state = trainer.init_opt_state(params)
    batch = trainer.device_batch(next(task.train_stream(0, 1)))
    losses = []
    for step in range(3):
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch, step)
        losses.append(float(metrics["st/xent_loss"]))
    assert losses[-1] < losses[0]
    scores = task.evaluate(trainer, params, "validation", 3, str(tmp_path))
    assert scores["sentences"] == 4 and 0 <= scores["bleu"] <= 100 and scores["references_with_unk"] == 0
    rows = open(tmp_path / "eval" / "validation_step3.tsv").read().splitlines()
    assert len(rows) == 5 and all(len(r.split("\t")) == 3 for r in rows)


@pytest.mark.slow
def test_translate_finetune_and_eval(tmp_path, capsys):
    """slam-finetune trains encoder + decoder on mini_st_de; slam-eval prints BLEU with the sacrebleu signature."""
    from slam_jax import config
    from slam_jax.evaluation import run as eval_run
    from slam_jax.finetune import run as finetune_run

    import tasks  # noqa: F401
    model_dir = str(tmp_path / "st")
    config.parse(["finetune/mini_st_de.gin"], _bindings())
    result = finetune_run.finetune(model_dir)
    assert result.step == 4 and np.isfinite(result.metrics["st/xent_loss"])
    records = [json.loads(line) for line in open(f"{model_dir}/metrics.jsonl")]
    evals = [r for r in records if "eval/bleu" in r]
    assert evals and evals[-1]["eval/sentences"] == 8 and evals[-1]["eval/references_with_unk"] == 0
    capsys.readouterr()
    assert eval_run.main([f"--model_dir={model_dir}", "--eval_batches=2"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["task"] == "translate" and scores["sentences"] == 8 and 0 <= scores["bleu"] <= 100
    assert "sacreBLEU nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    saved = json.load(open(f"{model_dir}/eval/validation_step4.json"))
    assert saved["bleu_signature"].startswith("nrefs:1") and saved["bleu"] == scores["bleu"]
    tsv = open(f"{model_dir}/eval/validation_step4.tsv").read().splitlines()
    assert tsv[0] == "id\treference\thypothesis" and len(tsv) == 9 and tsv[1].split("\t")[0].endswith(".flac")


def test_pod_and_glue_configs_resolve():
    """The CoVoST 2 pod runs use the paper's decoder (SLAM §4) on the 600M encoder; every GLUE config names its
    registered task."""
    import gin

    import tasks  # noqa: F401
    from slam_jax import config
    from slam_jax.data import glue
    from slam_jax.finetune import run as finetune_run

    for lang in ("de", "ca", "ar", "tr"):
        config.parse([f"finetune/covost2_en_{lang}.gin"], [])
        t = config.DECODE_CONFIGS["translate"]()
        assert (t.decoder_layers, t.decoder_dim, t.decoder_heads, t.decoder_ffn_dim) == (4, 384, 4, 1536)
        assert config.StreamConfig().mixture == f"covost2_en_{lang}" and config.ModelConfig().d_model == 1024
        assert config.FinetuneConfig().task == "translate"
    for key in glue.GLUE_TASKS:
        config.parse(["models/tiny.gin", f"finetune/glue_{key}.gin"], [])
        task = finetune_run.make_task(config.ModelConfig(), config.FinetuneConfig(), config.StreamConfig())
        assert task.name == "glue" and task.glue_key == key
    gin.clear_config()
