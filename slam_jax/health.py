"""Self-supervised health metrics: is the encoder collapsing, are the quantizer's targets signal or noise?

Pure functions of activations and quantizer outputs (used in the train step, the held-out evaluation and
`slam-eval --probes`), and a host-side check that turns the logged values into warnings.

Why these (fairseq's wav2vec 2.0 logs the first three; the rest are ours):
  code perplexity of the *argmax* codes (fairseq's `code_perplexity`): how many codes the quantizer really uses.
    Computed from the Gumbel-sampled codes it reads high even for a quantizer whose logits are flat, because the
    noise spreads the samples over the codebook.
  prob perplexity (fairseq's `prob_perplexity`): perplexity of the batch-mean softmax, what the diversity loss raises.
  max code probability and the rate at which the sampled code equals the argmax code: with flat logits the
    sampled targets are mostly Gumbel noise and neither the contrastive nor the masked-prediction loss can learn.
  effective rank (participation ratio of the covariance eigenvalues, `(sum l)^2 / sum l^2`, between 1 and d) and the
    mean pairwise cosine of frame features: a collapsed encoder maps every frame to a few directions.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


def effective_rank(x: Array, valid: Array) -> Array:
    """Participation ratio `tr(C)^2 / ||C||_F^2` of the covariance C of the valid rows of x.

    Equals `(sum_i l_i)^2 / sum_i l_i^2` over C's eigenvalues without an eigendecomposition: d for isotropic
    features, 1 for features on one line. Args: x [..., d]; valid bool [...] (rows that count). Returns a float32
    scalar (0 when fewer than two rows are valid).
    """
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    w = valid.reshape(-1).astype(jnp.float32)[:, None]
    n = jnp.maximum(w.sum(), 1.0)
    centred = (x - (x * w).sum(0) / n) * w
    cov = jnp.einsum("nd,ne->de", centred, centred, precision=jax.lax.Precision.HIGHEST) / n
    trace = jnp.trace(cov)
    return jnp.where(w.sum() > 1, trace ** 2 / jnp.maximum(jnp.sum(cov * cov), 1e-30), 0.0)


def mean_pairwise_cosine(x: Array, valid: Array) -> Array:
    """Mean cosine similarity over all pairs of distinct valid rows of x [..., d] (valid bool [...]).

    `(||sum_i u_i||^2 - n) / (n (n - 1))` for the unit vectors u_i: O(n d), no n x n matrix. Near 0 for random
    directions in many dimensions, 1 when every row points the same way.
    """
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    w = valid.reshape(-1).astype(jnp.float32)[:, None]
    u = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12)) * w
    n = w.sum()
    total = jnp.sum(u.sum(0) ** 2)
    return jnp.where(n > 1, (total - n) / jnp.maximum(n * (n - 1), 1.0), 0.0)


def perplexity(p: Array) -> Array:
    """exp(entropy) of distributions p [..., V] (natural log), per leading index."""
    return jnp.exp(-jnp.sum(p * jnp.log(p + 1e-7), -1))


def code_perplexity(ids: Array, valid: Array, codebook_size: int) -> Array:
    """Perplexity of the code histogram per group: ids int [batch, time, G], valid bool [batch, time] -> [G].

    Uniform use of V codes gives V; one code for every frame gives 1.
    """
    hist = jax.nn.one_hot(ids, codebook_size) * valid.astype(jnp.float32)[..., None, None]
    return perplexity(hist.sum((0, 1)) / jnp.maximum(valid.sum(), 1))


def quantizer_health(probs: Array, sampled_ids: Array | None, valid: Array) -> dict[str, Array]:
    """Health of a Gumbel quantizer on valid frames.

    Args:
      probs: float32 [batch, time, G, V] softmax of the logits; sampled_ids: int [batch, time, G] the Gumbel-sampled
        codes (None in evaluation, where the argmax is used); valid: bool [batch, time].
    Returns:
      code_perplexity (argmax codes) and prob_perplexity (batch-mean softmax), summed over groups as fairseq
      logs them, plus `code_perplexity/gK` / `prob_perplexity/gK` per group when G > 1; max_code_prob (mean over
      frames and groups of the largest code probability); and, with sampled ids, sampled_is_argmax (the fraction of
      frame-groups whose sampled code is the argmax code: near 1 when targets are signal, near 1/V for flat logits).
    """
    g, v = probs.shape[-2:]
    argmax = jnp.argmax(probs, -1)
    w = valid.astype(jnp.float32)
    frames = jnp.maximum(w.sum(), 1.0)
    code_ppl = code_perplexity(argmax, valid, v)
    prob_ppl = perplexity((probs * w[..., None, None]).sum((0, 1)) / frames)
    out = {"code_perplexity": code_ppl.sum(), "prob_perplexity": prob_ppl.sum(),
           "max_code_prob": (probs.max(-1).mean(-1) * w).sum() / frames}
    if g > 1:
        for k in range(g):
            out[f"code_perplexity/g{k}"] = code_ppl[k]
            out[f"prob_perplexity/g{k}"] = prob_ppl[k]
    if sampled_ids is not None:
        out["sampled_is_argmax"] = ((sampled_ids == argmax).mean(-1) * w).sum() / frames
    return out


def codebook_cosine(codebook: Array) -> Array:
    """Mean pairwise cosine of the code vectors of each group, averaged over groups: codebook [G, V, d]."""
    valid = jnp.ones(codebook.shape[1], bool)
    return jnp.mean(jax.vmap(lambda c: mean_pairwise_cosine(c, valid))(codebook))


# ------------------------------------------------------------------------------------------------ warnings
@dataclasses.dataclass(frozen=True)
class HealthThresholds:
    """When a pre-training run looks unhealthy (our choice; the defaults fire on the collapsed toy runs measured in
    docs/EXPERIMENTS.md and stay quiet at random initialization, where the tiny model's ranks are 8-30).

    min_rank: effective rank below which frame features count as collapsed.
    min_sampled_is_argmax: below it, most quantizer targets are Gumbel noise.
    min_code_fraction: argmax code perplexity below this fraction of G x V (and below 2 codes, whatever the
      codebook size) counts as codebook collapse.
    after_step: no warning before this step (the first updates move every statistic).
    """

    min_rank: float = 4.0
    min_sampled_is_argmax: float = 0.5
    min_code_fraction: float = 0.02
    after_step: int = 100


RANK_METRICS = {"feature_rank": "the subsampled features z", "context_rank": "the speech-stack output",
                "top_rank": "the top layer"}


def warnings(metrics: dict[str, float], step: int, codebook_entries: int,
             thresholds: HealthThresholds = HealthThresholds()) -> dict[str, str]:
    """Warnings for the logged metrics of one step (keys `kind/metric`, any kind): {metric key: message}, empty
    when healthy."""
    if step < thresholds.after_step:
        return {}
    out = {}
    for key, value in sorted(metrics.items()):
        kind, _, name = key.partition("/")
        if kind == "eval" or not name:
            continue
        if name in RANK_METRICS and 0 < value < thresholds.min_rank:
            out[key] = (f"{kind}: the effective rank of {RANK_METRICS[name]} is {value:.2f} (< {thresholds.min_rank}):"
                        f" the encoder maps every frame to a few directions (collapse)")
        elif name == "sampled_is_argmax" and value < thresholds.min_sampled_is_argmax:
            out[key] = (f"{kind}: the sampled code equals the argmax code for {value:.0%} of frames: most quantizer "
                        f"targets are Gumbel noise (flat quantizer logits)")
        elif name == "code_perplexity" and value < max(2.0, thresholds.min_code_fraction * codebook_entries):
            out[key] = (f"{kind}: argmax code perplexity {value:.1f} of {codebook_entries} codes: the codebook has "
                        f"collapsed")
    return out
