"""SpanBERT-style masked LM on text (SLAM's text objective, after SpanBERT): cross-entropy at masked tokens only."""
from __future__ import annotations

import jax

from slam_jax.objectives.common import cross_entropy

Array = jax.Array


def text_mlm_loss(logits: Array, tokens: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """logits: float [batch, length, vocab]; tokens: int [batch, length] originals; mask: bool [batch, length]."""
    return cross_entropy(logits, tokens, mask)
