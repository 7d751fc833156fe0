"""RNN-T decoding, batched and jit-able: greedy search and modified beam search.

Both take the encoder side already projected by the joint network (`JointNetwork.project_encoder`), and three
callables of the model: `joint(enc [..., J], pred [..., J]) -> logits [..., V]`, `predict(tokens [...], state) ->
(projected output [..., J], state)` and the prediction network's initial state for a batch shape.

- Greedy search: per frame, emit the argmax label and feed it to the prediction network until the argmax is the blank
  or `max_symbols` labels came out of this frame (a cap: an untrained model could emit forever).
- Modified beam search (Kang et al. 2022, "Fast and parallel decoding for transducer", icefall's
  `modified_beam_search`): at most one label per frame, so every hypothesis advances in lockstep and the search is a
  fixed-shape top-k per frame. Hypotheses with the same label sequence are merged (their probabilities added) before
  the top-k, so with a beam that holds every prefix the search is exact for this topology. With beam 1 it is the
  greedy search with `max_symbols=1`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Joint = Callable[[Array, Array], Array]
Predict = Callable[[Array, Any], tuple[Array, Any]]
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Hypotheses:
    """tokens int32 [B, L] (valid prefix of `lengths` [B]); scores [B]: log-probability of the best path (greedy)
    or of the label sequence over the merged paths (beam)."""

    tokens: Array
    lengths: Array
    scores: Array


def _where(mask: Array, new: Any, old: Any) -> Any:
    """Per-row select over pytrees whose leaves have the mask's shape as leading axes."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b),
                        new, old)


def greedy_search(joint: Joint, predict: Predict, initial_state: Any, encoder: Array, frame_lengths: Array, *,
                  max_symbols: int = 1, max_length: int | None = None, blank_id: int = 0) -> Hypotheses:
    """Args: encoder [B, T, J] (projected); frame_lengths int [B]; initial_state for batch [B];
    max_symbols: labels per frame at most; max_length: labels per utterance at most (default T * max_symbols)."""
    batch, frames, _ = encoder.shape
    max_length = max_length or frames * max_symbols
    start = jnp.full((batch,), blank_id, jnp.int32)
    pred, state = predict(start, initial_state)
    tokens = jnp.zeros((batch, max_length), jnp.int32)
    lengths = jnp.zeros((batch,), jnp.int32)
    scores = jnp.zeros((batch,), jnp.float32)

    def frame(carry, t):
        def symbol(_, inner):
            pred, state, tokens, lengths, scores, active = inner
            logp = jax.nn.log_softmax(joint(encoder[:, t], pred).astype(jnp.float32), -1)
            best = jnp.argmax(logp, -1).astype(jnp.int32)
            emit = active & (best != blank_id) & (lengths < max_length)
            # A frame ends on its blank; the last allowed symbol's frame ends without one (as icefall).
            scores = scores + jnp.where(active, jnp.take_along_axis(logp, best[:, None], -1)[:, 0], 0.0)
            new_pred, new_state = predict(best, state)
            pred, state = _where(emit, (new_pred, new_state), (pred, state))
            tokens = tokens.at[jnp.arange(batch), jnp.minimum(lengths, max_length - 1)].set(
                jnp.where(emit, best, tokens[jnp.arange(batch), jnp.minimum(lengths, max_length - 1)]))
            return pred, state, tokens, lengths + emit, scores, emit

        pred, state, tokens, lengths, scores = carry
        inner = (pred, state, tokens, lengths, scores, t < frame_lengths)
        pred, state, tokens, lengths, scores, _ = jax.lax.fori_loop(0, max_symbols, symbol, inner)
        return (pred, state, tokens, lengths, scores), None

    (_, _, tokens, lengths, scores), _ = jax.lax.scan(frame, (pred, state, tokens, lengths, scores),
                                                      jnp.arange(frames))
    return Hypotheses(tokens, lengths, scores)


