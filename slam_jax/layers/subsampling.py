"""Convolutional subsampling front-end: log-mel [batch, T, 80] -> [batch, ceil(T/4), d_model].

Two Conv2D layers (3x3 over time x frequency, stride 2 x 2, ReLU), then a linear projection to d_model. Each
convolution reads time steps t-1, t, t+1 around every kept frame, masked to the frame's own segment, so padding
and neighbouring packed utterances never leak in (segments must start at multiples of 4 frames, as the data
contract guarantees). The time taps are stacked as channels and convolved over frequency only, which is the same
3x3 convolution.

The frequency convolution runs as one matmul over explicitly gathered taps (`_freq_conv`): XLA:CPU's convolution
and its gradient were ~15x slower than the equivalent dot (docs/PERFORMANCE.md), and on GPU/TPU the dot maps to
the same matrix units. Parameters keep the `nnx.Conv` layout `[1, 3, in, out]`, so checkpoints are unchanged.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common

Array = jax.Array


def subsample_segment_ids(segment_ids: Array, factor: int = 4) -> Array:
    """[batch, T] -> [batch, ceil(T / factor)] segment ids of the kept frames."""
    return segment_ids[:, ::factor]


def subsampled_length(num_frames: int, factor: int = 4) -> int:
    """Frames after subsampling a (segment of) `num_frames` frames starting at a multiple of `factor`."""
    return -(-num_frames // factor)


def _time_taps(x: Array, segment_ids: Array) -> Array:
    """[b, t, f, c] -> [b, ceil(t/2), f, 3c]: frames 2s-1, 2s, 2s+1 of the same segment (else 0), stacked.

    Only the kept (even) frames are gathered, so no tap of a dropped frame is ever materialized.
    """
    t = x.shape[1]
    out = -(-t // 2)
    xp = jnp.pad(x, ((0, 0), (1, 2), (0, 0), (0, 0)))  # xp[p] = x[p - 1]
    sp = jnp.pad(segment_ids, ((0, 0), (1, 2)), constant_values=-1)
    centre = segment_ids[:, ::2]
    taps = []
    for j in range(3):  # tap j of kept frame s reads frame 2s + j - 1 = xp[2s + j]
        same = (sp[:, j:j + 2 * out - 1:2] == centre) & (centre > 0)
        taps.append(jnp.where(same[:, :, None, None], xp[:, j:j + 2 * out - 1:2], 0))
    return jnp.concatenate(taps, axis=-1)


def _freq_conv(x: Array, kernel: Array, bias: Array) -> Array:
    """Stride-2, kernel-3, 'SAME' convolution over frequency as one matmul.

    Args:
      x: [b, t, f, c_in]; kernel: [1, 3, c_in, c_out] (`nnx.Conv` layout, time x freq x in x out); bias: [c_out].
    Returns:
      [b, t, ceil(f / 2), c_out]; identical to `lax.conv_general_dilated(..., strides=(1, 2), padding='SAME')`.
    """
    f = x.shape[2]
    out_f = -(-f // 2)
    total = max((out_f - 1) * 2 + 3 - f, 0)  # XLA 'SAME': pad total // 2 before, the rest after
    lo = total // 2
    xp = jnp.pad(x, ((0, 0), (0, 0), (lo, total - lo), (0, 0)))
    taps = jnp.stack([xp[:, :, j:j + 2 * out_f - 1:2] for j in range(3)], axis=3)  # [b, t, out_f, 3, c_in]
    b, t = x.shape[:2]
    w = kernel.reshape(3 * kernel.shape[2], kernel.shape[3]).astype(x.dtype)
    y = jnp.dot(taps.reshape(b, t, out_f, -1), w, preferred_element_type=x.dtype)
    return y + bias.astype(x.dtype)


class ConvSubsampling(nnx.Module):
    """[batch, frames, mel] log-mel -> [batch, ceil(frames / 4), d_model] (zero at padding).

    Attributes:
      channels: channels of both convolutions (?: not reported; default 128).
    """

    def __init__(self, num_mel_bins: int, d_model: int, *, channels: int = 128, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        conv = dict(kernel_size=(1, 3), strides=(1, 2), padding="SAME", dtype=dtype, param_dtype=jnp.float32,
                    bias_init=common.zeros_init(("conv",)), rngs=rngs)
        self.conv1 = nnx.Conv(3 * 1, channels, kernel_init=common.kernel_init((None, None, None, "conv")), **conv)
        self.conv2 = nnx.Conv(3 * channels, channels, kernel_init=common.kernel_init((None, None, None, "conv")),
                              **conv)
        freq = math.ceil(math.ceil(num_mel_bins / 2) / 2)
        self.proj = common.dense(freq * channels, d_model, ("conv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, features: Array, segment_ids: Array) -> tuple[Array, Array]:
        """Returns (x [batch, T/4, d_model], segment_ids [batch, T/4])."""
        x = features.astype(self.dtype)[..., None]  # [b, t, f, 1]
        x = jax.nn.relu(_freq_conv(_time_taps(x, segment_ids), self.conv1.kernel[...], self.conv1.bias[...]))
        seg = subsample_segment_ids(segment_ids, 2)
        x = jax.nn.relu(_freq_conv(_time_taps(x, seg), self.conv2.kernel[...], self.conv2.bias[...]))
        seg = subsample_segment_ids(seg, 2)
        b, t = x.shape[:2]
        x = self.proj(x.reshape(b, t, -1))
        return common.constrain(x * common.valid_mask(seg, x.dtype), common.BATCH_ACTIVATION), seg
