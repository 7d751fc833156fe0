"""Span masking for speech frames and text tokens: one sampler for every objective.

Each valid position starts a span with probability `start_prob`; a span covers `span_length` positions and is cut at
its segment's end; spans may overlap. The expected masked fraction of a long segment is
`1 - (1 - start_prob) ** span_length` (p = 0.065, span 10 -> 49%, the w2v-BERT setting). Each segment gets at least
`min_spans` spans (C: 2 for speech): segments with fewer starts get extra starts at random positions.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from slam_jax.layers.conformer import segment_reduce, segment_starts

Array = jax.Array


def start_prob_for_fraction(fraction: float, span_length: int) -> float:
    """Start probability whose spans of `span_length` mask `fraction` of a long sequence in expectation."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"mask fraction must be in [0, 1), got {fraction}")
    return 1.0 - (1.0 - fraction) ** (1.0 / span_length)


@dataclasses.dataclass(frozen=True)
class SpanMasking:
    """Span-mask hyper-parameters.

    Attributes:
      start_prob: probability that a valid position starts a span.
      span_length: positions per span (fixed length, ?: SpanBERT's geometric lengths are not used by SLAM).
      min_spans: minimum spans per segment (C: 2 for speech).
    """

    start_prob: float
    span_length: int
    min_spans: int = 0

    @classmethod
    def for_fraction(cls, fraction: float, span_length: int, min_spans: int = 0) -> "SpanMasking":
        return cls(start_prob_for_fraction(fraction, span_length), span_length, min_spans)


def _rank_within_segment(scores: Array, segment_ids: Array) -> Array:
    """Rank (0 = smallest score) of each position among the positions of its contiguous segment."""
    start = segment_starts(segment_ids)
    iota = jnp.broadcast_to(jnp.arange(segment_ids.shape[1]), segment_ids.shape)
    # Sorting by (segment start, score) keeps segments contiguous; rank = sorted position - segment start.
    _, _, order = jax.lax.sort((start, scores, iota), dimension=1, num_keys=2)
    return jnp.argsort(order, axis=1) - start


def span_mask(key: Array, segment_ids: Array, masking: SpanMasking) -> Array:
    """Samples a span mask.

    Args:
      key: PRNG key.
      segment_ids: [batch, time] int, 0 = padding; segments are contiguous runs.
      masking: the span hyper-parameters.
    Returns:
      bool [batch, time]: True at masked positions (never at padding, never across a segment boundary).
    """
    k_start, k_extra = jax.random.split(key)
    valid = segment_ids > 0
    starts = jax.random.bernoulli(k_start, masking.start_prob, segment_ids.shape) & valid
    if masking.min_spans > 0:
        count = segment_reduce(starts.astype(jnp.int32), segment_ids)
        rank = _rank_within_segment(jax.random.uniform(k_extra, segment_ids.shape), segment_ids)
        starts = starts | (valid & (count < masking.min_spans) & (rank < masking.min_spans))
    t = segment_ids.shape[1]
    mask = starts
    for j in range(1, masking.span_length):
        shifted = jnp.pad(starts, ((0, 0), (j, 0)))[:, :t]
        same = jnp.pad(segment_ids, ((0, 0), (j, 0)), constant_values=-1)[:, :t] == segment_ids
        mask = mask | (shifted & same)
    return mask & valid


def replace_tokens(key: Array, tokens: Array, mask: Array, vocab_size: int, random_fraction: float = 0.0,
                   keep_fraction: float = 0.0) -> tuple[Array, Array]:
    """BERT-style replacement of masked tokens.

    Of the masked tokens, `random_fraction` become a random id, `keep_fraction` stay unchanged and the rest become
    [MASK] (the model's learned mask embedding). Defaults: all [MASK] (?).

    Returns:
      (tokens [batch, length] with random replacements applied, use_mask_embedding bool [batch, length]).
    """
    if random_fraction == 0.0 and keep_fraction == 0.0:
        return tokens, mask
    k_kind, k_tok = jax.random.split(key)
    u = jax.random.uniform(k_kind, tokens.shape)
    random_ids = jax.random.randint(k_tok, tokens.shape, 3, vocab_size)  # skip PAD / EOS / UNK
    use_random = mask & (u < random_fraction)
    keep = mask & (u >= random_fraction) & (u < random_fraction + keep_fraction)
    return jnp.where(use_random, random_ids, tokens), mask & ~use_random & ~keep


def frequency_mask(key: Array, features: Array, num_masks: int, max_width: int) -> Array:
    """SpecAugment frequency masking (Park et al. 2019): zeroes `num_masks` bands of log-mel bins per row.

    Each band has a width drawn uniformly from [0, max_width] and a uniform start; bands may overlap.
    Args:
      key: PRNG key. features: float [batch, frames, bins] (normalized log-mel, so 0 is the mean).
    Returns:
      features with the bands zeroed, same shape and dtype.
    """
    if num_masks == 0 or max_width == 0:
        return features
    b, bins = features.shape[0], features.shape[-1]
    k_width, k_start = jax.random.split(key)
    width = jax.random.randint(k_width, (b, num_masks), 0, max_width + 1)
    start = (jax.random.uniform(k_start, (b, num_masks)) * (bins - width + 1)).astype(jnp.int32)
    idx = jnp.arange(bins)
    band = (idx >= start[..., None]) & (idx < (start + width)[..., None])     # [batch, masks, bins]
    return jnp.where(jnp.any(band, axis=1)[:, None, :], jnp.zeros((), features.dtype), features)
