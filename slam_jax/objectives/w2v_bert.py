"""w2v-BERT speech objectives: contrastive (+ diversity) on the speech stack, masked prediction on the top.

w2v-BERT (arXiv 2108.06209): `L_c = L_w + alpha * L_d` (alpha 0.1), `L_m` = cross-entropy of quantizer ids at masked frames,
`L_w2vbert = L_c + L_m`. w2v-conformer (wav2vec 2.0 style) is `L_c` alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from slam_jax import health
from slam_jax.layers.conformer import segment_reduce, segment_starts
from slam_jax.objectives.common import cross_entropy, masked_mean

Array = jax.Array


def sample_negatives(key: Array, mask: Array, segment_ids: Array, num_negatives: int) -> tuple[Array, Array]:
    """Samples distractor positions uniformly (with replacement) from the other masked frames of each utterance.

    Args:
      key: PRNG key.
      mask: bool [batch, time] masked frames; segment_ids: [batch, time] (utterances = contiguous segments).
      num_negatives: K distractors per masked frame.
    Returns:
      (indices int32 [batch, time, K] into the time axis, scored bool [batch, time]): a masked frame is scored when
      its utterance has at least one other masked frame. A distractor is never the frame itself.
    """
    b, t = mask.shape
    m = mask.astype(jnp.int32)
    csum = jnp.cumsum(m, axis=1)
    start = segment_starts(segment_ids)
    before = jnp.take_along_axis(csum, start, 1) - jnp.take_along_axis(m, start, 1)  # masked frames before segment
    rank = csum - 1 - before  # rank of a masked frame within its utterance's masked frames
    count = segment_reduce(m, segment_ids)
    # Masked positions of a row in time order; utterances are contiguous, so utterance s occupies
    # masked_order[before_s : before_s + count_s].
    masked_order = jnp.argsort(jnp.where(mask, 0, 1), axis=1, stable=True)
    u = jax.random.uniform(key, (b, t, num_negatives))
    j = jnp.floor(u * jnp.maximum(count - 1, 1)[..., None]).astype(jnp.int32)
    j = j + (j >= rank[..., None])  # skip the positive itself
    slot = jnp.clip(before[..., None] + j, 0, t - 1)
    indices = jnp.take_along_axis(masked_order, slot.reshape(b, -1), 1).reshape(b, t, num_negatives)
    return indices.astype(jnp.int32), mask & (count >= 2)


def _normalize(x: Array) -> Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


def contrastive_loss(context: Array, targets: Array, target_ids: Array, negatives: Array, scored: Array, *,
                     temperature: float = 0.1, exclude_same_code: bool = True) -> tuple[Array, dict[str, Array]]:
    """InfoNCE over cosine similarities, the positive at index 0.

    Args:
      context: [batch, time, D] projected speech-stack outputs W c_t.
      targets: [batch, time, D] quantized vectors q_t.
      target_ids: int [batch, time, G] code ids of q_t (distractors with the positive's code are excluded).
      negatives: int [batch, time, K] distractor time indices (from `sample_negatives`).
      scored: bool [batch, time] frames that contribute.
      temperature: kappa (C: 0.1).
      exclude_same_code: drop distractors whose code equals the positive's (wav2vec 2.0 / fairseq, C). This opens
        a trivial optimum: a quantizer that gives every frame of an utterance one code leaves no distractor and a
        zero loss, which only the diversity loss resists (seen at toy scale, docs/EXPERIMENTS.md). False keeps
        them: identical targets then cost log(K + 1) instead.
    Returns:
      (mean loss over scored frames, {"loss", "accuracy", "count", "chance"}); "chance" is the accuracy of a
      uniform guess, the mean of 1 / (1 + distractors left after excluding the positive's code).
    """
    c, q = _normalize(context), _normalize(targets)
    sim = jnp.einsum("btd,bsd->bts", c, q) / temperature  # [b, t, t]: every pair within the row
    pos = jnp.diagonal(sim, axis1=1, axis2=2)[..., None]
    neg = jnp.take_along_axis(sim, negatives, axis=2)  # [b, t, K]
    b, t, k = negatives.shape
    neg_ids = jnp.take_along_axis(target_ids, negatives.reshape(b, t * k)[..., None], 1).reshape(b, t, k, -1)
    same_code = jnp.all(neg_ids == target_ids[:, :, None, :], -1) & exclude_same_code
    logits = jnp.concatenate([pos, jnp.where(same_code, -jnp.inf, neg)], -1)
    loss, metrics = cross_entropy(logits, jnp.zeros((b, t), jnp.int32), scored)
    # Strictly above every distractor: a distractor with the positive's vector (kept with exclude_same_code=False)
    # ties it, and a tie is not a correct pick.
    metrics["accuracy"], _ = masked_mean(pos[..., 0] > jnp.max(logits[..., 1:], -1, initial=-jnp.inf), scored)
    metrics["chance"], _ = masked_mean(1.0 / (1.0 + jnp.sum(~same_code, -1)), scored)
    return loss, metrics


def diversity_loss(probs: Array, valid: Array) -> tuple[Array, dict[str, Array]]:
    """wav2vec 2.0 diversity loss `(G V - sum_g exp(H(p_bar_g))) / (G V)` over non-padded frames.

    Args:
      probs: float32 [batch, time, G, V] softmax of the quantizer logits; valid: bool [batch, time].
    Returns:
      (loss, {"loss", "prob_perplexity"}).
    """
    g, v = probs.shape[-2:]
    w = valid.astype(jnp.float32)[..., None, None]
    p_bar = (probs * w).sum((0, 1)) / jnp.maximum(w.sum(), 1.0)  # [G, V]
    perplexity = health.perplexity(p_bar).sum()
    loss = (g * v - perplexity) / (g * v)
    return loss, {"loss": loss, "prob_perplexity": perplexity}


def speech_mlm_loss(logits: Array, ids: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """Masked prediction of quantizer ids: logits [batch, time, G, V], ids [batch, time, G], mask bool [batch, time]."""
    weights = jnp.broadcast_to(mask[..., None], ids.shape)
    return cross_entropy(logits, ids, weights)
