"""The jaxpr -> ONNX translator (slam_jax/onnx_export.py) on the primitives the encoder uses and a few it may: each
function runs in onnxruntime as it does in JAX."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slam_jax import onnx_export


def _run_both(fn, params, *args):
    import onnxruntime
    names = [f"x{i}" for i in range(len(args))]
    want = jax.tree.leaves(jax.jit(fn)(params, *args))
    proto = onnx_export.to_onnx(fn, params, args, names, [f"y{i}" for i in range(len(want))])
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: np.asarray(a) for n, a in zip(names, args)})
    return [np.asarray(w) for w in want], got


def test_primitives_match_jax_in_onnxruntime():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 5, 4)).astype(np.float32), "b": rng.normal(size=(4,)).astype(np.float32)}
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    ids = rng.integers(0, 3, size=(2, 6)).astype(np.int32)

    def fn(p, x, ids):
        def layer(h, w):                                  # a scan over stacked weights, as the layer stacks
            y = jnp.tanh(jnp.einsum("btd,de->bte", h, w[:, :4]) + p["b"])
            return h + jnp.pad(y, ((0, 0), (0, 0), (0, 1))), y.sum(-1)
        h, ys = jax.lax.scan(layer, x, p["w"], reverse=True)
        att = jax.nn.softmax(jnp.einsum("btd,bsd->bts", h, h) / 3.0, axis=-1)          # batched dot_general
        run_max = jax.lax.cummax(ids, axis=1)
        run_max_rev = jax.lax.cummax(ids, axis=1, reverse=True)
        picked = jnp.take(h.reshape(-1, 5), ids.reshape(-1), axis=0)                    # gather
        summed = jnp.zeros((3, 5)).at[ids.reshape(-1)].add(h.reshape(-1, 5))           # scatter-add
        choice = jax.lax.select_n(ids, x[..., 0], x[..., 1], x[..., 2])                 # integer selector
        cropped = jax.lax.pad(h, 0.0, ((0, 0, 0), (-1, 2, 0), (1, -2, 0)))               # negative padding
        stats = (jnp.max(h, axis=1), jnp.min(h), jnp.sqrt(jnp.abs(h)) ** 3, jax.nn.gelu(h, approximate=False),
                 jnp.where(ids != 1, jnp.square(ids), ids % 2), jnp.argmax(h, -1), jnp.cumsum(ids, axis=1))
        return att, ys, run_max, run_max_rev, picked, summed, choice, cropped, *stats

    want, got = _run_both(fn, params, x, ids)
    assert len(want) == len(got) == 15
    for w, g in zip(want, got):
        assert w.shape == g.shape and w.dtype == g.dtype
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)


def test_a_primitive_without_a_rule_is_named():
    with pytest.raises(onnx_export.OnnxExportError, match="'sort'"):
        onnx_export.to_onnx(lambda p, x: jnp.sort(x), {}, (np.zeros(3, np.float32),), ["x"], ["y"])
