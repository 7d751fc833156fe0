"""Speech-text matching (SLAM, arXiv 2110.10329): binary matched / mismatched classification on the CLS output."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from slam_jax.objectives.common import masked_mean

Array = jax.Array


def roll_negatives(tokens: Array, segment_ids: Array, row_valid: Array) -> tuple[Array, Array, Array]:
    """Mismatched transcripts by rolling the paired sub-batch by one row (a guaranteed mismatch for >= 2 rows).

    Args:
      tokens, segment_ids: int [batch, length] transcripts; row_valid: bool [batch] real (non-padding) rows.
    Returns:
      (tokens, segment_ids, valid) of the negatives [batch, length] / [batch]; a negative is valid when both its
      speech row and its transcript row are real and differ.
    """
    valid = row_valid & jnp.roll(row_valid, 1) & (row_valid.sum() >= 2)
    return jnp.roll(tokens, 1, axis=0), jnp.roll(segment_ids, 1, axis=0), valid


def stm_loss(logits: Array, labels: Array, weights: Array) -> tuple[Array, dict[str, Array]]:
    """Binary cross-entropy: logits float [n], labels {0, 1} [n], weights [n]."""
    bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels.astype(jnp.float32))
    loss, count = masked_mean(bce, weights)
    accuracy, _ = masked_mean((logits > 0) == (labels > 0), weights)
    return loss, {"loss": loss, "accuracy": accuracy, "count": count}
