"""The Conformer block (lingvo convention) with segment-aware depthwise convolution and GroupNorm.

```
x += 0.5 * FFN(x);  x += MHSA(x);  x += ConvModule(x);  x += 0.5 * FFN(x);  x = LN(x)
FFN  = LN -> Dense(ffn) -> Swish -> Dropout -> Dense(d) -> Dropout
Conv = LN -> Dense(2d) -> GLU -> DepthwiseConv1D(k) -> GroupNorm -> Swish -> Dense(d) -> Dropout
```
Every block takes two id maps, both `[batch, time]` with 0 = padding:
- `segment_ids` group positions for attention (one example = one segment);
- `conv_segment_ids` group positions for the local operators (depthwise conv and GroupNorm statistics). They equal
  `segment_ids` except for paired rows, where text and speech are separate local segments of one example.
Outputs at padded positions are zero.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common
from slam_jax.layers.attention import SelfAttention

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """Hyper-parameters of one Conformer block.

    Attributes:
      d_model, num_heads, ffn_dim, conv_kernel: SLAM 600M: 1024 / 8 / 4096 / 5.
      group_norm_groups, group_norm_eps: GroupNorm in the conv module (C: 32 groups, eps 1e-3).
      dropout: residual-branch dropout rate (?: not reported; default 0.0).
      dtype: compute dtype of matmuls and convolutions ('float32' or 'bfloat16'); params, norms, softmax stay fp32.
      conv_impl: depthwise conv implementation. 'shift' (sum of k shifted multiplies, exact at segment boundaries,
        fast forward and backward on every backend) or 'native' (XLA grouped convolution; zeroes padding but mixes
        adjacent packed segments, so use it only with one example per row).
      attention_impl: None (auto: 'head_major' on CPU, else `jax.nn.dot_product_attention` picks), 'xla' or
        'cudnn' (`jax.nn.dot_product_attention`), or 'head_major' (same math, heads-first layout; fastest on XLA:CPU).
    """

    d_model: int = 1024
    num_heads: int = 8
    ffn_dim: int = 4096
    conv_kernel: int = 5
    group_norm_groups: int = 32
    group_norm_eps: float = 1e-3
    dropout: float = 0.0
    dtype: str = "float32"
    conv_impl: str = "shift"
    attention_impl: str | None = None

    def __post_init__(self):
        if self.conv_kernel % 2 != 1:
            raise ValueError(f"conv_kernel must be odd, got {self.conv_kernel}")
        if self.d_model % self.group_norm_groups:
            raise ValueError(f"d_model {self.d_model} not divisible by group_norm_groups {self.group_norm_groups}")
        if self.conv_impl not in ("shift", "native"):
            raise ValueError(f"conv_impl must be 'shift' or 'native', got {self.conv_impl!r}")


def depthwise_conv1d(x: Array, kernel: Array, segment_ids: Array, impl: str = "shift") -> Array:
    """Centred depthwise 1-D convolution over time that never reads across segments or padding.

    Args:
      x: [batch, time, channels].
      kernel: [k, channels], k odd; output t reads x[t - k//2 .. t + k//2].
      segment_ids: [batch, time], 0 = padding.
      impl: 'shift' computes sum_j kernel[j] * x[t + j - k//2] masked to the same segment (XLA fuses this into one
        elementwise loop; its gradient is ~16x faster than the grouped convolution's on XLA:CPU, docs/PERFORMANCE.md measures it);
        'native' zeroes padding and calls the grouped convolution (fast on GPU/TPU, segment-unaware).
    Returns:
      [batch, time, channels] in x.dtype.
    """
    k = kernel.shape[0]
    half = k // 2
    kernel = kernel.astype(x.dtype)
    if impl == "native":
        x = x * common.valid_mask(segment_ids, x.dtype)
        y = jax.lax.conv_general_dilated(
            x, kernel[:, None, :], window_strides=(1,), padding=[(half, half)],
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])
        return y
    t = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (half, half), (0, 0)))
    sp = jnp.pad(segment_ids, ((0, 0), (half, half)), constant_values=-1)
    y = jnp.zeros_like(x)
    for j in range(k):
        same = (sp[:, j:j + t] == segment_ids)[..., None]
        y = y + jnp.where(same, xp[:, j:j + t], 0) * kernel[j]
    return y


def segment_starts(segment_ids: Array) -> Array:
    """[batch, time] -> [batch, time] index of the first position of each position's (contiguous) segment."""
    t = jnp.arange(segment_ids.shape[1])
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    return jax.lax.cummax(jnp.where(change, t, 0), axis=1)


def segment_reduce(values: Array, segment_ids: Array) -> Array:
    """Sums `values` [batch, time, ...] over each contiguous segment and broadcasts back to [batch, time, ...].

    Segments are contiguous runs of equal id within a row (padding is a run too and gets its own sum).
    """
    b, t = segment_ids.shape
    run = segment_starts(segment_ids) + t * jnp.arange(b)[:, None]  # unique id per run: its start position
    flat = values.reshape((b * t,) + values.shape[2:])
    sums = jax.ops.segment_sum(flat, run.reshape(-1), num_segments=b * t, indices_are_sorted=True)
    return sums[run.reshape(-1)].reshape(values.shape)


def segment_group_norm(x: Array, segment_ids: Array, scale: Array, bias: Array, num_groups: int,
                       eps: float) -> Array:
    """GroupNorm whose statistics run over the frames of one segment only (padding excluded), in float32.

    Args:
      x: [batch, time, channels]; segment_ids: [batch, time]; scale, bias: [channels].
    Returns:
      [batch, time, channels] float32; zero at padding.
    """
    b, t, c = x.shape
    valid = common.valid_mask(segment_ids)  # [b, t, 1]
    xg = (x.astype(jnp.float32) * valid).reshape(b, t, num_groups, c // num_groups)
    count = segment_reduce(valid, segment_ids) * (c // num_groups)  # [b, t, 1]
    count = jnp.maximum(count, 1.0)
    mean = segment_reduce(xg.sum(-1), segment_ids) / count  # [b, t, g]
    centred = (xg - mean[..., None]) * valid[..., None]
    var = segment_reduce(jnp.square(centred).sum(-1), segment_ids) / count
    y = centred * jax.lax.rsqrt(var + eps)[..., None]
    return (y.reshape(b, t, c) * scale + bias) * valid


class FeedForward(nnx.Module):
    """LN -> Dense(ffn) -> Swish -> Dropout -> Dense(d) -> Dropout; [batch, time, d] -> [batch, time, d]."""

    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        dtype = common.dtype_of(cfg.dtype)
        self.rate, self.dtype = cfg.dropout, dtype
        self.norm = common.layer_norm(cfg.d_model, rngs=rngs)
        self.up = common.dense(cfg.d_model, cfg.ffn_dim, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.down = common.dense(cfg.ffn_dim, cfg.d_model, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, key: Array | None = None) -> Array:
        k1, k2 = common.split_key(key, 2)
        h = jax.nn.swish(self.up(self.norm(x).astype(self.dtype)))
        return common.dropout(self.down(common.dropout(h, self.rate, k1)), self.rate, k2)


class ConvModule(nnx.Module):
    """LN -> Dense(2d) -> GLU -> DepthwiseConv1D -> GroupNorm -> Swish -> Dense(d) -> Dropout."""

    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        d, dtype = cfg.d_model, common.dtype_of(cfg.dtype)
        self.cfg, self.dtype = cfg, dtype
        self.norm = common.layer_norm(d, rngs=rngs)
        self.pointwise_in = common.dense(d, 2 * d, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.depthwise = nnx.Param(
            common.kernel_init((None, "embed"))(rngs.params(), (cfg.conv_kernel, d), jnp.float32))
        self.gn_scale = nnx.Param(common.ones_init(("embed",))(rngs.params(), (d,), jnp.float32))
        self.gn_bias = nnx.Param(common.zeros_init(("embed",))(rngs.params(), (d,), jnp.float32))
        self.pointwise_out = common.dense(d, d, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, conv_segment_ids: Array, key: Array | None = None) -> Array:
        cfg = self.cfg
        h = self.pointwise_in(self.norm(x).astype(self.dtype))
        h = jax.nn.glu(h, axis=-1)
        h = depthwise_conv1d(h, self.depthwise[...], conv_segment_ids, cfg.conv_impl)
        h = segment_group_norm(h, conv_segment_ids, self.gn_scale[...], self.gn_bias[...],
                               cfg.group_norm_groups, cfg.group_norm_eps)
        h = jax.nn.swish(h).astype(self.dtype)
        return common.dropout(self.pointwise_out(h), cfg.dropout, key)


class ConformerBlock(nnx.Module):
    """One Conformer block; [batch, time, d_model] -> [batch, time, d_model], zero at padding."""

    def __init__(self, cfg: ConformerConfig, *, rngs: nnx.Rngs):
        self.ffn1 = FeedForward(cfg, rngs=rngs)
        self.attention = SelfAttention(cfg.d_model, cfg.num_heads, dropout=cfg.dropout,
                                       dtype=common.dtype_of(cfg.dtype), implementation=cfg.attention_impl,
                                       rngs=rngs)
        self.conv = ConvModule(cfg, rngs=rngs)
        self.ffn2 = FeedForward(cfg, rngs=rngs)
        self.final_norm = common.layer_norm(cfg.d_model, rngs=rngs)

    def __call__(self, x: Array, segment_ids: Array, conv_segment_ids: Array,
                 key: Array | None = None) -> Array:
        k1, k2, k3, k4 = common.split_key(key, 4)
        dtype = x.dtype
        x = x + (0.5 * self.ffn1(x, k1)).astype(dtype)
        x = x + self.attention(x, segment_ids, k2).astype(dtype)
        x = x + self.conv(x, conv_segment_ids, k3).astype(dtype)
        x = x + (0.5 * self.ffn2(x, k4)).astype(dtype)
        return (self.final_norm(x) * common.valid_mask(segment_ids)).astype(dtype)


REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # no rematerialization: keep every activation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class ConformerStack(nnx.Module):
    """`num_layers` Conformer blocks with stacked parameters (leading `layers` axis), run with `nnx.scan`.

    Scanning keeps compile time flat in depth; `remat` picks a `jax.checkpoint` policy from REMAT_POLICIES.
    `scan_layers=False` unrolls the scan (same parameters and numerics, no while loop; compile time grows with
    depth): for debugging, and for XLA:CPU multi-device runs, whose in-process collectives inside a while loop can
    deadlock when the fake devices outnumber the cores.
    """

    def __init__(self, cfg: ConformerConfig, num_layers: int, *, remat: str = "full", scan_layers: bool = True,
                 rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}")
        self.num_layers, self.remat, self.scan_layers = num_layers, remat, scan_layers

        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(r: nnx.Rngs) -> ConformerBlock:
            return ConformerBlock(cfg, rngs=r)

        self.blocks = make(rngs)

    def __call__(self, x: Array, segment_ids: Array, conv_segment_ids: Array | None = None,
                 key: Array | None = None, return_layers: bool = False) -> Array | tuple[Array, Array]:
        """x: [batch, time, d_model] -> [batch, time, d_model].

        With `return_layers`, returns (top, every layer's output [num_layers, batch, time, d_model]) for probes and
        health metrics (the last entry is `top`).
        """
        if conv_segment_ids is None:
            conv_segment_ids = segment_ids
        keys = None if key is None else jax.random.split(key, self.num_layers)

        def layer(x, block, key):
            x = common.constrain(x, common.BATCH_ACTIVATION)
            x = common.constrain(block(x, segment_ids, conv_segment_ids, key), common.BATCH_ACTIVATION)
            return (x, x) if return_layers else x

        policy = REMAT_POLICIES[self.remat]
        if self.remat != "none":
            layer = nnx.remat(layer, policy=policy)
        scan = nnx.scan(layer, in_axes=(nnx.Carry, 0, 0 if keys is not None else None),
                        out_axes=(nnx.Carry, 0) if return_layers else nnx.Carry,
                        unroll=1 if self.scan_layers else True)
        return scan(x, self.blocks, keys)