def modified_beam_search(joint: Joint, predict: Predict, initial_state: Any, encoder: Array, frame_lengths: Array,
                         *, beam_size: int, blank_id: int = 0) -> Hypotheses:
    """Args: encoder [B, T, J] (projected); frame_lengths int [B]; initial_state for batch [B, K] (K = beam_size).
    Returns the best hypothesis per row (labels at most T)."""
    batch, frames, _ = encoder.shape
    k = beam_size
    start = jnp.full((batch, k), blank_id, jnp.int32)
    pred, state = predict(start, initial_state)                                     # [B, K, J]
    tokens = jnp.zeros((batch, k, frames), jnp.int32)
    lengths = jnp.zeros((batch, k), jnp.int32)
    scores = jnp.full((batch, k), NEG_INF, jnp.float32).at[:, 0].set(0.0)          # one live hypothesis
    positions = jnp.arange(frames)

    def frame(carry, t):
        pred, state, tokens, lengths, scores = carry
        logp = jax.nn.log_softmax(joint(encoder[:, t, None], pred).astype(jnp.float32), -1)   # [B, K, V]
        vocab = logp.shape[-1]
        cand = scores[..., None] + logp
        # Merge: hypothesis i's blank extension equals hypothesis j's extension by label y_i[-1] when y_j is y_i
        # without its last label. Add j's path into i's and drop j's candidate.
        last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[..., None], -1)[..., 0]      # [B, K]
        in_prefix = positions[None, None, None, :] < lengths[:, None, :, None]                         # j's labels
        same = jnp.all(jnp.where(in_prefix, tokens[:, :, None] == tokens[:, None, :], True), -1)     # [B, i, j]
        alive = scores > NEG_INF / 2
        merge = same & (lengths[:, :, None] == lengths[:, None, :] + 1) & alive[:, :, None] & alive[:, None, :]
        from_j = jnp.take_along_axis(cand, jnp.broadcast_to(last[:, None, :], (batch, k, k)), -1)  # [B, j, i]
        absorbed = jnp.where(merge, from_j.swapaxes(1, 2), NEG_INF)                  # [B, i, j]
        blank_scores = jnp.logaddexp(cand[..., blank_id], jax.nn.logsumexp(absorbed, -1))
        blank_scores = jnp.where(merge.any(-1), blank_scores, cand[..., blank_id])
        dropped = jnp.zeros((batch, k, vocab), bool)
        for i in range(k):                                                           # K is small and static
            dropped = dropped | (merge[:, i, :, None] & (jnp.arange(vocab) == last[:, i, None, None]))
        cand = jnp.where(dropped, NEG_INF, cand).at[..., blank_id].set(blank_scores)

        best, index = jax.lax.top_k(cand.reshape(batch, k * vocab), k)                # [B, K]
        source, label = index // vocab, (index % vocab).astype(jnp.int32)
        gather = lambda x: jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), 1)
        new_tokens, new_lengths = gather(tokens), gather(lengths)
        src_pred, src_state = gather(pred), jax.tree.map(gather, state)
        emit = label != blank_id
        new_tokens = jnp.where(emit[..., None] & (positions == new_lengths[..., None]), label[..., None],
                               new_tokens)
        next_pred, next_state = predict(label, src_state)
        new_pred, new_state = _where(emit, (next_pred, next_state), (src_pred, src_state))
        new = (new_pred, new_state, new_tokens, new_lengths + emit, best)
        return _where(jnp.broadcast_to((t < frame_lengths)[:, None], (batch, k)), new, carry), None

    (_, _, tokens, lengths, scores), _ = jax.lax.scan(frame, (pred, state, tokens, lengths, scores),
                                                      jnp.arange(frames))
    top = jnp.argmax(scores, -1)
    pick = lambda x: jnp.take_along_axis(x, top.reshape((batch, 1) + (1,) * (x.ndim - 2)), 1)[:, 0]
    return Hypotheses(pick(tokens), pick(lengths), pick(scores))
