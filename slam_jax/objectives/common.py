"""Shared loss helpers."""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_mean(values: Array, weights: Array) -> tuple[Array, Array]:
    """(sum(values * weights) / max(sum(weights), 1), sum(weights)) in float32."""
    weights = weights.astype(jnp.float32)
    count = weights.sum()
    return (values.astype(jnp.float32) * weights).sum() / jnp.maximum(count, 1.0), count


def cross_entropy(logits: Array, targets: Array, weights: Array) -> tuple[Array, dict[str, Array]]:
    """Softmax cross-entropy averaged over weighted positions.

    Args:
      logits: float [..., classes]; targets: int [...]; weights: [...] (1 = scored position).
    Returns:
      (loss, {"loss", "accuracy", "count"}).
    """
    logits = logits.astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    loss, count = masked_mean(nll, weights)
    accuracy, _ = masked_mean(jnp.argmax(logits, -1) == targets, weights)
    return loss, {"loss": loss, "accuracy": accuracy, "count": count}
