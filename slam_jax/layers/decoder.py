"""Transformer decoder for sequence-to-sequence fine-tuning (speech translation), with a KV cache.

```
tokens [B, L] -> Embed * sqrt(d) + sinusoidal PE -> N x DecoderLayer -> LayerNorm -> tied logits [B, L, vocab]
DecoderLayer (pre-LN):  x += SelfAttn(LN(x), causal);  x += CrossAttn(LN(x), memory);  x += FFN(LN(x))
memory: encoder output [B, S, d_enc] -> Linear(d_enc -> d) once, keys/values of every layer's cross-attention
```
SLAM §4 (CoVoST 2) attaches a 4-layer Transformer decoder (384 dim, 1536 FFN, 4 heads) to the pre-trained encoder;
the paper reports nothing more about it. Our choices, each a field of `DecoderConfig`: pre-LN blocks with ReLU FFN
(Vaswani et al. 2017), sinusoidal absolute positions, output projection tied to the input embedding, a linear
projection of the encoder output to the decoder width, residual dropout 0.1.

Two ways to run it, one set of parameters:
- teacher forcing, `__call__(tokens, memory, memory_mask)`: the whole target prefix at once under a causal mask;
- incremental decoding, `init_cache(memory, memory_mask, max_length)` then `decode_step(tokens, cache)`: one token
  per call against cached keys/values (static shapes: the self-attention cache holds `max_length` positions and
  attends to those already written). Every cache leaf has the batch as its leading axis, so beam search can
  repeat and reorder it row-wise.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common
from slam_jax.layers.text_embedding import sinusoidal_positions

Array = jax.Array
Cache = dict


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Decoder sizes. Defaults: the paper's ST decoder (SLAM §4: 4 layers, 384 dim, 1536 FFN, 4 heads, 8192-token
    multilingual subword vocabulary). dropout (ours: 0.1), tie_embedding (ours: True), dtype: compute dtype."""

    num_layers: int = 4
    d_model: int = 384
    num_heads: int = 4
    ffn_dim: int = 1536
    vocab_size: int = 8192
    dropout: float = 0.1
    tie_embedding: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"DecoderConfig.d_model {self.d_model} is not divisible by num_heads {self.num_heads}")


