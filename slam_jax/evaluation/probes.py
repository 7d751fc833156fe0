"""Cross-modal alignment probes of a pre-trained encoder, without fine-tuning (SLAM's claim that joint training aligns
speech and text).

- STM accuracy: the speech-text matching head on clean (unmasked) pairs of a paired split, each positive with one
  negative made by rolling the transcripts by one row (the pre-training negatives); a negative whose transcript equals
  the positive's (the same sentence spoken twice) is left out. Meaningful only for runs that trained STM.
- Cross-modal retrieval: every utterance and every transcript is encoded *alone* (speech: subsampling + speech layers +
  shared layers; text: embedding + shared layers), mean-pooled over its valid positions of the top layer, and compared
  by cosine similarity. speech->text R@k is the fraction of utterances whose transcript is among the k most similar
  transcripts of the split (text->speech likewise). Transcripts with identical text form one group: retrieving any
  member of the right group counts as correct (the mini corpus speaks each sentence with two voices).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax.model import SlamModel
from slam_jax.objectives import stm

Array = jax.Array


def retrieval_recall(similarity: np.ndarray, groups: np.ndarray | None = None,
                     ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k of retrieval where query i's correct items are those of its group.

    Args:
      similarity: float [queries, items]; query i is paired with item i (so queries == items).
      groups: int [items] group of each item (default: every item its own group).
    Returns:
      {"r1": ..., "r5": ...}: the fraction of queries with a correct item among their k most similar items.
    """
    n = similarity.shape[0]
    if similarity.shape != (n, n):
        raise ValueError(f"similarity must be square [queries, items], got {similarity.shape}")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    order = np.argsort(-similarity, axis=1, kind="stable")
    correct = groups[order] == groups[:, None]
    first = np.where(correct.any(1), correct.argmax(1), n)
    return {f"r{k}": float(np.mean(first < k)) for k in ks}


def _mean_pool(h: Array, valid: Array) -> Array:
    """[B, T, d] top-layer outputs, bool [B, T] -> float32 [B, d] mean over valid positions."""
    w = valid.astype(jnp.float32)[..., None]
    return (h.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def probe_outputs(model: SlamModel, batch: dict) -> dict[str, Array]:
    """Per-row probe outputs of a paired global batch (every output [batch, ...])."""
    sub, enc = batch["paired"], model.encoder
    tokens, tseg = sub["tokens"], sub["token_segment_ids"]
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    z, seg = enc.speech_features(sub["features"], sub["segment_ids"])
    c = enc.speech_encoder(z, seg)
    e = enc.embed_text(tokens, tseg, positions)
    row_valid = jnp.any(seg > 0, axis=1)
    neg_tokens, neg_tseg, neg_valid = stm.roll_negatives(tokens, tseg, row_valid)
    neg_valid = neg_valid & ~jnp.all((neg_tokens == tokens) & (neg_tseg == tseg), axis=1)
    positive = enc.encode_paired(c, seg, e, tseg)
    negative = enc.encode_paired(c, seg, enc.embed_text(neg_tokens, neg_tseg, positions), neg_tseg)
    return {
        "speech": _mean_pool(enc.shared(c, seg), seg > 0),
        "text": _mean_pool(enc.shared(e, tseg), tseg > 0),
        "stm_positive": model.stm_logits(positive.cls),
        "stm_negative": model.stm_logits(negative.cls),
        "negative_valid": neg_valid,
        "valid": row_valid,
    }


@dataclasses.dataclass
class ProbeResult:
    stm_accuracy: float
    speech_to_text_r1: float
    speech_to_text_r5: float
    text_to_speech_r1: float
    text_to_speech_r5: float
    pairs: int


def alignment_probes(trainer, params: Any, stream) -> ProbeResult:
    """Runs the probes over a finite paired stream (e.g. `converter.eval_stream` of a paired split).

    Embeddings of every host are gathered, so every process returns the same result.
    """
    from slam_jax.evaluation.evaler import Evaler, gather
    parts: dict[str, list[np.ndarray]] = {}
    for batch in Evaler(trainer, params, probe_outputs, kind="paired").batches(stream, padding_batches=True):
        out = dict(batch.outputs)
        sub = batch.local["paired"]
        out["tokens"] = np.where(sub["token_segment_ids"] > 0, sub["tokens"], -1)
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    out = {k: gather(np.concatenate(v)) for k, v in parts.items()}   # every host ran equally shaped batches
    keep = out.pop("valid")
    out = {k: v[keep] for k, v in out.items()}
    texts = [tuple(t[t >= 0].tolist()) for t in out["tokens"]]
    pos_ok = out["stm_positive"] > 0
    neg_ok = (out["stm_negative"] <= 0)[out["negative_valid"]]
    stm_accuracy = float(np.concatenate([pos_ok, neg_ok]).mean())
    speech = out["speech"] / np.linalg.norm(out["speech"], axis=1, keepdims=True).clip(1e-9)
    text = out["text"] / np.linalg.norm(out["text"], axis=1, keepdims=True).clip(1e-9)
    group_of = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    groups = np.asarray([group_of[t] for t in texts])
    s2t = retrieval_recall(speech @ text.T, groups)
    t2s = retrieval_recall(text @ speech.T, groups)
    return ProbeResult(stm_accuracy=stm_accuracy, speech_to_text_r1=s2t["r1"], speech_to_text_r5=s2t["r5"],
                       text_to_speech_r1=t2s["r1"], text_to_speech_r5=t2s["r5"], pairs=len(texts))
