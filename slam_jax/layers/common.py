"""Small shared pieces: initializers with logical axis names, dtype policy, dropout, masking helpers."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str | jnp.dtype) -> jnp.dtype:
    """Maps a config string ('float32' / 'bfloat16') to a dtype; dtypes pass through."""
    if isinstance(name, str):
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
        return DTYPES[name]
    return name


def kernel_init(names: Sequence[str | None], scale: float = 1.0) -> nnx.Initializer:
    """Variance-scaling init (fan-in, truncated normal) whose parameter carries logical axis `names`."""
    init = jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return nnx.with_partitioning(init, tuple(names))


def zeros_init(names: Sequence[str | None]) -> nnx.Initializer:
    return nnx.with_partitioning(jax.nn.initializers.zeros, tuple(names))


def ones_init(names: Sequence[str | None]) -> nnx.Initializer:
    return nnx.with_partitioning(jax.nn.initializers.ones, tuple(names))


def layer_norm(d: int, *, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.LayerNorm:
    """LayerNorm computed in float32 (statistics and output), fp32 params, axis name `embed`."""
    return nnx.LayerNorm(
        d, epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=ones_init(("embed",)), bias_init=zeros_init(("embed",)), rngs=rngs)


def dense(d_in: int, d_out: int, names: tuple[str | None, str | None], *, dtype: jnp.dtype, rngs: nnx.Rngs,
          use_bias: bool = True, scale: float = 1.0) -> nnx.Linear:
    """A Linear layer with fp32 params, `dtype` compute and logical axis names (in, out)."""
    return nnx.Linear(
        d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=kernel_init(names, scale), bias_init=zeros_init((names[1],)), rngs=rngs)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when `key` is None or `rate` is 0 (evaluation)."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_key(key: Array | None, n: int) -> list[Array | None]:
    """Splits `key` into n keys, or n Nones when `key` is None."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def valid_mask(segment_ids: Array, dtype: jnp.dtype = jnp.float32) -> Array:
    """[batch, time] segment ids -> [batch, time, 1] 1.0 at real positions, 0.0 at padding."""
    return (segment_ids > 0)[..., None].astype(dtype)


def constrain(x: Array, names: Sequence[str | None]) -> Array:
    """Pins activation `x` to the mesh sharding of its logical axis `names` (e.g. ('batch', None, None)).

    Explicit activation shardings keep XLA's SPMD propagation from choosing layouts that mix the batch and
    parameter axes (on a data x fsdp x tensor mesh an unconstrained tied-embedding head gave wrong gradients on
    XLA:CPU). A no-op outside a mesh context, so layers run unchanged in plain `jax.jit` or eagerly.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    from flax.core import spmd
    from flax.linen import partitioning as nn_partitioning
    spec = nn_partitioning.logical_to_mesh_axes(tuple(names), spmd.get_logical_axis_rules())
    return jax.lax.with_sharding_constraint(x, spec)


BATCH_ACTIVATION = ("batch", None, None)