def causal_mask(length: int) -> Array:
    """bool [1, 1, length, length]: position t attends to positions <= t."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def attend(q: Array, k: Array, v: Array, mask: Array) -> Array:
    """Softmax attention in float32: q [B, T, N, H], k/v [B, S, N, H], mask bool [B, 1, T, S] -> [B, T, N, H]."""
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)


class Attention(nnx.Module):
    """Multi-head attention projections: queries from `x`, keys/values from `kv_source` (self or memory)."""

    def __init__(self, d_model: int, num_heads: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        head_dim = d_model // num_heads
        self.dtype = dtype

        def einsum(spec, kernel, bias, kernel_names, bias_names):
            return nnx.Einsum(spec, kernel, bias, dtype=dtype, param_dtype=jnp.float32,
                              kernel_init=common.kernel_init(kernel_names), bias_init=common.zeros_init(bias_names),
                              rngs=rngs)

        self.query = einsum("btd,dnh->btnh", (d_model, num_heads, head_dim), (num_heads, head_dim),
                            ("embed", "heads", "kv"), ("heads", "kv"))
        self.key_value = einsum("bsd,dknh->kbsnh", (d_model, 2, num_heads, head_dim), (2, num_heads, head_dim),
                                ("embed", None, "heads", "kv"), (None, "heads", "kv"))
        self.out = einsum("btnh,nhd->btd", (num_heads, head_dim, d_model), (d_model,),
                          ("heads", "kv", "embed"), ("embed",))

    def keys_values(self, kv_source: Array) -> tuple[Array, Array]:
        """[B, S, d] -> keys, values [B, S, heads, head_dim]."""
        k, v = self.key_value(kv_source.astype(self.dtype))
        return k, v

    def __call__(self, x: Array, k: Array, v: Array, mask: Array) -> Array:
        """x [B, T, d] attends to k/v [B, S, heads, head_dim] under mask bool [B, 1, T, S] -> [B, T, d]."""
        q = self.query(x.astype(self.dtype))
        return self.out(attend(q, k, v, mask).astype(self.dtype))


class DecoderLayer(nnx.Module):
    """Pre-LN self-attention (causal), cross-attention to the memory, ReLU FFN; residual dropout on each branch."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, dtype = cfg.d_model, common.dtype_of(cfg.dtype)
        self.dropout = cfg.dropout
        self.self_norm = common.layer_norm(d, rngs=rngs)
        self.self_attention = Attention(d, cfg.num_heads, dtype=dtype, rngs=rngs)
        self.cross_norm = common.layer_norm(d, rngs=rngs)
        self.cross_attention = Attention(d, cfg.num_heads, dtype=dtype, rngs=rngs)
        self.ffn_norm = common.layer_norm(d, rngs=rngs)
        self.ffn_in = common.dense(d, cfg.ffn_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.ffn_out = common.dense(cfg.ffn_dim, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, self_mask: Array, cross_kv: tuple[Array, Array], cross_mask: Array,
                 key: Array | None = None, cached_kv: tuple[Array, Array] | None = None,
                 index: Array | None = None) -> tuple[Array, tuple[Array, Array]]:
        """One layer.

        Args:
          x: float32 [B, T, d]. self_mask: bool [B|1, 1, T, S_self]; cross_kv: memory keys, values
            [B, S, heads, head_dim]; cross_mask: bool [B, 1, 1, S]; key: dropout key (None = no dropout).
          cached_kv, index: incremental decoding -- this step's keys/values are written into the cached
            [B, max_length, heads, head_dim] arrays at position `index` and attention reads the whole cache.
        Returns:
          (x [B, T, d], the self-attention keys/values used: [B, T or max_length, heads, head_dim]).
        """
        keys = common.split_key(key, 3)
        h = self.self_norm(x)
        k, v = self.self_attention.keys_values(h)
        if cached_kv is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cached_kv[0], k.astype(cached_kv[0].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cached_kv[1], v.astype(cached_kv[1].dtype), index, axis=1)
        y = self.self_attention(h, k, v, self_mask)
        x = x + common.dropout(y, self.dropout, keys[0]).astype(jnp.float32)
        y = self.cross_attention(self.cross_norm(x), *cross_kv, cross_mask)
        x = x + common.dropout(y, self.dropout, keys[1]).astype(jnp.float32)
        y = self.ffn_out(jax.nn.relu(self.ffn_in(self.ffn_norm(x))))
        return x + common.dropout(y, self.dropout, keys[2]).astype(jnp.float32), (k, v)


class TransformerDecoder(nnx.Module):
    """Token decoder over an encoder memory; see the module docstring."""

    def __init__(self, cfg: DecoderConfig, memory_dim: int, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, dtype = cfg.d_model, common.dtype_of(cfg.dtype)
        self.dtype = dtype
        self.memory_proj = common.dense(memory_dim, d, (None, "embed"), dtype=dtype, rngs=rngs)
        self.embedding = nnx.Embed(
            cfg.vocab_size, d, dtype=dtype, param_dtype=jnp.float32,
            embedding_init=nnx.with_partitioning(jax.nn.initializers.normal(d ** -0.5), ("vocab", "embed")),
            rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = common.layer_norm(d, rngs=rngs)
        if not cfg.tie_embedding:
            self.logits_out = common.dense(d, cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, rngs=rngs)

    # -------------------------------------------------------------------------------------------- pieces
    def _embed(self, tokens: Array, positions: Array) -> Array:
        """tokens, positions [B, T] -> float32 [B, T, d]."""
        x = self.embedding(tokens).astype(jnp.float32) * math.sqrt(self.cfg.d_model)
        return x + sinusoidal_positions(positions, self.cfg.d_model)

    def _logits(self, x: Array) -> Array:
        """[B, T, d] -> float32 [B, T, vocab]."""
        x = self.final_norm(x)
        if self.cfg.tie_embedding:
            return self.embedding.attend(x.astype(self.dtype)).astype(jnp.float32)
        return self.logits_out(x)

    def _cross_kv(self, memory: Array) -> list[tuple[Array, Array]]:
        m = self.memory_proj(memory.astype(self.dtype))
        return [layer.cross_attention.keys_values(m) for layer in self.layers]

    # -------------------------------------------------------------------------------------------- teacher forcing
    def __call__(self, tokens: Array, memory: Array, memory_mask: Array, key: Array | None = None) -> Array:
        """Teacher forcing.

        Args:
          tokens: int [B, L] decoder inputs (the targets shifted right behind the start id).
          memory: [B, S, memory_dim] encoder output; memory_mask: bool [B, S] (True = real frame).
          key: dropout key (None = no dropout).
        Returns:
          float32 logits [B, L, vocab]; position t sees inputs 0..t only.
        """
        b, length = tokens.shape
        x = self._embed(tokens, jnp.broadcast_to(jnp.arange(length), (b, length)))
        self_mask, cross_mask = causal_mask(length), memory_mask[:, None, None, :]
        keys = common.split_key(key, len(self.layers))
        for layer, cross_kv, k in zip(self.layers, self._cross_kv(memory), keys):
            x, _ = layer(x, self_mask, cross_kv, cross_mask, k)
        return self._logits(x)

    # -------------------------------------------------------------------------------------------- incremental
    def init_cache(self, memory: Array, memory_mask: Array, max_length: int) -> Cache:
        """The decoding state before the first step.

        Returns {"index": int32 [B] (next position, 0), "memory_mask": bool [B, S], "layers": [{"k", "v": zeros
        [B, max_length, heads, head_dim], "cross_k", "cross_v": [B, S, heads, head_dim]} per layer]}.
        """
        b = memory.shape[0]
        shape = (b, max_length, self.cfg.num_heads, self.cfg.d_model // self.cfg.num_heads)
        layers = [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype), "cross_k": ck,
                   "cross_v": cv} for ck, cv in self._cross_kv(memory)]
        return {"index": jnp.zeros((b,), jnp.int32), "memory_mask": memory_mask.astype(bool), "layers": layers}

    def decode_step(self, tokens: Array, cache: Cache) -> tuple[Array, Cache]:
        """One decoding step: tokens int [B] at position `cache["index"]` -> (float32 logits [B, vocab], new cache).

        Every row of a cache is at the same position (the beam search advances all rows together).
        """
        index = cache["index"][0]
        max_length = cache["layers"][0]["k"].shape[1]
        x = self._embed(tokens[:, None], cache["index"][:, None])
        self_mask = (jnp.arange(max_length) <= index)[None, None, None, :]
        cross_mask = cache["memory_mask"][:, None, None, :]
        new_layers = []
        for layer, lc in zip(self.layers, cache["layers"]):
            x, (k, v) = layer(x, self_mask, (lc["cross_k"], lc["cross_v"]), cross_mask,
                              cached_kv=(lc["k"], lc["v"]), index=index)
            new_layers.append({**lc, "k": k, "v": v})
        new_cache = {"index": cache["index"] + 1, "memory_mask": cache["memory_mask"], "layers": new_layers}
        return self._logits(x)[:, 0], new_cache
