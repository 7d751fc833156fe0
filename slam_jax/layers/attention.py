"""Multi-head self-attention with padding and packed-segment masks.

All attention runs through `jax.nn.dot_product_attention`, which dispatches to cuDNN flash attention on GPU
(`implementation="cudnn"`) and to XLA elsewhere. `implementation=None` lets JAX pick, with the XLA path as the
fallback when cuDNN cannot serve the shape or mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common

Array = jax.Array


def segment_mask(segment_ids: Array) -> Array:
    """[batch, time] segment ids -> bool [batch, 1, time, time] attention mask.

    A position attends to positions of its own segment. Padding (id 0) attends to padding only, so no row of the
    mask is empty (an empty row would give NaNs in some kernels); padded outputs are zeroed by the caller.
    """
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


class SelfAttention(nnx.Module):
    """Pre-LN multi-head self-attention block: LN -> fused QKV -> attention -> output projection -> dropout.

    Input and output `[batch, time, d_model]`. No relative position encoding (w2v-BERT: "Relative Attention: N").
    """

    def __init__(self, d_model: int, num_heads: int, *, dropout: float = 0.0, dtype: jnp.dtype = jnp.float32,
                 implementation: str | None = None, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        head_dim = d_model // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.dtype, self.dropout_rate, self.implementation = dtype, dropout, implementation
        self.norm = common.layer_norm(d_model, rngs=rngs)
        self.qkv = nnx.Einsum(
            "btd,dknh->btknh", (d_model, 3, num_heads, head_dim), (3, num_heads, head_dim),
            dtype=dtype, param_dtype=jnp.float32,
            kernel_init=common.kernel_init(("embed", None, "heads", "kv")),
            bias_init=common.zeros_init((None, "heads", "kv")), rngs=rngs)
        self.out = nnx.Einsum(
            "btnh,nhd->btd", (num_heads, head_dim, d_model), (d_model,),
            dtype=dtype, param_dtype=jnp.float32,
            kernel_init=common.kernel_init(("heads", "kv", "embed")),
            bias_init=common.zeros_init(("embed",)), rngs=rngs)

    def __call__(self, x: Array, segment_ids: Array, dropout_key: Array | None = None) -> Array:
        """x: [batch, time, d_model]; segment_ids: [batch, time] -> [batch, time, d_model] (residual branch)."""
        h = self.norm(x).astype(self.dtype)
        qkv = self.qkv(h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        y = jax.nn.dot_product_attention(
            q, k, v, mask=segment_mask(segment_ids), implementation=self.implementation)
        return common.dropout(self.out(y.astype(self.dtype)), self.dropout_rate, dropout_key)
