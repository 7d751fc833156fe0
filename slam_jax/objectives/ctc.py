"""CTC on paired speech run alone (mSLAM, arXiv 2202.01374): the transcript is not visible to the encoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from slam_jax.objectives.common import masked_mean

Array = jax.Array


def ctc_loss(logits: Array, frame_valid: Array, labels: Array, label_valid: Array,
             blank_id: int = 0) -> tuple[Array, dict[str, Array]]:
    """Per-utterance CTC loss normalized by label length, averaged over rows with labels.

    Args:
      logits: float32 [batch, frames, vocab]; frame_valid: bool [batch, frames];
      labels: int [batch, length]; label_valid: bool [batch, length]; blank_id: the CTC blank (PAD = 0).
    """
    per_row = optax.ctc_loss(logits.astype(jnp.float32), 1.0 - frame_valid.astype(jnp.float32), labels,
                             1.0 - label_valid.astype(jnp.float32), blank_id=blank_id)
    lengths = label_valid.sum(-1)
    rows = lengths > 0
    loss, count = masked_mean(per_row / jnp.maximum(lengths, 1), rows)
    return loss, {"loss": loss, "count": count}
