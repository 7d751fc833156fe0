import jax
import jax.numpy as jnp
import numpy as np

from slam_jax.objectives import stm, w2v_bert


def _case(seed=0, b=3, t=30, d=8, k=6):
    rng = np.random.default_rng(seed)
    seg = np.zeros((b, t), np.int32)
    seg[0, :30] = 1
    seg[1, :12], seg[1, 12:26] = 1, 2  # packed row
    seg[2, :20] = 1
    mask = (rng.random((b, t)) < 0.5) & (seg > 0)
    mask[2, :] = False
    mask[2, 3] = True  # an utterance with a single masked frame: not scored
    context = rng.normal(size=(b, t, d)).astype(np.float32)
    targets = rng.normal(size=(b, t, d)).astype(np.float32)
    ids = rng.integers(0, 1000, (b, t, 1)).astype(np.int32)
    return seg, mask, context, targets, ids, k


def test_negatives_are_other_masked_frames_of_same_utterance():
    seg, mask, *_ , k = _case()
    neg, scored = w2v_bert.sample_negatives(jax.random.key(0), jnp.asarray(mask), jnp.asarray(seg), 50)
    neg, scored = np.asarray(neg), np.asarray(scored)
    assert not scored[2].any()
    for b, t in zip(*np.nonzero(scored)):
        idx = neg[b, t]
        assert np.all(idx != t), "a distractor equals the positive"
        assert np.all(mask[b, idx]), "a distractor is not a masked frame"
        assert np.all(seg[b, idx] == seg[b, t]), "a distractor comes from another utterance"
    # Uniform over the candidates: every other masked frame of a 15-frame utterance shows up in 50 draws x frames.
    b, t = next(zip(*np.nonzero(scored)))
    candidates = set(np.nonzero(mask[b] & (seg[b] == seg[b, t]))[0]) - {t}
    drawn = set(neg[b][scored[b] & (seg[b] == seg[b, t])].ravel())
    assert candidates <= drawn | {t} and len(drawn) >= len(candidates)


def _reference_loss(context, targets, ids, neg, scored, temperature):
    """Brute force: loop over scored frames, cosine to the positive and each distractor, log-softmax."""
    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    losses, correct, chance = [], [], []
    for b, t in zip(*np.nonzero(scored)):
        logits = [cos(context[b, t], targets[b, t]) / temperature]
        for j in neg[b, t]:
            same = np.array_equal(ids[b, j], ids[b, t])
            logits.append(-np.inf if same else cos(context[b, t], targets[b, j]) / temperature)
        logits = np.array(logits)
        m = logits.max()
        losses.append(-(logits[0] - m - np.log(np.exp(logits - m).sum())))
        correct.append(np.argmax(logits) == 0)
        chance.append(1 / np.isfinite(logits).sum())
    return np.mean(losses), np.mean(correct), np.mean(chance)


def test_contrastive_loss_matches_numpy_reference():
    seg, mask, context, targets, ids, k = _case()
    ids[0, 5] = ids[0, 7]  # two frames sharing a code: excluded as each other's distractor
    neg, scored = w2v_bert.sample_negatives(jax.random.key(1), jnp.asarray(mask), jnp.asarray(seg), k)
    loss, metrics = w2v_bert.contrastive_loss(jnp.asarray(context), jnp.asarray(targets), jnp.asarray(ids), neg,
                                              scored, temperature=0.1)
    ref_loss, ref_acc, ref_chance = _reference_loss(context, targets, ids, np.asarray(neg), np.asarray(scored), 0.1)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["accuracy"]), ref_acc, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["chance"]), ref_chance, rtol=1e-6)
    assert ref_chance >= 1 / (k + 1)
    assert int(metrics["count"]) == int(np.asarray(scored).sum())


