"""Beam search with a length penalty, in pure JAX (static shapes, one `lax.while_loop`, jittable).

The decoder is any `step_fn(tokens, cache) -> (logits, cache)`: tokens int [rows] (the last token of each
hypothesis), logits float [rows, vocab] for the next token, and a cache pytree whose every leaf has `rows` as its
leading axis (`slam_jax.layers.decoder.TransformerDecoder.decode_step` is one). The search repeats the caller's
cache `beam_size` times and reorders its rows as beams are chosen.

Scores are GNMT's (Wu et al. 2016): `log P(y) / ((5 + |y|) / 6) ** alpha`, with |y| counting the EOS; `alpha = 0`
scores by log-probability alone. The search (the t5x / Tensor2Tensor algorithm) keeps `beam_size` live (not yet
finished) hypotheses and the `beam_size` best finished ones per example; each step expands every live hypothesis
by every token and takes the 2 x beam_size best extensions; those ending in EOS that rank among the best beam_size
join the finished set (fairseq's rule), and the best beam_size that do not end stay live. It stops after
`max_length` tokens, or earlier once no live hypothesis can still beat the worst finished one. `beam_size = 1`
with `alpha = 0` is greedy decoding (argmax until EOS).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Any], tuple[Array, Any]]

NEG_INF = -1.0e7  # a log-probability no real hypothesis reaches (finite: keeps arithmetic free of inf - inf)


def length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT length normalization ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
    """x [B, N, ...], indices int [B, K] -> [B, K, ...]."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


def beam_search(step_fn: StepFn, cache: Any, *, batch_size: int, beam_size: int, max_length: int, eos_id: int,
                start_id: int = 0, alpha: float = 0.6) -> tuple[Array, Array]:
    """Decodes `batch_size` examples.

    Args:
      step_fn: the decoder step (module docstring).
      cache: the decoder state for `batch_size` rows (every leaf [batch_size, ...]).
      beam_size: hypotheses kept per example (1 = greedy).
      max_length: most tokens generated per hypothesis (EOS included).
      eos_id: the token that ends a hypothesis.
      start_id: the first decoder input (T5 convention: PAD = 0).
      alpha: length-penalty exponent.
    Returns:
      (tokens int32 [batch_size, beam_size, max_length], scores float32 [batch_size, beam_size]), best first per
      example. Tokens end with EOS and are zero after it; a hypothesis that never produced EOS within `max_length`
      is returned only when an example has no finished one (scored as if it ended there).
    """
    b, k, n = batch_size, beam_size, max_length
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)  # row b * k + j = beam j of example b
    live_logp0 = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
    state = {
        "i": jnp.asarray(0, jnp.int32),
        "live_seqs": jnp.zeros((b, k, n + 1), jnp.int32).at[:, :, 0].set(start_id),
        "live_logp": live_logp0,
        "fin_seqs": jnp.zeros((b, k, n + 1), jnp.int32),
        "fin_scores": jnp.full((b, k), NEG_INF, jnp.float32),
        "fin_flags": jnp.zeros((b, k), bool),
        "cache": cache,
    }

    def not_done(s) -> Array:
        best_possible = s["live_logp"][:, 0] / length_penalty(n, alpha)  # log-probs only fall as a hypothesis grows
        worst_finished = jnp.min(jnp.where(s["fin_flags"], s["fin_scores"], NEG_INF), axis=1)
        done = jnp.all(s["fin_flags"], axis=1) & (worst_finished >= best_possible)
        return (s["i"] < n) & ~jnp.all(done)

    def step(s):
        i = s["i"]
        tokens = s["live_seqs"][:, :, i].reshape(b * k)
        logits, cache = step_fn(tokens, s["cache"])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        vocab = logp.shape[-1]
        candidates = (s["live_logp"][:, :, None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
        top_logp, top_index = jax.lax.top_k(candidates, 2 * k)  # [B, 2K]
        top_beam, top_token = top_index // vocab, top_index % vocab
        top_seqs = _gather_beams(s["live_seqs"], top_beam)
        top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_token[:, :, None], i + 1, axis=2)
        is_eos = top_token == eos_id
        # An ending extension finishes only if it ranks among the best K (fairseq's rule): beam 1 is greedy.
        in_beam = (jnp.arange(2 * k) < k)[None, :] & (top_logp > NEG_INF / 2)

        # Live: the best K extensions that did not end.
        live_logp, live_pos = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_logp), k)
        live_seqs = _gather_beams(top_seqs, live_pos)
        rows = (jnp.arange(b)[:, None] * k + _gather_beams(top_beam, live_pos)).reshape(b * k)
        cache = jax.tree.map(lambda x: x[rows], cache)

        # Finished: the best K of the previous finished set and the extensions that ended now.
        new_flags = is_eos & in_beam
        new_scores = jnp.where(new_flags, top_logp / length_penalty(i + 1, alpha), NEG_INF)
        all_scores = jnp.concatenate([s["fin_scores"], new_scores], axis=1)
        all_flags = jnp.concatenate([s["fin_flags"], new_flags], axis=1)
        all_seqs = jnp.concatenate([s["fin_seqs"], top_seqs], axis=1)
        fin_scores, fin_pos = jax.lax.top_k(jnp.where(all_flags, all_scores, 2 * NEG_INF), k)
        return {"i": i + 1, "live_seqs": live_seqs, "live_logp": live_logp,
                "fin_seqs": _gather_beams(all_seqs, fin_pos), "fin_scores": fin_scores,
                "fin_flags": _gather_beams(all_flags, fin_pos), "cache": cache}

    s = jax.lax.while_loop(not_done, step, state)
    none_finished = ~jnp.any(s["fin_flags"], axis=1)[:, None]
    live_scores = s["live_logp"] / length_penalty(s["i"], alpha)
    seqs = jnp.where(none_finished[:, :, None], s["live_seqs"], s["fin_seqs"])
    scores = jnp.where(none_finished, live_scores, s["fin_scores"])
    return seqs[:, :, 1:], scores
