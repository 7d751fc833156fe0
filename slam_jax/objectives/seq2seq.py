"""Sequence-to-sequence loss: token cross-entropy with label smoothing (optax), for the speech-translation decoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from slam_jax.objectives.common import masked_mean

Array = jax.Array


def shift_right(targets: Array, start_id: int = 0) -> Array:
    """Decoder inputs for teacher forcing: int [B, L] targets -> [B, L] = start_id, targets[:, :-1] (T5 convention,
    start_id = PAD = 0)."""
    return jnp.pad(targets, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


def smoothed_cross_entropy(logits: Array, targets: Array, weights: Array, label_smoothing: float = 0.1
                           ) -> tuple[Array, dict[str, Array]]:
    """Label-smoothed softmax cross-entropy averaged over weighted target tokens.

    Args:
      logits: float [B, L, vocab]; targets: int [B, L]; weights: [B, L] (1 = real target token, EOS included).
      label_smoothing: probability mass spread uniformly over the vocabulary (`optax.smooth_labels`; 0.1 is the
        Transformer's value, our choice for the paper's unreported one).
    Returns:
      (loss, {"loss", "nll" (unsmoothed cross-entropy), "accuracy" (next-token argmax), "tokens"}).
    """
    logits = logits.astype(jnp.float32)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    loss, tokens = masked_mean(optax.softmax_cross_entropy(logits, labels), weights)
    nll, _ = masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets), weights)
    accuracy, _ = masked_mean(jnp.argmax(logits, -1) == targets, weights)
    return loss, {"loss": loss, "nll": nll, "accuracy": accuracy, "tokens": tokens}
