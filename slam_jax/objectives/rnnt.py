"""The RNN-T (transducer) loss (Graves 2012, arXiv 1211.3711), in log space, vectorized along anti-diagonals.

The lattice has a node (t, u) for every encoder frame t < T and label prefix length u <= U. From (t, u) a blank
moves to (t + 1, u) and label y[u] moves to (t, u + 1); an utterance ends with the blank out of (T - 1, U). With
`blank[t, u] = log p(blank | t, u)` and `emit[t, u] = log p(y[u] | t, u)` the forward variable is

    alpha[0, 0] = 0
    alpha[t, u] = logaddexp(alpha[t - 1, u] + blank[t - 1, u], alpha[t, u - 1] + emit[t, u - 1])
    log p(y | x) = alpha[T - 1, U] + blank[T - 1, U]

All nodes on one anti-diagonal n = t + u depend only on diagonal n - 1, so the recursion is a `lax.scan` over
T + U diagonals with every node of a diagonal (and every row) computed at once, as in warp-transducer's GPU kernel
and k2's. Padding costs nothing: the nodes read for row b lie at t < T_b, u <= U_b, whatever the padded cells hold.

Memory: the joint network's output [B, T, U + 1, V] is the classic limit (B=8, T=250, U=60, V=1024 in float32 is
500 MB, and autodiff keeps the log-softmax and its gradient beside it). `lattice_log_probs` gathers the two lattices
through a custom VJP that keeps only the log-normalizer [B, T, U + 1] (the gradient of the softmax is rebuilt from
the logits), and `chunked_lattice_log_probs` evaluates the joint network over chunks of frames under
`jax.checkpoint`, so only one chunk's [B, Tc, U + 1, V] exists at a time, in the forward and in the backward pass.
docs/PERFORMANCE.md reports what each saves.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from slam_jax.objectives.common import masked_mean

Array = jax.Array


def _at_least_f32(x: Array) -> Array:
    """bfloat16 / float16 -> float32; float32 and float64 (gradient checks) stay."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# A finite "log 0": -inf would make logaddexp's gradient NaN where both arguments are impossible.
LOG_ZERO = -1e30


# ------------------------------------------------------------------------------------- log-prob lattices
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def lattice_log_probs(logits: Array, labels: Array, blank_id: int = 0) -> tuple[Array, Array]:
    """Log-softmax of the joint outputs gathered at the blank and at the next label, without keeping the full
    log-softmax for the backward pass.

    Args:
      logits: float [B, T, U + 1, V] joint network outputs. labels: int [B, U]. blank_id: the blank's id.
    Returns:
      blank: float32 [B, T, U + 1], log p(blank | t, u); emit: float32 [B, T, U], log p(labels[u] | t, u).
    """
    return _lattice_fwd(logits, labels, blank_id)[0]


def _lattice_fwd(logits, labels, blank_id):
    x = _at_least_f32(logits)
    lse = jax.nn.logsumexp(x, axis=-1)                                      # [B, T, U + 1]
    blank = x[..., blank_id] - lse
    emit = jnp.take_along_axis(x[:, :, :-1], labels[:, None, :, None], axis=-1)[..., 0] - lse[:, :, :-1]
    return (blank, emit), (logits, labels, lse)


def _lattice_bwd(blank_id, res, grads):
    logits, labels, lse = res
    g_blank, g_emit = grads                                                  # [B, T, U + 1], [B, T, U]
    x = _at_least_f32(logits)
    # d(x_k - lse)/dx = onehot(k) - softmax(x): the softmax is weighted by the total incoming gradient per node.
    g_total = g_blank + jnp.pad(g_emit, ((0, 0), (0, 0), (0, 1)))
    grad = -jnp.exp(x - lse[..., None]) * g_total[..., None]
    grad = grad.at[..., blank_id].add(g_blank)
    vocab = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, vocab, dtype=x.dtype)               # [B, U, V]
    grad = grad.at[:, :, :-1].add(g_emit[..., None] * onehot[:, None])
    return grad.astype(logits.dtype), None


lattice_log_probs.defvjp(_lattice_fwd, _lattice_bwd)


