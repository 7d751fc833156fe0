"""Translation language modelling on paired data (SLAM, arXiv 2110.10329): predict masked transcript tokens (text-MLM head) and
masked speech frames' quantizer ids (speech-MLM head) from the concatenated pair's top outputs."""
from __future__ import annotations

import jax

from slam_jax.objectives.span_mlm import text_mlm_loss
from slam_jax.objectives.w2v_bert import speech_mlm_loss

Array = jax.Array


def tlm_loss(text_logits: Array, tokens: Array, token_mask: Array, speech_logits: Array, ids: Array,
             frame_mask: Array) -> tuple[Array, dict[str, Array]]:
    """Sum of the text and speech masked-prediction losses on a paired sub-batch.

    Args:
      text_logits: [batch, L, vocab]; tokens: [batch, L]; token_mask: bool [batch, L].
      speech_logits: [batch, T', G, V]; ids: [batch, T', G]; frame_mask: bool [batch, T'].
    """
    text, text_metrics = text_mlm_loss(text_logits, tokens, token_mask)
    speech, speech_metrics = speech_mlm_loss(speech_logits, ids, frame_mask)
    metrics = {f"text_{k}": v for k, v in text_metrics.items()}
    metrics.update({f"speech_{k}": v for k, v in speech_metrics.items()})
    metrics["loss"] = text + speech
    return text + speech, metrics