def test_contrastive_loss_can_keep_same_code_distractors():
    seg, mask, context, targets, ids, k = _case()
    ids[:] = 7  # every frame one code: excluded distractors leave nothing, a zero loss
    neg, scored = w2v_bert.sample_negatives(jax.random.key(1), jnp.asarray(mask), jnp.asarray(seg), k)
    args = (jnp.asarray(context), jnp.asarray(targets), jnp.asarray(ids), neg, scored)
    excluded, m = w2v_bert.contrastive_loss(*args)
    assert float(excluded) == 0.0 and float(m["chance"]) == 1.0
    kept, m = w2v_bert.contrastive_loss(*args, exclude_same_code=False)
    assert float(kept) > 0.5 and abs(float(m["chance"]) - 1 / (k + 1)) < 1e-6
    # Identical targets tie the positive with every distractor: no frame counts as correct.
    same, m = w2v_bert.contrastive_loss(args[0], jnp.ones_like(args[1]), *args[2:], exclude_same_code=False)
    assert float(m["accuracy"]) == 0.0 and abs(float(same) - np.log(k + 1)) < 1e-4


def test_diversity_loss_matches_formula():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 2, 4)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    loss, m = w2v_bert.diversity_loss(jnp.asarray(probs), jnp.asarray(valid))
    p_bar = probs[valid].mean(0)  # [G, V]
    perplexity = np.exp(-(p_bar * np.log(p_bar)).sum(-1)).sum()
    np.testing.assert_allclose(float(loss), (8 - perplexity) / 8, rtol=1e-5)


def test_stm_negatives_are_mismatched_rows():
    tokens = jnp.arange(12).reshape(4, 3)
    valid = jnp.array([True, True, True, False])
    neg, _, neg_valid = stm.roll_negatives(tokens, jnp.ones_like(tokens), valid)
    assert np.all(np.asarray(neg)[1:] == np.asarray(tokens)[:-1])
    # Row 0 gets row 3's transcript, which is padding: not a valid negative. Row 3 itself is padding.
    assert list(np.asarray(neg_valid)) == [False, True, True, False]


def test_each_registered_objective_alone_yields_its_losses_weighted_by_its_weight():
    """The objective registry (`pretraining.OBJECTIVES`) against what `compute_losses` does: each objective switched
    on alone reads its batch kind, reports its loss metrics (and no other objective's), and its weight field scales
    them: at weight 2 the total is twice the sum of its losses (diversity off, no dropout or Gumbel noise)."""
    import dataclasses

    from flax import nnx

    from helpers import TINY, build_model, full_batch
    from slam_jax import flops, pretraining

    model_cfg = dataclasses.replace(TINY, speech_layers=1, shared_layers=1, ctc_head=True)
    model = build_model(model_cfg)
    batch = jax.tree.map(jnp.asarray, full_batch(batch=2, frames=32, length=8))
    switches = {o.name: False for o in pretraining.OBJECTIVES}
    every_loss = {name for o in pretraining.OBJECTIVES for name in o.losses}
    every_head = {head for o in pretraining.OBJECTIVES for head in o.heads}
    switch_fields = {f.name for f in dataclasses.fields(pretraining.ObjectiveConfig) if f.type in ("bool", bool)}
    assert switch_fields >= set(switches)
    for objective in pretraining.OBJECTIVES:
        cfg = pretraining.ObjectiveConfig(**{**switches, objective.name: True}, **{objective.weight: 2.0},
                                          diversity_weight=0.0, num_negatives=4)
        assert cfg.active == (objective.name,) and cfg.kinds == {objective.kind}
        assert pretraining.loss_names(cfg) == objective.losses
        losses = nnx.jit(lambda m, b, c=cfg: pretraining.compute_losses(m, b, jnp.array(0), jax.random.key(0), c,
                                                                       train=False))
        total, metrics = losses(model, batch)
        assert every_loss & set(metrics) == set(objective.losses), objective.name
        assert {k.split("/")[0] for k in metrics if "/" in k} == {objective.kind}, objective.name
        np.testing.assert_allclose(float(total), 2 * sum(float(metrics[n]) for n in objective.losses), rtol=1e-5,
                                   err_msg=objective.name)
        # The FLOP model counts this objective's own heads, no other objective's, and its declared passes.
        count = flops.forward_flops(model_cfg, flops.BatchShapes.from_batch(batch), cfg)
        assert set(objective.heads) <= set(count.components) and not set(count.components) & (every_head - set(
            objective.heads)), (objective.name, count.components)
        assert cfg.encoder_passes and all(p.startswith(objective.kind + ".") for p in cfg.encoder_passes)