def chunked_lattice_log_probs(joint: Callable[[Array, Array], Array], encoder_out: Array, predictor_out: Array,
                              labels: Array, blank_id: int = 0, time_chunk: int = 0) -> tuple[Array, Array]:
    """The two lattices of `lattice_log_probs` with the joint network evaluated `time_chunk` frames at a time.

    Args:
      joint: (encoder [B, Tc, D_enc], predictor [B, U + 1, D_pred]) -> logits [B, Tc, U + 1, V].
      encoder_out: [B, T, D_enc]; predictor_out: [B, U + 1, D_pred]; labels: int [B, U].
      time_chunk: frames per chunk (0 or >= T: one chunk). Each chunk runs under `jax.checkpoint`, so the backward
        pass recomputes its logits instead of storing them; T is padded up to a multiple of the chunk.
    Returns:
      blank [B, T, U + 1], emit [B, T, U] (float32).
    """
    frames = encoder_out.shape[1]
    if not time_chunk or time_chunk >= frames:
        return lattice_log_probs(joint(encoder_out, predictor_out), labels, blank_id)

    @jax.checkpoint
    def one_chunk(enc_chunk):
        return lattice_log_probs(joint(enc_chunk, predictor_out), labels, blank_id)

    chunks = -(-frames // time_chunk)
    padded = jnp.pad(encoder_out, ((0, 0), (0, chunks * time_chunk - frames), (0, 0)))
    xs = padded.reshape(padded.shape[0], chunks, time_chunk, -1).swapaxes(0, 1)  # [chunks, B, Tc, D]
    blank, emit = jax.lax.map(one_chunk, xs)                                      # [chunks, B, Tc, ...]
    merge = lambda a: a.swapaxes(0, 1).reshape(a.shape[1], chunks * time_chunk, *a.shape[3:])[:, :frames]
    return merge(blank), merge(emit)


# ------------------------------------------------------------------------------------------ the recursion
def _skew(x: Array, diagonals: int) -> Array:
    """[B, T, W] -> [n, B, W] with out[n, b, u] = x[b, n - u, u] (LOG_ZERO where n - u is outside [0, T))."""
    frames, width = x.shape[1], x.shape[2]
    n = jnp.arange(diagonals)[:, None]
    t = n - jnp.arange(width)[None, :]                                             # [n, W]
    inside = (t >= 0) & (t < frames)
    gathered = x[:, jnp.clip(t, 0, frames - 1), jnp.arange(width)[None, :]]        # [B, n, W]
    return jnp.where(inside[None], gathered, jnp.asarray(LOG_ZERO, x.dtype)).swapaxes(0, 1)


def transducer_log_likelihood(blank: Array, emit: Array, frame_lengths: Array, label_lengths: Array) -> Array:
    """log p(y | x) per row from the lattices of `lattice_log_probs`.

    Args:
      blank: float [B, T, U + 1]; emit: float [B, T, U]; frame_lengths / label_lengths: int [B] (T_b >= 1, U_b >= 0).
    Returns:
      float32 [B]. Differentiable by autodiff: the scan keeps one [B, U + 1] diagonal per step.
    """
    blank, emit = _at_least_f32(blank), _at_least_f32(emit)
    batch, frames, width = blank.shape
    diagonals = frames + width - 1
    blank_sk = _skew(blank, diagonals)                                              # [n, B, U + 1]
    emit_sk = _skew(emit, diagonals)                                                # [n, B, U]
    first = jnp.full((batch, width), LOG_ZERO, blank.dtype).at[:, 0].set(0.0)

    def step(alpha, inputs):
        b, e = inputs                                                               # diagonal n - 1's arcs
        from_left = jnp.pad(alpha[:, :-1] + e, ((0, 0), (1, 0)), constant_values=LOG_ZERO)
        new = jnp.maximum(jnp.logaddexp(alpha + b, from_left), LOG_ZERO)
        return new, new

    _, rest = jax.lax.scan(step, first, (blank_sk[:-1], emit_sk[:-1]))
    alphas = jnp.concatenate([first[None], rest], axis=0)                          # [n, B, U + 1]
    last_t = jnp.maximum(frame_lengths, 1) - 1
    rows = jnp.arange(batch)
    final_alpha = alphas[last_t + label_lengths, rows, label_lengths]
    return final_alpha + blank[rows, last_t, label_lengths]


def rnnt_loss(blank: Array, emit: Array, frame_valid: Array, label_valid: Array) -> tuple[Array, dict[str, Array]]:
    """Per-utterance transducer NLL normalized by label length (as `ctc.ctc_loss`), averaged over rows with
    labels and frames.

    Args:
      blank / emit: the lattices [B, T, U + 1] / [B, T, U]; frame_valid: bool [B, T]; label_valid: bool [B, U]
        (valid labels first in each row).
    """
    frame_lengths = frame_valid.sum(-1).astype(jnp.int32)
    label_lengths = label_valid.sum(-1).astype(jnp.int32)
    nll = -transducer_log_likelihood(blank, emit, frame_lengths, label_lengths)
    rows = (label_lengths > 0) & (frame_lengths > 0)
    loss, count = masked_mean(nll / jnp.maximum(label_lengths, 1), rows)
    return loss, {"loss": loss, "count": count}
