"""GLUE: metrics against scikit-learn / scipy, the seqio tasks on TFDS mock data, the missing-data error, and a
tiny fine-tune + `slam-eval` on a TFDS-format GLUE set written by the test."""
import json
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from scipy import stats
from sklearn import metrics as skm

import tasks  # noqa: F401  (registers glue_*)
from slam_jax.data import glue, schema, sources
from slam_jax.evaluation import glue_metrics

RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 2, 200)
PREDS = np.where(RNG.random(200) < 0.7, LABELS, 1 - LABELS)
SCORES = RNG.uniform(0, 5, 200)
SCORE_PREDS = SCORES + RNG.normal(0, 1.5, 200)


@pytest.mark.parametrize("task,expected", [
    ("cola", {"mcc": skm.matthews_corrcoef(LABELS, PREDS)}),
    ("sst2", {"accuracy": skm.accuracy_score(LABELS, PREDS)}),
    ("mrpc", {"f1": skm.f1_score(LABELS, PREDS), "accuracy": skm.accuracy_score(LABELS, PREDS)}),
    ("qqp", {"f1": skm.f1_score(LABELS, PREDS), "accuracy": skm.accuracy_score(LABELS, PREDS)}),
    ("rte", {"accuracy": skm.accuracy_score(LABELS, PREDS)}),
])
def test_classification_metrics_match_sklearn(task, expected):
    scores = glue_metrics.glue_scores(task, PREDS, LABELS)
    assert set(scores) == set(expected) | {"score"}
    for name, value in expected.items():
        np.testing.assert_allclose(scores[name], 100 * value, rtol=1e-12)
    np.testing.assert_allclose(scores["score"], 100 * np.mean(list(expected.values())))


def test_mnli_three_classes_and_stsb_correlations_match_scipy():
    labels3 = RNG.integers(0, 3, 100)
    preds3 = np.where(RNG.random(100) < 0.5, labels3, RNG.integers(0, 3, 100))
    np.testing.assert_allclose(glue_metrics.glue_scores("mnli", preds3, labels3)["accuracy"],
                               100 * np.mean(preds3 == labels3))
    scores = glue_metrics.glue_scores("stsb", SCORE_PREDS, SCORES)
    np.testing.assert_allclose(scores["pearson"], 100 * stats.pearsonr(SCORE_PREDS, SCORES)[0], rtol=1e-10)
    np.testing.assert_allclose(scores["spearman"], 100 * stats.spearmanr(SCORE_PREDS, SCORES)[0], rtol=1e-10)


