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
    # Updates to part of each row: ONNX ScatterND adds whole rows only, so the export says so (instead of a model
    # that onnxruntime rejects when it runs).
    dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(1,), inserted_window_dims=(0,),
                                           scatter_dims_to_operand_dims=(0,))
    partial = lambda p, h, ids: jax.lax.scatter_add(jnp.zeros((3, 5)), ids[:, None], h, dims)   # noqa: E731
    with pytest.raises(onnx_export.OnnxExportError, match=r"scatter-add .*updates \(4, 2\) into \(3, 5\)"):
        onnx_export.to_onnx(partial, {}, (np.ones((4, 2), np.float32), np.zeros(4, np.int32)), ["h", "ids"], ["y"])


def test_edge_cases_match_jax_in_onnxruntime():
    """Semantics ONNX lacks or defines differently: out-of-range gather rows are filled and scatter rows dropped
    (jnp's default mode), clamp with lo > hi, boolean max/min, int8 powers and exponents, a one-case select_n, mixed
    dtypes in a dot, argmin, cummin, and rem of negative numbers (sign of the dividend)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    idx = np.asarray([0, 5, 3, 7], np.int32)                 # 5 and 7 are past the 4 rows
    flags = np.asarray([True, False, True, False])
    small = np.asarray([-3, 2, 5, -1], np.int8)

    def fn(p, x, idx, flags, small):
        rows = jax.lax.gather(x, idx[:, None], jax.lax.GatherDimensionNumbers(
            offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,)), (1, 3),
            mode=jax.lax.GatherScatterMode.FILL_OR_DROP, fill_value=-7.0)
        taken = jnp.take(x[:, 0], idx)                        # default fill: NaN
        clipped = jnp.take(x, idx, axis=0, mode="clip")
        added = jnp.zeros((4, 3)).at[idx].add(x)              # rows 5 and 7 dropped
        clamped = jax.lax.clamp(jnp.float32(1.0), x, jnp.float32(0.0))     # lo > hi: hi everywhere
        indexed = x[idx]                                      # PROMISE_IN_BOUNDS: XLA clamps rows 5 and 7
        masks = jnp.take(flags, idx), jnp.take(flags, idx, fill_value=False)  # boolean fills (True / False)
        return (rows, jnp.nan_to_num(taken, nan=99.0), clipped, added, clamped,
                jnp.maximum(flags, ~flags), jnp.minimum(flags, flags[::-1]),
                small ** 3, jax.lax.pow(x[:, 0], small), x ** -2,
                jax.lax.select_n(flags, x[:, 0]),
                jax.lax.dot_general(small.astype(jnp.bfloat16), x, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32),
                jnp.argmin(x, axis=0), jax.lax.cummin(x, axis=0), jax.lax.rem(small, jnp.int8(2)),
                jax.lax.rem(x - 0.5, jnp.float32(0.3)), indexed, *masks)

    want, got = _run_both(fn, {}, x, idx, flags, small)
    assert len(want) == len(got) == 19
    for w, g in zip(want, got):
        assert w.shape == g.shape and w.dtype == g.dtype
        np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-5)
    assert np.all(want[0][[1, 3]] == -7.0) and np.all(want[1][[1, 3]] == 99.0)   # the fills were exercised


def test_only_call_primitives_are_inlined():
    # shard_map holds its body as a `jaxpr` parameter, as jit does, but is not a plain call (its body sees one
    # shard): it must be named, not inlined.
    from jax.sharding import PartitionSpec as P
    mapped = jax.shard_map(jnp.sin, mesh=jax.make_mesh((1,), ("x",)), in_specs=P(), out_specs=P())
    with pytest.raises(onnx_export.OnnxExportError, match="'shard_map'"):
        onnx_export.to_onnx(lambda p, x: mapped(x), {}, (np.zeros(3, np.float32),), ["x"], ["y"])
