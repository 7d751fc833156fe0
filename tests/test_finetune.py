"""slam-finetune / slam-eval end to end on the mini corpus, the fine-tuning optimizer, and bad fine-tuning input."""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from slam_jax import checkpointing, masking
from slam_jax.finetune import base
from slam_jax.model import ModelConfig
from train_utils import TEXT_ONLY, last_json, read_metrics, slam_eval, slam_finetune, slam_train


def _checkpoint_params(model_dir) -> dict[str, np.ndarray]:
    manager = checkpointing._reader(str(model_dir))
    tree = manager.restore(manager.latest_step(), args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree["params"])}


def test_pretrain_then_finetune_restores_every_encoder_parameter_evaluates_and_probes(tmp_path, pretrained_run):
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    shutil.copytree(pretrained_run[0], pre)   # its 8 steps; the probes below write into the run folder
    # Head-only fine-tuning (encoder_lr_scale=0): the encoder must leave the run exactly as it was restored.
    out = slam_finetune(ft, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.eval_every=2",
                        f"--gin.FinetuneConfig.init_from='{pre}'", "--gin.FinetuneConfig.encoder_lr_scale=0.0").stdout
    table = out[out.index("warm-started from"):].splitlines()
    assert " 0 fresh" not in table[0] and any(row.split()[0] == "ctc/kernel" and row.split()[-1] != "0" for row in table[2:])
    before, after = _checkpoint_params(pre), _checkpoint_params(ft)
    encoder = [k for k in after if k.startswith("['encoder']")]
    assert len(encoder) > 50 and set(encoder) <= set(before)
    for name in encoder:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)

    evals = [r for r in read_metrics(ft) if "eval/wer" in r]
    assert [r["step"] for r in evals] == [2] and evals[0]["eval/utterances"] == 64
    greedy = next((ft / "eval").glob("*_validation_step2.tsv"))
    rows = greedy.read_text().splitlines()
    assert rows[0] == "id\treference\thypothesis" and len(rows) == 65
    assert rows[1].split("\t")[1] == "THE SAILOR TIED A STRONG KNOT"

    scores = last_json(slam_eval(ft, "--gin.CtcDecodeConfig.beam_size=4").stdout)
    assert scores["task"] == "asr_ctc" and scores["step"] == 2 and scores["utterances"] == 64
    assert 0.0 <= scores["cer"] and np.isfinite(scores["wer"])
    beam = next((ft / "eval").glob("*_validation_step2_beam_size4.json"))
    assert json.loads(beam.read_text())["decoding"]["beam_size"] == 4
    assert greedy.with_suffix(".json").exists()  # another decoding never overwrites a result file
    # Rows shorter than the split's utterances: slam-eval fails naming the binding, scores nothing, writes nothing.
    before = sorted(p.name for p in (ft / "eval").iterdir())
    short = slam_eval(ft, "--gin.StreamConfig.paired_frames=64", check=False)
    assert short.returncode == 1 and "were not scored: 64 longer than the rows" in short.stderr, short.stderr
    assert "--gin.StreamConfig.paired_frames=" in short.stderr and "Traceback" not in short.stderr
    assert sorted(p.name for p in (ft / "eval").iterdir()) == before

    probes = last_json(slam_eval(pre, "--probes", "--mixture=mini_paired").stdout)
    assert probes["pairs"] == 64 and probes["stm_trained"] is True
    for key in ("stm_accuracy", "speech_to_text_r1", "speech_to_text_r5", "text_to_speech_r1", "text_to_speech_r5"):
        assert 0.0 <= probes[key] <= 1.0, key
    assert (pre / "eval" / "probes_mini_paired_validation_step8.json").exists()

    # Frozen-feature layer probes of the pre-trained encoder and of a fresh one of the same configuration.
    for extra in ((), ("--random_init",)):
        layered = last_json(slam_eval(pre, "--layer_probes", "--mixture=mini_paired", "--train_seconds=20",
                                      "--probe_steps=3", *extra).stdout)
        assert layered["random_init"] == bool(extra) and layered["step"] == (0 if extra else 8)
        assert list(layered["layers"]) == ["logmel", "z", "speech_1", "shared_1"]
        assert layered["eval_utterances"] == 64 and layered["train_seconds"] >= 20
        full = json.loads(open(layered["file"]).read())
        for name, result in layered["layers"].items():
            assert 0 <= result["cer"] and result["effective_rank"] >= 1 and 0 <= result["speaker_accuracy"] <= 1
            assert "utterance_cer" not in result and len(full["layers"][name]["utterance_cer"]) == 64
    assert (pre / "eval" / "layer_probes_mini_paired_validation_step0_random_init.json").exists()

    wrong = slam_eval(pre, check=False)
    assert wrong.returncode == 2 and "evaluate it with --probes" in wrong.stderr


