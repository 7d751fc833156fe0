"""Depthwise conv micro-benchmark: 'shift' vs 'native' (`slam_jax.layers.conformer.depthwise_conv1d`).

    python benchmarks/depthwise_conv.py [--batch 8 --frames 250 --dim 512 --kernel 5]

Prints the best of 5 jitted forward and forward + backward times of each implementation on the default device.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from slam_jax.layers.conformer import depthwise_conv1d


def best_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--kernel", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.batch, args.frames, args.dim)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(args.kernel, args.dim)), jnp.float32)
    segments = jnp.ones((args.batch, args.frames), jnp.int32)
    for impl in ("shift", "native"):
        fwd = jax.jit(lambda x, k, impl=impl: depthwise_conv1d(x, k, segments, impl))
        grad = jax.jit(jax.grad(lambda x, k, impl=impl: jnp.sum(depthwise_conv1d(x, k, segments, impl) ** 2), (0, 1)))
        print(f"{impl:6s} forward {1e3 * best_time(fwd, x, kernel):8.2f} ms   "
              f"forward + backward {1e3 * best_time(grad, x, kernel):8.2f} ms")


if __name__ == "__main__":
    main()
