"""Kernel micro-benchmarks: the depthwise conv ('shift' vs 'native') and the attention block (per implementation).

    python benchmarks/slam_kernel_bench.py [--only conv|attention] [--batch 8 --frames 250 --dim 512 --kernel 5 --heads 8]

Prints the best of 5 jitted forward and forward + backward times on the default device:
- `depthwise_conv1d` alone, [batch, frames, dim], kernel `--kernel`;
- `SelfAttention` (LN -> QKV -> attention -> output projection), [batch, frames, dim] with `--heads` heads, for each
  `attention_impl` that runs on the backend ('xla', 'head_major'; 'cudnn' on GPU). Gradients cover the input and
  every parameter.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.layers.attention import SelfAttention
from slam_jax.layers.conformer import depthwise_conv1d


def best_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def report(name: str, fwd, grad, *args) -> None:
    print(f"{name:22s} forward {1e3 * best_time(fwd, *args):8.2f} ms   "
          f"forward + backward {1e3 * best_time(grad, *args):8.2f} ms")


def bench_conv(x: jax.Array, segments: jax.Array, kernel_size: int) -> None:
    kernel = jnp.asarray(np.random.default_rng(1).normal(size=(kernel_size, x.shape[-1])), jnp.float32)
    for impl in ("shift", "native"):
        fwd = jax.jit(lambda x, k, impl=impl: depthwise_conv1d(x, k, segments, impl))
        grad = jax.jit(jax.grad(lambda x, k, impl=impl: jnp.sum(depthwise_conv1d(x, k, segments, impl) ** 2), (0, 1)))
        report(f"conv {impl}", fwd, grad, x, kernel)


def bench_attention(x: jax.Array, segments: jax.Array, heads: int) -> None:
    impls = ["xla", "head_major"] + (["cudnn"] if jax.default_backend() == "gpu" else [])
    with nnx.use_eager_sharding(False):
        graph, params = nnx.split(SelfAttention(x.shape[-1], heads, rngs=nnx.Rngs(0)))
    for impl in impls:
        def apply(params, x, impl=impl):
            layer = nnx.merge(graph, params)
            layer.implementation = impl
            return layer(x, segments)

        fwd = jax.jit(apply)
        grad = jax.jit(jax.grad(lambda p, x, apply=apply: jnp.sum(apply(p, x) * x), (0, 1)))
        report(f"attention {impl}", fwd, grad, params, x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--only", choices=["conv", "attention"], default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kernel", type=int, default=5)
    p.add_argument("--heads", type=int, default=8)
    args = p.parse_args()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, args.frames, args.dim)), jnp.float32)
    segments = jnp.ones((args.batch, args.frames), jnp.int32)
    print(f"{jax.default_backend()} ({jax.devices()[0].device_kind}): [{args.batch}, {args.frames}, {args.dim}]")
    if args.only in (None, "conv"):
        bench_conv(x, segments, args.kernel)
    if args.only in (None, "attention"):
        bench_attention(x, segments, args.heads)


if __name__ == "__main__":
    main()
