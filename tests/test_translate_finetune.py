"""Speech translation: the label-smoothed loss, additive BLEU statistics, and a tiny slam-finetune + slam-eval run
on the bundled English->German set."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sacrebleu
from flax import nnx

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


def test_translate_task_trains_and_scores(tmp_path, capsys):
    """The task on the Trainer: two train steps lower the loss on a repeated batch; evaluate decodes by beam
    search and returns corpus BLEU over the scored sentences, writing the hypotheses (and warns that one batch
    of 4 covers part of the 64-utterance split)."""
    from slam_jax import config
    from slam_jax.finetune import run as finetune_run
    from slam_jax.trainer import TrainConfig

    import tasks  # noqa: F401
    config.parse(["finetune/mini_st_de.gin"], _bindings() + ["TrainConfig.eval_batches = 1"])
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    params = trainer.init_params()
    opt_state = trainer.init_opt_state(params)
    batch = trainer.device_batch(next(task.train_stream(0, 1)))
    losses = []
    for step in range(3):
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch, step)
        losses.append(float(metrics["st/xent_loss"]))
    assert losses[-1] < losses[0]
    capsys.readouterr()
    scores = task.evaluate(trainer, params, "validation", 3, str(tmp_path))
    assert "warning: TrainConfig.eval_batches = 1 ended before process 0's shard" in capsys.readouterr().out
    assert scores["sentences"] == 4 and 0 <= scores["bleu"] <= 100 and scores["references_with_unk"] == 0
    rows = next((tmp_path / "eval").glob("*_validation_step3*.tsv")).read_text().splitlines()
    assert len(rows) == 5 and all(len(r.split("\t")) == 3 for r in rows)

    # The inference API translates the audio files to what evaluate wrote (other batches, other padding).
    from slam_jax import inference
    model = inference.Model(model_dir=str(tmp_path), step=3, task=task, predict_fn=trainer.predict_fn, params=params,
                            batch_size=4)
    paths, hyps = zip(*[(r.split("\t")[0], r.split("\t")[2]) for r in rows[1:]])
    assert sum(bool(h) for h in hyps) >= 2     # the model emits text: the comparison is not trivial
    assert model.translate(list(paths)) == list(hyps)
    assert len(model.translate(list(paths[:1]), beam_size=1, max_decode_length=3)[0].split()) <= 3
    with pytest.raises(inference.InferenceError, match="'translate' run: transcribe needs a run of 'asr_ctc'"):
        model.transcribe(list(paths[:1]))
    with pytest.raises(inference.InferenceError, match=r"\['decoder_layers'\] not decoding option"):
        model.translate(list(paths[:1]), decoder_layers=2)
    # ... and so does its export (both vocabularies, the resolved decoding length), without the run's stream config.
    from slam_jax import export
    export.export(model, str(tmp_path / "export"))
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "config.json", "params.safetensors", "source_vocabulary.model", "vocabulary.model"]
    assert inference.load(str(tmp_path / "export")).translate(list(paths)) == list(hyps)


def test_auxiliary_source_ctc(tmp_path):
    """TranslationConfig.ctc_weight: the loss is (1 - w) x translation + w x CTC of the head's logits against the
    English transcript (the source tokens decode to the TSV's sentence); training lowers both terms."""
    from slam_jax import config
    from slam_jax.data import covost, schema, sources
    from slam_jax.finetune import run as finetune_run
    from slam_jax.objectives import ctc
    from slam_jax.trainer import TrainConfig

    import tasks  # noqa: F401
    config.parse(["finetune/mini_st_de.gin"], _bindings())  # the config trains the auxiliary CTC
    assert finetune_run.DECODE_CONFIGS["translate"]().ctc_weight == 0.3 and config.StreamConfig().paired_source_tokens
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
    assert task.loss_names == ("st/xent_loss", "st/ctc_loss") and task.source_vocabulary.vocab_size == 512
    trainer = finetune_run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    params = trainer.init_params()
    stream = task.train_stream(0, 1)
    host = next(stream)
    sub = host["paired"]
    assert {k: (v.shape, v.dtype) for k, v in sub.items()} == schema.batch_spec(
        config.StreamConfig(), {"paired": sub["tokens"].shape[0]})["paired"]   # source_tokens included
    english = {r["audio_path"]: r["transcript"] for r in covost.list_covost(
        covost.tsv_path(tasks.covost.MINI_ST_DE, "en", "de", "train"), sources.MINI_CORPUS)}
    vocab = sources.default_vocabulary()
    for i, example in enumerate(stream.stream.ids["paired"]):
        ids = sub["source_tokens"][i][sub["source_token_segment_ids"][i] > 0].tolist()
        assert ids[-1] == vocab.eos_id and vocab.decode(ids[:-1]) == english[example]

    model = nnx.merge(trainer.graphdef, params)
    loss, metrics = task.losses(model, jax.tree.map(jnp.asarray, host), jnp.int32(0), jax.random.key(0), False)
    logits, ctc_logits, frame_valid = model(jnp.asarray(sub["features"]), jnp.asarray(sub["segment_ids"]),
                                            seq2seq.shift_right(jnp.asarray(sub["tokens"])))
    valid = (sub["source_token_segment_ids"] > 0) & (sub["source_tokens"] != vocab.eos_id)
    expected_ctc, _ = ctc.ctc_loss(ctc_logits, frame_valid, jnp.asarray(sub["source_tokens"]), jnp.asarray(valid))
    assert ctc_logits.shape == (4, 64, 512)
    np.testing.assert_allclose(float(metrics["st/ctc_loss"]), float(expected_ctc), rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.7 * float(metrics["st/xent_loss"]) + 0.3 * float(expected_ctc),
                               rtol=1e-5)

    opt_state = trainer.init_opt_state(params)
    batch = trainer.device_batch(host)
    history = []
    for step in range(3):
        params, opt_state, m = trainer.train_step(params, opt_state, batch, step)
        history.append((float(m["st/xent_loss"]), float(m["st/ctc_loss"])))
    assert history[-1][0] < history[0][0] and history[-1][1] < history[0][1]


def test_auxiliary_source_ctc_needs_source_transcripts():
    """ctc_weight without StreamConfig.paired_source_tokens is a config error; a task without source transcripts
    fails on its first pair, naming it; a transcript CTC cannot align loses only its labels, counted."""
    from slam_jax import config
    from slam_jax.data import converter, schema
    from slam_jax.finetune import asr_ctc
    from slam_jax.finetune import run as finetune_run

    import tasks  # noqa: F401
    config.parse(["finetune/mini_st_de.gin"], _bindings() + [
        "TranslationConfig.ctc_weight = 0.3", "StreamConfig.paired_source_tokens = 0"])
    with pytest.raises(ValueError, match="set StreamConfig.paired_source_tokens"):
        finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())

    config.parse(["finetune/mini_st_de.gin"], _bindings() + [
        "TranslationConfig.ctc_weight = 0.3", "StreamConfig.paired_source_tokens = 24",
        "StreamConfig.mixture = 'mini_paired'"])  # ASR pairs: English targets, no source transcript
    task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
    with pytest.raises(schema.DataError, match=r"\.flac: no source transcript: TranslationConfig.ctc_weight"):
        next(task.train_stream(0, 1))

    cfg = schema.StreamConfig(mixture="mini_st_de", batch_size=4, paired_frames=256, paired_tokens=40,
                                 paired_source_tokens=24)
    real = converter.make_stream(cfg)
    stream = asr_ctc.CtcStream(real, eos_id=1, unk_id=2, labels="source_tokens", whole_row=False)
    original = next(real)["paired"]

    class OneBatch:  # replays one real batch, its first source transcript made longer than CTC can align
        kind_batch_sizes, ids = real.kind_batch_sizes, real.ids

        def __next__(self):
            sub = {k: v.copy() for k, v in original.items()}
            sub["source_tokens"][0] = 7
            sub["source_token_segment_ids"][0] = 1
            sub["segment_ids"][0, 40:] = 0  # 40 frames -> 10 encoder frames for 24 labels
            return {"paired": sub}

    stream.stream = OneBatch()
    sub = next(stream)["paired"]
    assert not sub["source_token_segment_ids"][0].any() and sub["segment_ids"][0, :40].all()
    np.testing.assert_array_equal(sub["tokens"], original["tokens"])
    np.testing.assert_array_equal(sub["source_tokens"][1:], original["source_tokens"][1:])
    assert stream.skipped == {"audio too short for CTC": 1}
    assert stream.messages[0].endswith("; source_tokens skipped")


