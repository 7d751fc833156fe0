"""Gumbel-softmax vector quantizer (wav2vec 2.0 / w2v-BERT), straight-through hard one-hot in training."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Attributes (V sizes, C mechanism):
      num_codebooks: G groups (1). codebook_size: V entries per group (1024). code_dim: output dim (1024).
      temperature_start / temperature_decay / temperature_floor: tau(step) = max(start * decay^step, floor)
        = 2.0 * 0.999995^step floored at 0.1 (C; wav2vec 2.0 used floor 0.5).
      input_norm: LayerNorm the input before the logit projection (fairseq wav2vec 2.0 quantizes layer-normed
        features); False feeds z as it is.
      logit_init_std: standard deviation of the logit projection's initial weights; 0 = fan-in scaling (std
        1/sqrt(d_in)). fairseq uses 1.0, which over a layer-normed input gives logits of std sqrt(d_in): sharp
        code distributions from the first step, so the sampled code is the argmax code. With fan-in scaling the
        logits start with std ~ rms(input) and the Gumbel-sampled targets are mostly noise (docs/EXPERIMENTS.md).
      codebook_init: 'uniform' = U[0, 1) entries (fairseq's wav2vec 2.0 quantizer; the paper does not say), whose
        shared positive mean makes code vectors start at cosine ~0.75 to each other; 'normal' = N(0, 1) entries
        (ours, an ablation option), cosine ~0 at the start, so the contrastive task's candidates start apart.
    """

    num_codebooks: int = 1
    codebook_size: int = 1024
    code_dim: int = 1024
    temperature_start: float = 2.0
    temperature_decay: float = 0.999995
    temperature_floor: float = 0.1
    input_norm: bool = False
    logit_init_std: float = 0.0
    codebook_init: str = "uniform"

    def __post_init__(self):
        if self.codebook_init not in ("uniform", "normal"):
            raise ValueError(f"codebook_init must be 'uniform' or 'normal', got {self.codebook_init!r}")

    def temperature(self, step: Array | int) -> Array:
        step = jnp.asarray(step, jnp.float32)
        return jnp.maximum(self.temperature_start * self.temperature_decay ** step, self.temperature_floor)


@dataclasses.dataclass
class Quantized:
    """Quantizer outputs for [batch, time] frames.

    vectors: [batch, time, code_dim] quantized targets (receive gradient through the straight-through estimator).
    ids: int32 [batch, time, num_codebooks] code ids (stop-gradient; speech-MLM targets).
    probs: float32 [batch, time, num_codebooks, codebook_size] softmax of the logits (diversity loss, perplexity).
    """

    vectors: Array
    ids: Array
    probs: Array


jax.tree_util.register_dataclass(Quantized, data_fields=["vectors", "ids", "probs"], meta_fields=[])


class GumbelQuantizer(nnx.Module):
    """[batch, time, d_in] -> Quantized. Projection to G x V logits, Gumbel-softmax, codebook lookup."""

    def __init__(self, d_in: int, cfg: QuantizerConfig, *, rngs: nnx.Rngs):
        if cfg.code_dim % cfg.num_codebooks:
            raise ValueError(f"code_dim {cfg.code_dim} not divisible by num_codebooks {cfg.num_codebooks}")
        self.cfg = cfg
        g, v = cfg.num_codebooks, cfg.codebook_size
        self.norm = common.layer_norm(d_in, rngs=rngs) if cfg.input_norm else None
        self.logits = common.dense(d_in, g * v, ("embed", "codes"), dtype=jnp.float32, rngs=rngs)
        if cfg.logit_init_std:
            init = nnx.with_partitioning(jax.nn.initializers.normal(cfg.logit_init_std), ("embed", "codes"))
            self.logits.kernel = nnx.Param(init(rngs.params(), (d_in, g * v)))
        init = jax.nn.initializers.uniform(1.0) if cfg.codebook_init == "uniform" else jax.nn.initializers.normal(1.0)
        self.codebook = nnx.Param(nnx.with_partitioning(init, (None, "codes", None))(
            rngs.params(), (g, v, cfg.code_dim // g)))

    def __call__(self, x: Array, step: Array | int, key: Array | None) -> Quantized:
        """x: [batch, time, d_in]; key: Gumbel noise key (None = deterministic argmax, for evaluation)."""
        cfg = self.cfg
        b, t = x.shape[:2]
        x = x.astype(jnp.float32)
        if self.norm is not None:
            x = self.norm(x)
        logits = self.logits(x).reshape(b, t, cfg.num_codebooks, cfg.codebook_size)
        probs = jax.nn.softmax(logits, axis=-1)
        if key is None:
            ids = jnp.argmax(logits, axis=-1)
            onehot = jax.nn.one_hot(ids, cfg.codebook_size, dtype=jnp.float32)
        else:
            gumbel = jax.random.gumbel(key, logits.shape, jnp.float32)
            soft = jax.nn.softmax((logits + gumbel) / cfg.temperature(step), axis=-1)
            ids = jnp.argmax(soft, axis=-1)
            hard = jax.nn.one_hot(ids, cfg.codebook_size, dtype=jnp.float32)
            onehot = hard + soft - jax.lax.stop_gradient(soft)  # straight-through
        vectors = jnp.einsum("btgv,gvc->btgc", onehot, self.codebook[...]).reshape(b, t, cfg.code_dim)
        return Quantized(vectors=vectors, ids=jax.lax.stop_gradient(ids.astype(jnp.int32)), probs=probs)
