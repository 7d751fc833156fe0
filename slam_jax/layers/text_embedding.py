"""Text front-end: token embedding + sinusoidal absolute positions -> LayerNorm ("text encoder", no layers)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.layers import common

Array = jax.Array


def sinusoidal_positions(positions: Array, d_model: int, max_timescale: float = 1e4) -> Array:
    """[batch, length] int positions -> [batch, length, d_model] float32 Transformer sinusoids (sin | cos)."""
    half = d_model // 2
    inv = np.exp(-np.log(max_timescale) * np.arange(half) / max(half - 1, 1)).astype(np.float32)
    angles = positions.astype(jnp.float32)[..., None] * inv
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TextEmbedding(nnx.Module):
    """[batch, length] token ids -> [batch, length, d_model].

    `token_mask` (bool [batch, length]) replaces the embedding of masked tokens by a learned [MASK] vector, so
    masking needs no reserved id in the user's SentencePiece vocabulary.
    """

    def __init__(self, vocab_size: int, d_model: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.d_model, self.dtype = d_model, dtype
        self.embedding = nnx.Embed(
            vocab_size, d_model, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(0.02), ("vocab", "embed")), rngs=rngs)
        self.mask_embedding = nnx.Param(
            nnx.with_partitioning(jax.nn.initializers.normal(0.02), ("embed",))(rngs.params(), (d_model,)))
        self.norm = common.layer_norm(d_model, rngs=rngs)

    def __call__(self, tokens: Array, segment_ids: Array, positions: Array,
                 token_mask: Array | None = None) -> Array:
        x = self.embedding(tokens).astype(jnp.float32)
        if token_mask is not None:
            x = jnp.where(token_mask[..., None], self.mask_embedding[...], x)
        x = x + sinusoidal_positions(positions, self.d_model)
        x = (self.norm(x) * common.valid_mask(segment_ids)).astype(self.dtype)
        return common.constrain(x, common.BATCH_ACTIVATION)

    def attend(self, h: Array) -> Array:
        """Tied output projection: [batch, length, d_model] -> [batch, length, vocab] float32 logits."""
        h = common.constrain(h.astype(self.dtype), common.BATCH_ACTIVATION)
        return common.constrain(self.embedding.attend(h).astype(jnp.float32), common.BATCH_ACTIVATION)