@pytest.mark.slow
def test_translate_finetune_and_eval(tmp_path, capsys):
    """slam-finetune trains encoder + decoder on mini_st_de; slam-eval prints BLEU with the sacrebleu signature."""
    from slam_jax import config
    from slam_jax.cli import eval as eval_cli
    from slam_jax.finetune import run as finetune_run

    import tasks  # noqa: F401
    model_dir = str(tmp_path / "st")
    config.parse(["finetune/mini_st_de.gin"], _bindings())
    result = finetune_run.finetune(model_dir)
    assert result.step == 4 and np.isfinite(result.metrics["st/xent_loss"]) and np.isfinite(
        result.metrics["st/ctc_loss"])  # the config trains the auxiliary source CTC
    records = [json.loads(line) for line in open(f"{model_dir}/metrics.jsonl")]
    evals = [r for r in records if "eval/bleu" in r]
    assert evals and evals[-1]["eval/sentences"] == 8 and evals[-1]["eval/references_with_unk"] == 0
    capsys.readouterr()
    assert eval_cli.main([f"--model_dir={model_dir}", "--eval_batches=2"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["task"] == "translate" and scores["sentences"] == 8 and 0 <= scores["bleu"] <= 100
    assert "sacreBLEU nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in out
    assert scores["split"] == "validation_new_voices"  # the config's evaluation split
    saved = json.loads(next(Path(model_dir, "eval").glob("*_validation_new_voices_step4*.json")).read_text())
    assert saved["bleu_signature"].startswith("nrefs:1") and saved["bleu"] == scores["bleu"]
    tsv = next(Path(model_dir, "eval").glob("*_validation_new_voices_step4*.tsv")).read_text().splitlines()
    assert tsv[0] == "id\treference\thypothesis" and len(tsv) == 9 and tsv[1].split("\t")[0].endswith(".flac")

    # slam-translate on the run folder writes slam-eval's hypotheses, one JSON line per file, in input order.
    from train_utils import in_process
    paths, hyps = zip(*[(r.split("\t")[0], r.split("\t")[2]) for r in tsv[1:]])
    out = Path(model_dir, "translated.jsonl")
    result = in_process("slam_jax.cli.translate", [f"--model_dir={model_dir}", *paths, f"--output={out}"])
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"path": p, "text": h} for p, h in zip(paths, hyps)]


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
        t = finetune_run.DECODE_CONFIGS["translate"]()
        assert (t.decoder_layers, t.decoder_dim, t.decoder_heads, t.decoder_ffn_dim) == (4, 384, 4, 1536)
        assert config.StreamConfig().mixture == f"covost2_en_{lang}" and config.ModelConfig().d_model == 1024
        assert finetune_run.FinetuneConfig().task == "translate"
    for key in glue.GLUE_TASKS:
        config.parse(["models/tiny.gin", f"finetune/glue_{key}.gin"], [])
        task = finetune_run.make_task(config.ModelConfig(), finetune_run.FinetuneConfig(), config.StreamConfig())
        assert task.name == "glue" and task.glue_key == key
    gin.clear_config()