def test_metric_errors_and_degenerate_cases():
    with pytest.raises(ValueError, match="unknown GLUE task 'boolq'"):
        glue_metrics.glue_scores("boolq", [1], [1])
    with pytest.raises(ValueError, match="sst2: predictions .* must be equal"):
        glue_metrics.glue_scores("sst2", [1, 0], [1])
    with pytest.raises(ValueError, match="no examples"):
        glue_metrics.glue_scores("sst2", [], [])
    with pytest.raises(ValueError, match="stsb: predictions contain NaN"):
        glue_metrics.glue_scores("stsb", [1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="cola: predictions must be integer class ids"):
        glue_metrics.glue_scores("cola", [0.5, 1.0], [0, 1])
    # A collapsed regressor (constant output): correlation is undefined; reported as 0, never NaN.
    assert glue_metrics.glue_scores("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 4.0]) == \
        {"pearson": 0.0, "spearman": 0.0, "score": 0.0}


def test_every_glue_task_is_registered_with_its_metric():
    assert set(glue.GLUE_TASKS) == set(glue_metrics.TASK_METRICS)
    for key in glue.GLUE_TASKS:
        for name in (f"glue_{key}", f"glue_{key}_libri"):
            assert name in seqio.TaskRegistry.names() and glue.glue_task_of(name) == key
    assert "validation_mismatched" in seqio.get_mixture_or_task("glue_mnli").splits


def test_pair_tasks_on_mock_data():
    """RTE on TFDS mock data: `s1 EOS s2 EOS` ids of the (normalized) sentences, the label, an id."""
    vocab = sources.default_vocabulary()
    with tfds.testing.mock_data(num_examples=4):
        raw = seqio.get_mixture_or_task("glue_rte_libri").source.get_dataset("validation", shuffle=False)
        cfg = schema.StreamConfig(mixture="glue_rte_libri", batch_size=4, text_tokens=256, split="validation")
        batch = next(glue.make_stream(cfg, finite=True))["text"]
        examples = list(raw.as_numpy_iterator())
    for row, ex in zip(range(4), examples):
        seg = batch["segment_ids"][row]
        tokens = batch["tokens"][row][seg > 0].tolist()
        norm = [glue.librispeech_style(tf.constant(ex[k])).numpy().decode() for k in ("sentence1", "sentence2")]
        expected = vocab.encode(norm[0]) + [vocab.eos_id] + vocab.encode(norm[1]) + [vocab.eos_id]
        assert tokens == expected
        assert batch["labels"][row] == ex["label"]
        np.testing.assert_array_equal(batch["positions"][row][seg > 0], np.arange(len(tokens)))


def test_librispeech_style_normalization():
    out = glue.librispeech_style(tf.constant(["It's a  dog-friendly café, isn't it?"])).numpy()[0].decode()
    assert out == "IT'S A DOG FRIENDLY CAFÉ ISN'T IT"


def test_unprepared_tfds_data_is_a_clear_error(tmp_path):
    glue.add_glue_task("test_glue_cola_missing", "cola", vocabulary=sources.default_vocabulary(),
                       tfds_data_dir=str(tmp_path))
    cfg = schema.StreamConfig(mixture="test_glue_cola_missing", batch_size=2, text_tokens=16)
    with pytest.raises(FileNotFoundError, match=r"glue/cola:2.0.0.*not prepared in .*tfds build glue/cola"):
        glue.make_stream(cfg)


SENTENCES = ["THE DOG SLEPT BY THE FIRE", "A CAT SAT ON THE WALL", "THE RIVER WAS COLD", "MY SISTER SANG",
             "THE BAKER SOLD BREAD", "RAIN FELL ON THE ROOF", "THE OLD MAN WALKED HOME", "A BIRD SANG AT DAWN"]


def write_fake_sst2(data_dir: str) -> None:
    """A GLUE SST-2 dataset in TFDS format (the real builder's features, examples made up here)."""
    features = tfds.builder("glue/sst2").info.features

    def split(n, offset):
        sentences = [SENTENCES[(i + offset) % len(SENTENCES)] for i in range(n)]
        return tf.data.Dataset.from_tensor_slices({"sentence": sentences, "label": [int("THE" in s) for s in
                                                                                    sentences],
                                                   "idx": list(range(n))})

    tfds.dataset_builders.store_as_tfds_dataset(name="glue", version=glue.TFDS_VERSION, features=features,
                                                split_datasets={"train": split(32, 0), "validation": split(12, 3)},
                                                config="sst2", data_dir=data_dir)


def test_glue_finetune_and_eval(tmp_path, capsys):
    """slam-finetune trains the tiny encoder on a TFDS-format SST-2 set; slam-eval prints its accuracy."""
    from slam_jax import config
    from slam_jax.cli import eval as eval_cli
    from slam_jax.finetune import run as finetune_run

    data_dir = str(tmp_path / "tfds")
    write_fake_sst2(data_dir)
    glue.add_glue_task("test_glue_sst2", "sst2", vocabulary=sources.default_vocabulary(), tfds_data_dir=data_dir)
    model_dir = str(tmp_path / "run")
    config.parse(["models/tiny.gin", "finetune/glue_sst2.gin"], [
        "StreamConfig.mixture = 'test_glue_sst2'", "StreamConfig.batch_size = 4", "StreamConfig.text_tokens = 16",
        "TRAIN_STEPS = 6", "TrainConfig.eval_every = 6", "TrainConfig.log_every = 3",
        "TrainConfig.checkpoint_every = 6", "OptimizerConfig.warmup_steps = 2", "ModelConfig.scan_layers = False",
        # one narrow layer per stack keeps the compile short (what is tested is the task's train/eval path)
        "ModelConfig.speech_layers = 1", "ModelConfig.shared_layers = 1", "ModelConfig.d_model = 32",
        "ModelConfig.ffn_dim = 64"])
    result = finetune_run.finetune(model_dir)
    assert result.step == 6
    records = [json.loads(line) for line in open(f"{model_dir}/metrics.jsonl")]
    evals = [r for r in records if "eval/accuracy" in r]
    assert evals and evals[-1]["eval/examples"] == 12
    capsys.readouterr()
    assert eval_cli.main([f"--model_dir={model_dir}"]) == 0
    out = capsys.readouterr().out
    scores = json.loads(out.strip().splitlines()[-1])
    assert scores["task"] == "glue" and scores["examples"] == 12 and 0 <= scores["accuracy"] <= 100
    assert "GLUE sst2 accuracy=" in out
    tsv = next(Path(model_dir, "eval").glob("*_validation_step6.tsv")).read_text().splitlines()
    assert tsv[0] == "id\tlabel\tprediction" and len(tsv) == 13


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_ignores_padding(pooling):
    """The pooled prediction of a row does not depend on what sits in its padding."""
    import jax.numpy as jnp
    from flax import nnx

    from helpers import TINY
    from slam_jax.finetune.classify import ClassifierConfig, TextClassifier

    with nnx.use_eager_sharding(False):
        model = TextClassifier(TINY, 3, ClassifierConfig(pooling=pooling), rngs=nnx.Rngs(params=0))
    tokens = jnp.asarray(RNG.integers(3, TINY.vocab_size, size=(2, 10)), jnp.int32)
    seg = jnp.asarray([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)
    pos = jnp.asarray([list(range(10)), list(range(6)) + [0] * 4], jnp.int32)
    out = model(tokens, seg, pos)
    assert out.shape == (2, 3) and np.all(np.isfinite(np.asarray(out)))
    changed = model(tokens.at[1, 6:].set(7), seg, pos)
    np.testing.assert_allclose(np.asarray(changed), np.asarray(out), atol=1e-5)
    assert np.abs(np.asarray(model(tokens.at[1, 2].set(7), seg, pos) - out)[1]).max() > 1e-6