def test_finetune_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    slam_finetune(straight, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.checkpoint_every=100")
    slam_finetune(resumed, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.checkpoint_every=100")
    out = slam_finetune(resumed, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.checkpoint_every=100").stdout
    assert f"resumed from {resumed} at step 2" in out
    a = {r["step"]: r for r in read_metrics(straight)}
    b = {r["step"]: r for r in read_metrics(resumed)}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in range(1, 5):
        for name in ("loss", "asr/ctc_loss", "grad_norm"):
            assert a[step][name] == pytest.approx(b[step][name], rel=1e-6, abs=1e-6), (step, name)


def test_mismatched_or_missing_init_checkpoint_is_a_clear_error(tmp_path):
    pre = tmp_path / "pre"
    slam_train(pre, *TEXT_ONLY, "--gin.TRAIN_STEPS=1", "--gin.TrainConfig.checkpoint_every=1")
    bigger = slam_finetune(tmp_path / "ft", f"--gin.FinetuneConfig.init_from='{pre}'", "--gin.ModelConfig.d_model=48",
                           check=False)
    assert bigger.returncode == 1
    assert "parameter array(s) of this model are not in the checkpoint with the same shape" in bigger.stderr
    assert "encoder/" in bigger.stderr
    missing = slam_finetune(tmp_path / "ft2", f"--gin.FinetuneConfig.init_from='{tmp_path / 'nothing'}'",
                            check=False)
    assert missing.returncode == 1 and "no checkpoint found" in missing.stderr
    # FinetuneConfig.fresh_prefixes: the shared stack keeps its fresh initialization, the rest is restored.
    fresh = tmp_path / "fresh"
    out = slam_finetune(fresh, "--gin.TRAIN_STEPS=1", "--gin.OptimizerConfig.peak_learning_rate=0.0",
                        f"--gin.FinetuneConfig.init_from='{pre}'",
                        "--gin.FinetuneConfig.fresh_prefixes=('encoder/shared_stack',)").stdout
    assert "encoder/shared_stack" in out[out.index("warm-started from"):]
    before, after = _checkpoint_params(pre), _checkpoint_params(fresh)
    shared = [k for k in after if k.startswith("['encoder']['shared_stack']")]
    speech = [k for k in after if k.startswith("['encoder']['speech_stack']")]
    assert shared and speech
    assert all(np.array_equal(after[k], before[k]) for k in speech)
    assert not any(np.array_equal(after[k], before[k]) for k in shared if "kernel" in k)
    typo = slam_finetune(tmp_path / "typo", f"--gin.FinetuneConfig.init_from='{pre}'",
                         "--gin.FinetuneConfig.fresh_prefixes=('encoder/shared_stacks',)", check=False)
    assert typo.returncode == 1 and "encoder/shared_stacks" in typo.stderr and "match no parameter" in typo.stderr


# ------------------------------------------------------------------------------------------------ optimizer
TINY = ModelConfig(d_model=16, num_heads=2, ffn_dim=32, speech_layers=2, shared_layers=3, vocab_size=20)


def _multiplier(path, shape, step, **cfg):
    groups = base.FinetuneConfig(**cfg).param_groups()
    return np.asarray(groups.multiplier(path, shape, jnp.asarray(step), TINY.speech_layers, TINY.shared_layers))


def test_learning_rate_multipliers_per_parameter_group():
    head = "ctc/kernel/value"
    speech = "encoder/speech_stack/blocks/ffn1/up/kernel/value"
    shared = "encoder/shared_stack/blocks/ffn1/up/kernel/value"
    front = "encoder/subsampling/conv1/kernel/value"
    assert _multiplier(head, (16, 20), 0, encoder_lr_scale=0.0) == 1.0
    assert np.all(_multiplier(shared, (3, 16, 32), 0, encoder_lr_scale=0.0) == 0.0)
    # Freezing: the speech side gets nothing for 10 steps, then trains; the shared stack always trains.
    assert np.all(_multiplier(speech, (2, 16, 32), 9, freeze_speech_steps=10) == 0.0)
    assert np.all(_multiplier(front, (3, 3), 9, freeze_speech_steps=10) == 0.0)
    assert np.all(_multiplier(speech, (2, 16, 32), 10, freeze_speech_steps=10) == 1.0)
    assert np.all(_multiplier(shared, (3, 16, 32), 0, freeze_speech_steps=10) == 1.0)
    # Layer-wise decay: 5 layers; the top gets 0.5, each lower layer one more factor, the front-end 0.5^6.
    d = 0.5
    np.testing.assert_allclose(_multiplier(shared, (3, 16, 32), 0, layer_lr_decay=d).ravel(), [d ** 3, d ** 2, d])
    np.testing.assert_allclose(_multiplier(speech, (2, 16, 32), 0, layer_lr_decay=d).ravel(), [d ** 5, d ** 4])
    assert _multiplier(speech, (2, 16, 32), 0, layer_lr_decay=d).shape == (2, 1, 1)
    np.testing.assert_allclose(_multiplier(front, (3, 3), 0, layer_lr_decay=d), d ** 6)


def test_head_only_optimizer_leaves_the_encoder_untouched():
    cfg = base.FinetuneConfig(encoder_lr_scale=0.0)
    from slam_jax import optim
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(warmup_steps=1, peak_learning_rate=0.1), cfg.param_groups(),
                                 speech_layers=TINY.speech_layers, shared_layers=TINY.shared_layers)
    params = {"encoder": {"cls": jnp.ones(4)}, "ctc": {"kernel": jnp.ones((4, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["encoder"]["cls"], params["encoder"]["cls"])
    assert np.all(new["ctc"]["kernel"] < 1.0)


def test_head_only_phase_keeps_every_encoder_parameter_bit_equal_then_trains_them():
    from flax import nnx
    from slam_jax import optim
    from slam_jax.model import SlamModel
    cfg = base.FinetuneConfig(freeze_encoder_steps=3, layer_lr_decay=0.8)
    tx, _ = optim.make_optimizer(optim.OptimizerConfig(warmup_steps=1, peak_learning_rate=1e-2), cfg.param_groups(),
                                 speech_layers=TINY.speech_layers, shared_layers=TINY.shared_layers)
    model_cfg = dataclasses.replace(TINY, group_norm_groups=4, codebook_size=8, code_dim=8, subsampling_channels=4)
    with nnx.use_eager_sharding(False):
        params = nnx.state(SlamModel(model_cfg, rngs=nnx.Rngs(params=0)), nnx.Param)
    params = jax.tree.map(lambda x: x[...] if hasattr(x, "shape") else x, params)
    start, state = params, tx.init(params)
    update = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*tx.update(g, s, p)))
    for step in range(4):
        grads = jax.tree.map(lambda x: jnp.full(x.shape, 0.1 * (step + 1), x.dtype), params)
        params, state = update(params, state, grads)
        flat_start = jax.tree_util.tree_leaves_with_path(start["encoder"])
        flat_now = jax.tree_util.tree_leaves(params["encoder"])
        changed = [jax.tree_util.keystr(p) for (p, a), b in zip(flat_start, flat_now) if not np.array_equal(a, b)]
        if step < 3:
            assert changed == [], f"step {step}: encoder parameters moved in the head-only phase: {changed[:3]}"
            assert not np.array_equal(params["stm"]["kernel"], start["stm"]["kernel"])
        else:
            assert len(changed) == len(flat_start)  # after the phase every encoder parameter trains


def test_tri_stage_schedule():
    from slam_jax import optim
    cfg = optim.OptimizerConfig(peak_learning_rate=2.0, warmup_steps=10, schedule="tri_stage", hold_steps=40,
                                decay_steps=50, init_lr_scale=0.01, final_lr_scale=0.05)
    _, schedule = optim.make_optimizer(cfg)
    got = [float(schedule(s)) for s in (0, 5, 10, 49, 75, 100, 500)]
    np.testing.assert_allclose(got, [0.02, 1.01, 2.0, 2.0, 2.0 * 0.05 ** 0.5, 0.1, 0.1], rtol=1e-5)
    with pytest.raises(ValueError, match="decay_steps"):
        optim.OptimizerConfig(schedule="tri_stage", decay_steps=0)


def test_frequency_mask_zeroes_whole_bands_only():
    x = jnp.ones((4, 10, 80))
    y = np.asarray(masking.frequency_mask(jax.random.key(0), x, num_masks=2, max_width=10))
    zero_bins = (y == 0).all(1)                       # [batch, bins]: a band covers every frame
    assert np.array_equal((y == 0).any(1), zero_bins)
    assert 0 < zero_bins.sum(1).max() <= 20 and zero_bins.sum() > 0
    assert masking.frequency_mask(jax.random.key(0), x, 0, 10) is x


# ------------------------------------------------------------------------------------------------ bad input
def _bad_corpus(root):
    """A LibriSpeech-layout folder: good rows, an empty transcript, characters outside the vocabulary, and a
    0.2 s clip with a long transcript."""
    mini = os.path.join(os.path.dirname(checkpointing.__file__), "assets", "mini_corpus", "train", "1001", "10011")
    folder = root / "train" / "7" / "1"
    folder.mkdir(parents=True)
    lines = {0: "THE SAILOR TIED A STRONG KNOT", 1: "", 2: "THE CAT \u03a9\u03a9 SAT", 3: "A GRAY CLOUD COVERED THE SUN",
             4: " ".join(["THE SAILOR TIED A STRONG KNOT"] * 3)}
    import soundfile as sf
    for i in lines:
        src = os.path.join(mini, f"1001-10011-{i:04d}.flac")
        if i == 4:
            audio, rate = sf.read(src)
            sf.write(str(folder / f"7-1-{i:04d}.flac"), audio[:3200], rate)
        else:
            shutil.copy(src, folder / f"7-1-{i:04d}.flac")
    (folder / "7-1.trans.txt").write_text("".join(f"7-1-{i:04d} {t}\n" for i, t in lines.items()))


@pytest.fixture()
def bad_task(tmp_path):
    import tasks  # noqa: F401
    from slam_jax.data import sources
    from tasks import mini
    _bad_corpus(tmp_path)
    sources.add_librispeech_folder_task("ft_bad_paired", str(tmp_path), kind="paired", splits={"train": "train"},
                                        vocabulary=mini.vocabulary())
    return "ft_bad_paired"


def test_bad_transcripts_are_skipped_with_reasons_or_raise(bad_task):
    from slam_jax.data import schema
    from slam_jax.finetune.asr_ctc import AsrCtcTask
    # max_unk_fraction=1: the out-of-vocabulary transcript must reach CTC's own check (the stream's UNK threshold
    # has its own test in test_data_errors.py).
    cfg = schema.StreamConfig(mixture=bad_task, batch_size=4, paired_frames=256, paired_tokens=64,
                                 on_error="skip", shuffle=False, max_unk_fraction=1.0)
    task = AsrCtcTask(ModelConfig(vocab_size=512), base.FinetuneConfig(), cfg)
    stream = task.train_stream(0, 1)
    batch = next(stream)
    stats = stream.stats()
    assert stats["paired"]["skipped"] == {bad_task: 1}                  # the empty transcript
    assert any("empty transcript" in m for m in stats["messages"])
    assert sorted(stats["ctc_skipped"]) == ["audio too short for CTC", "transcript has characters outside the vocabulary"]
    assert all(m.split(": ")[0].endswith(".flac") for m in stats["ctc_messages"])
    kept = (batch["paired"]["token_segment_ids"] > 0).any(1)
    assert kept.sum() == 2 and not batch["paired"]["segment_ids"][~kept].any()
    # The skip counts travel with the iterator state.
    restored = task.train_stream(0, 1)
    restored.set_state(stream.get_state())
    assert restored.stats()["ctc_skipped"] == stats["ctc_skipped"]

    strict = AsrCtcTask(ModelConfig(vocab_size=512), base.FinetuneConfig(),
                        schema.StreamConfig(mixture=bad_task, batch_size=4, paired_frames=256, paired_tokens=64,
                                               shuffle=False))
    with pytest.raises(schema.DataError, match=r"7-1.trans.txt:2: empty transcript"):
        next(strict.train_stream(0, 1))


def test_rnnt_rows_it_cannot_learn_from_are_skipped_with_reasons(bad_task):
    from slam_jax.data import schema
    from slam_jax.finetune.asr_rnnt import AsrRnntTask, TransducerConfig
    cfg = schema.StreamConfig(mixture=bad_task, batch_size=4, paired_frames=256, paired_tokens=64,
                                 on_error="skip", shuffle=False, max_unk_fraction=1.0)
    task = AsrRnntTask(ModelConfig(vocab_size=512), base.FinetuneConfig(), cfg, TransducerConfig())
    stream = task.train_stream(0, 1)
    batch = next(stream)
    stats = stream.stats()
    assert stats["paired"]["skipped"] == {bad_task: 1}                  # the empty transcript
    assert sorted(stats["ctc_skipped"]) == ["transcript has characters outside the vocabulary",
                                            "transcript too long for the audio"]
    assert any("TransducerConfig.max_symbols_per_frame" in m for m in stats["ctc_messages"])
    assert (batch["paired"]["token_segment_ids"] > 0).any(1).sum() == 2
    # More symbols per frame make the short clip's long transcript learnable.
    loose = AsrRnntTask(ModelConfig(vocab_size=512), base.FinetuneConfig(), cfg,
                        TransducerConfig(max_symbols_per_frame=8)).train_stream(0, 1)
    next(loose)
    assert sorted(loose.stats()["ctc_skipped"]) == ["transcript has characters outside the vocabulary"]


HEADS = {"asr_ctc": "ctc/kernel", "asr_rnnt": "joint/out/kernel"}


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(os.path.dirname(checkpointing.__file__),
                                                                         "gin", "finetune"))
                                        if f.endswith(("_ctc.gin", "_rnnt.gin"))))
def test_every_asr_finetune_config_resolves_to_a_task_and_sharded_state(name):
    import tasks  # noqa: F401
    from slam_jax import config
    from slam_jax.trainer import TrainConfig
    from slam_jax.finetune import run
    config.parse([f"finetune/{name}"], ["PRETRAINED_MODEL_DIR = '/nowhere'"] if "librispeech" in name else [])
    task = run.make_task(config.ModelConfig(), run.FinetuneConfig(), config.StreamConfig())
    trainer = run.make_trainer(task, config.OptimizerConfig(), config.MeshConfig(), TrainConfig())
    names = checkpointing._paths_and_shapes(trainer.abstract_params)
    assert HEADS[task.name] in names and sum(k.startswith("encoder/") for k in names) > 50
    assert not any(k.startswith(("quantizer/", "speech_mlm/", "stm/")) for k in names)
    opt = config.OptimizerConfig()
    if opt.schedule == "tri_stage":  # the phases cover the run
        assert opt.warmup_steps + opt.hold_steps + opt.decay_steps == TrainConfig().train_steps
