"""The rules of the jaxpr -> ONNX translator (`slam_jax.onnx_export`): one per JAX primitive, each emitting the ONNX
nodes (opset 18) that compute it; shapes are static, so shape operands become constants.

A rule takes (graph, input value names, input avals, output avals, the equation's params) and returns the output
value names. A primitive without a rule is an error naming it; add its rule here.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import numpy as np

OPSET = 18


class OnnxExportError(ValueError):
    """The jaxpr uses something this translator has no rule for."""


@dataclasses.dataclass
class Graph:
    """Nodes and initializers of the graph under construction, with unique value names."""

    nodes: list = dataclasses.field(default_factory=list)
    initializers: list = dataclasses.field(default_factory=list)
    counter: itertools.count = dataclasses.field(default_factory=itertools.count)
    consts: dict = dataclasses.field(default_factory=dict)     # (dtype, shape, bytes) -> name: each constant once

    def name(self, hint: str = "v") -> str:
        return f"{hint}_{next(self.counter)}"

    def const(self, value: Any, dtype: Any = None) -> str:
        from onnx import numpy_helper
        array = np.asarray(value, dtype=dtype)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            self.consts[key] = self.name("c")
            self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), self.consts[key]))
        return self.consts[key]

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, **attrs))
        return outs

    def op(self, op: str, *inputs: str, **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.const(np.asarray(shape, np.int64)))


def onnx_type(dtype: Any) -> int:
    from onnx import helper
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        from onnx import TensorProto
        return TensorProto.BFLOAT16
    return helper.np_dtype_to_tensor_dtype(dtype)


# -- rules: each takes (graph, input names, input avals, output avals, eqn params) and returns output names --------

Rule = Callable[[Graph, list, list, list, dict], list]
RULES: dict[str, Rule] = {}


def _rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn
    return register


def _elementwise(onnx_op: str, **attrs) -> Rule:
    return lambda g, x, a, o, p: [g.op(onnx_op, *x, **attrs)]


for _jax, _onnx in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "eq": "Equal", "lt": "Less",
                    "gt": "Greater", "le": "LessOrEqual", "ge": "GreaterOrEqual", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
                    "neg": "Neg", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "erf": "Erf", "floor": "Floor",
                    "ceil": "Ceil", "sin": "Sin", "cos": "Cos"}.items():
    RULES[_jax] = _elementwise(_onnx)


@_rule("max", "min")
def _max(g, x, a, o, p):
    if a[0].dtype == np.bool_:                     # ONNX Max/Min take no booleans: max is Or, min is And
        return [g.op("Or" if p["_name"] == "max" else "And", *x)]
    return [g.op("Max" if p["_name"] == "max" else "Min", *x)]


# ONNX Pow takes int32 / int64 / float16-64 tensors only: other integer types (int8, uint8, ...) compute in int32 and
# bfloat16 in float32, then cast back (the same result wherever it fits the narrower type).
_POW_TYPES = tuple(np.dtype(t) for t in (np.int32, np.int64, np.float16, np.float32, np.float64))


@_rule("pow")
def _pow(g, x, a, o, p):
    if all(np.dtype(v.dtype) in _POW_TYPES for v in a):
        return [g.op("Pow", *x)]
    wide = [g.op("Cast", xi, to=onnx_type(np.int32 if np.issubdtype(np.dtype(v.dtype), np.integer) else np.float32))
            for xi, v in zip(x, a)]
    return [g.op("Cast", g.op("Pow", *wide), to=onnx_type(o[0].dtype))]


@_rule("stop_gradient", "copy", "copy_p", "optimization_barrier")
def _identity(g, x, a, o, p):
    return [g.op("Identity", xi) for xi in x]


@_rule("ne")
def _ne(g, x, a, o, p):
    return [g.op("Not", g.op("Equal", *x))]


@_rule("rsqrt")
def _rsqrt(g, x, a, o, p):
    return [g.op("Reciprocal", g.op("Sqrt", x[0]))]


@_rule("erfc")
def _erfc(g, x, a, o, p):
    return [g.op("Sub", g.const(np.asarray(1, a[0].dtype)), g.op("Erf", x[0]))]


@_rule("square")
def _square(g, x, a, o, p):
    return [g.op("Mul", x[0], x[0])]


@_rule("integer_pow")
def _integer_pow(g, x, a, o, p):
    """x ** y for a static integer y, by repeated squaring (exact for every dtype, as XLA expands it)."""
    y = int(p["y"])
    result, square, n = None, x[0], abs(y)
    while n:
        if n & 1:
            result = square if result is None else g.op("Mul", result, square)
        n >>= 1
        if n:
            square = g.op("Mul", square, square)
    if result is None:                                                     # y == 0
        result = g.op("Expand", g.const(np.asarray(1, a[0].dtype)), g.const(np.asarray(a[0].shape, np.int64)))
    return [g.op("Reciprocal", result) if y < 0 else result]


@_rule("log1p")
def _log1p(g, x, a, o, p):
    return [g.op("Log", g.op("Add", x[0], g.const(np.asarray(1, a[0].dtype))))]


def _logical_rule(bool_op: str, bit_op: str) -> Rule:
    def rule(g, x, a, o, p):
        return [g.op(bool_op if a[0].dtype == np.bool_ else bit_op, *x)]
    return rule


for _jax, _bool, _bit in (("and", "And", "BitwiseAnd"), ("or", "Or", "BitwiseOr"), ("xor", "Xor", "BitwiseXor"),
                          ("not", "Not", "BitwiseNot")):
    RULES[_jax] = _logical_rule(_bool, _bit)


@_rule("rem")
def _rem(g, x, a, o, p):
    return [g.op("Mod", *x, fmod=1)]          # C-like remainder (sign of the dividend), as lax.rem


@_rule("clamp")
def _clamp(g, x, a, o, p):
    lo, v, hi = x                                   # min(max(v, lo), hi): hi wins where lo > hi, as in XLA
    return [g.op("Min", g.op("Max", v, lo), hi)]


@_rule("convert_element_type")
def _convert(g, x, a, o, p):
    return [g.op("Cast", x[0], to=onnx_type(o[0].dtype))]


@_rule("select_n")
def _select_n(g, x, a, o, p):
    pred, cases = x[0], x[1:]
    if len(cases) == 1:
        return [g.op("Identity", cases[0])]
    if a[0].dtype == np.bool_:                       # select_n(pred, on_false, on_true)
        return [g.op("Where", pred, cases[1], cases[0])]
    out = cases[0]
    for i, case in enumerate(cases[1:], start=1):    # integer selector: case i where pred == i
        hit = g.op("Equal", pred, g.const(np.asarray(i, a[0].dtype)))
        out = g.op("Where", hit, case, out)
    return [out]


@_rule("reshape", "squeeze", "expand_dims")
def _reshape(g, x, a, o, p):
    y = x[0]
    if p["_name"] == "reshape" and p.get("dimensions"):   # lax.reshape(..., dimensions=perm) transposes first
        y = g.op("Transpose", y, perm=[int(d) for d in p["dimensions"]])
    return [g.reshape(y, o[0].shape)]


@_rule("broadcast_in_dim")
def _broadcast_in_dim(g, x, a, o, p):
    shape, dims = tuple(p["shape"]), tuple(p["broadcast_dimensions"])
    kept = [1] * len(shape)
    for src, dst in enumerate(dims):
        kept[dst] = a[0].shape[src]
    y = g.reshape(x[0], kept) if tuple(kept) != tuple(a[0].shape) else x[0]
    return [g.op("Expand", y, g.const(np.asarray(shape, np.int64)))]


@_rule("transpose")
def _transpose(g, x, a, o, p):
    return [g.op("Transpose", x[0], perm=[int(d) for d in p["permutation"]])]


@_rule("dot_general")
def _dot_general(g, x, a, o, p):
    """[batch..., lhs free..., rhs free...] = contraction over the given dims, as one batched MatMul."""
    (lc, rc), (lb, rb) = p["dimension_numbers"]
    ls, rs = a[0].shape, a[1].shape
    lf = [d for d in range(len(ls)) if d not in lc and d not in lb]
    rf = [d for d in range(len(rs)) if d not in rc and d not in rb]
    size = lambda shape, dims: int(np.prod([shape[d] for d in dims], dtype=np.int64))
    nb, nk = size(ls, lb), size(ls, lc)
    lhs = g.reshape(g.op("Transpose", x[0], perm=[*lb, *lf, *lc]), [nb, size(ls, lf), nk])
    rhs = g.reshape(g.op("Transpose", x[1], perm=[*rb, *rc, *rf]), [nb, nk, size(rs, rf)])
    dtype = o[0].dtype            # (preferred_element_type): each operand of another dtype is cast to it
    lhs, rhs = (t if v.dtype == dtype else g.op("Cast", t, to=onnx_type(dtype)) for t, v in ((lhs, a[0]), (rhs, a[1])))
    return [g.reshape(g.op("MatMul", lhs, rhs), o[0].shape)]


def _reduce(onnx_op: str) -> Rule:
    def rule(g, x, a, o, p):
        axes = g.const(np.asarray(p["axes"], np.int64))
        return [g.op(onnx_op, x[0], axes, keepdims=0, noop_with_empty_axes=1)]
    return rule


RULES.update(reduce_sum=_reduce("ReduceSum"), reduce_max=_reduce("ReduceMax"), reduce_min=_reduce("ReduceMin"),
             reduce_prod=_reduce("ReduceProd"))


@_rule("argmax", "argmin")
def _argmax(g, x, a, o, p):
    (axis,) = p["axes"]
    op = "ArgMax" if p.get("_name") != "argmin" else "ArgMin"
    return [g.op("Cast", g.op(op, x[0], axis=int(axis), keepdims=0), to=onnx_type(o[0].dtype))]


@_rule("iota")
def _iota(g, x, a, o, p):
    shape, dim = tuple(o[0].shape), p["dimension"]
    index = np.arange(shape[dim], dtype=o[0].dtype).reshape([-1 if d == dim else 1 for d in range(len(shape))])
    return [g.op("Expand", g.const(index), g.const(np.asarray(shape, np.int64)))]


@_rule("concatenate")
def _concatenate(g, x, a, o, p):
    return [g.op("Concat", *x, axis=int(p["dimension"]))]


@_rule("stack")
def _stack(g, x, a, o, p):
    axis = g.const(np.asarray([p["axis"]], np.int64))
    return [g.op("Concat", *(g.op("Unsqueeze", xi, axis) for xi in x), axis=int(p["axis"]))]


@_rule("split")
def _split(g, x, a, o, p):
    sizes = g.const(np.asarray(p["sizes"], np.int64))
    return g.node("Split", [x[0], sizes], n_out=len(p["sizes"]), axis=int(p["axis"]))


@_rule("slice")
def _slice(g, x, a, o, p):
    starts, limits = p["start_indices"], p["limit_indices"]
    strides = p["strides"] or (1,) * len(starts)
    axes = np.arange(len(starts), dtype=np.int64)
    return [g.op("Slice", x[0], g.const(np.asarray(starts, np.int64)), g.const(np.asarray(limits, np.int64)),
                 g.const(axes), g.const(np.asarray(strides, np.int64)))]


@_rule("rev")
def _rev(g, x, a, o, p):
    axes = np.asarray(p["dimensions"], np.int64)
    n = len(axes)
    return [g.op("Slice", x[0], g.const(np.full(n, -1, np.int64)), g.const(np.full(n, np.iinfo(np.int64).min)),
                 g.const(axes), g.const(np.full(n, -1, np.int64)))]


@_rule("pad")
def _pad(g, x, a, o, p):
    config = [tuple(int(v) for v in c) for c in p["padding_config"]]
    if any(interior for _, _, interior in config):
        raise OnnxExportError("pad with interior padding has no rule")
    lo, hi = [c[0] for c in config], [c[1] for c in config]
    y = x[0]
    if any(v < 0 for v in lo + hi):                # negative padding crops
        shape = a[0].shape
        y = g.op("Slice", y, g.const(np.asarray([max(0, -v) for v in lo], np.int64)),
                 g.const(np.asarray([s - max(0, -v) for s, v in zip(shape, hi)], np.int64)))
    pads = np.asarray([max(0, v) for v in lo] + [max(0, v) for v in hi], np.int64)
    return [g.op("Pad", y, g.const(pads), x[1], mode="constant")]


@_rule("cumsum")
def _cumsum(g, x, a, o, p):
    return [g.op("CumSum", x[0], g.const(np.asarray(p["axis"], np.int64)), reverse=int(p["reverse"]))]


@_rule("cummax", "cummin")
def _cummax(g, x, a, o, p):
    """ONNX has no running max: out[i] = max over j <= i (j >= i if reverse) of x[j], through a triangular mask
    ([..., n, n] values, fine for the few hundred encoder frames of an utterance)."""
    axis, n = int(p["axis"]), a[0].shape[p["axis"]]
    rank = len(a[0].shape)
    y = g.op("Transpose", x[0], perm=[d for d in range(rank) if d != axis] + [axis]) if axis != rank - 1 else x[0]
    tri = np.tril(np.ones((n, n), bool)) if not p["reverse"] else np.triu(np.ones((n, n), bool))   # [i, j]
    is_max = p.get("_name", "cummax") == "cummax"
    dtype = np.dtype(a[0].dtype)
    if np.issubdtype(dtype, np.integer):
        fill = g.const(np.asarray(np.iinfo(dtype).min if is_max else np.iinfo(dtype).max, dtype))
    else:
        fill = g.const(np.asarray(-np.inf if is_max else np.inf, dtype))
    rows = g.op("Unsqueeze", y, g.const(np.asarray([-2], np.int64)))               # [..., 1, n(j)]
    masked = g.op("Where", g.const(tri), rows, fill)                                  # [..., n(i), n(j)]
    red = g.op("ReduceMax" if is_max else "ReduceMin", masked, g.const(np.asarray([-1], np.int64)), keepdims=0)
    if axis != rank - 1:
        perm = list(range(rank - 1))
        perm.insert(axis, rank - 1)
        red = g.op("Transpose", red, perm=perm)
    return [red]


def _simple_gather_dims(dims) -> bool:
    """operand[idx[..., 0], ...]: one index column selecting along axis 0, full windows elsewhere."""
    return (tuple(dims.start_index_map) == (0,) and tuple(dims.collapsed_slice_dims) == (0,)
            and not dims.operand_batching_dims)


def _fill_value(dtype: Any, value: Any) -> np.ndarray:
    """lax.gather's value for out-of-range rows (mode FILL_OR_DROP): `value`, else NaN / the integer minimum / True."""
    dtype = np.dtype(dtype)
    if value is None:
        value = (np.nan if np.issubdtype(dtype, np.inexact) else True if dtype == np.bool_
                 else np.iinfo(dtype).min if np.issubdtype(dtype, np.signedinteger) else np.iinfo(dtype).max)
    return np.asarray(value, dtype)


def _row_index(g, idx: str, index_dtype: Any, rows: int, mode: Any) -> tuple[str, str | None]:
    """(row indices clamped into [0, rows), mask of the in-range ones or None) for lax's gather / scatter `mode`:
    CLIP and PROMISE_IN_BOUNDS (`x[i]` indexing) clamp; FILL_OR_DROP (jnp.take's default) also returns the mask so
    that the caller fills / drops those rows (ONNX Gather / ScatterND have no such mode: an index out of range is an
    error there)."""
    zero, last = g.const(np.asarray(0, index_dtype)), g.const(np.asarray(rows - 1, index_dtype))
    clamped = g.op("Min", g.op("Max", idx, zero), last)
    if "CLIP" in str(mode) or "PROMISE_IN_BOUNDS" in str(mode):   # (XLA clamps a broken promise: so do we)
        return clamped, None
    if mode is not None and "FILL_OR_DROP" not in str(mode):
        raise OnnxExportError(f"gather / scatter mode {mode} has no rule")
    return clamped, g.op("Equal", clamped, idx)


@_rule("gather")
def _gather(g, x, a, o, p):
    dims, operand, indices = p["dimension_numbers"], a[0], a[1]
    if not (_simple_gather_dims(dims) and indices.shape[-1] == 1
            and tuple(dims.offset_dims) == tuple(range(len(indices.shape) - 1, len(o[0].shape)))
            and tuple(p["slice_sizes"]) == (1, *operand.shape[1:])):
        raise OnnxExportError(f"gather with {dims}, slice_sizes {p['slice_sizes']} has no rule")
    idx = g.op("Squeeze", x[1], g.const(np.asarray([-1], np.int64)))                   # [...]
    idx, valid = _row_index(g, idx, indices.dtype, operand.shape[0], p.get("mode"))
    out = g.op("Gather", x[0], idx, axis=0)                                               # [..., *operand[1:]]
    if valid is None:
        return [out]
    trailing = len(operand.shape) - 1
    mask = g.op("Unsqueeze", valid, g.const(np.arange(-trailing, 0, dtype=np.int64))) if trailing else valid
    fill = _fill_value(operand.dtype, p.get("fill_value"))
    if operand.dtype == np.bool_:         # (onnxruntime has no boolean Where kernel)
        return [g.op("And", mask, out) if not fill else g.op("Or", g.op("Not", mask), out)]
    return [g.op("Where", mask, out, g.const(fill))]


@_rule("scatter-add", "scatter_add")
def _scatter_add(g, x, a, o, p):
    """Rows of updates added into operand rows; with mode FILL_OR_DROP an out-of-range row's update is dropped (added
    as zeros to a clamped row)."""
    dims, indices, updates = p["dimension_numbers"], a[1], a[2]
    if not (tuple(dims.scatter_dims_to_operand_dims) == (0,) and tuple(dims.inserted_window_dims) == (0,)
            and not dims.operand_batching_dims and indices.shape[-1] == 1
            and tuple(dims.update_window_dims) == tuple(range(len(indices.shape) - 1, len(updates.shape)))
            and tuple(updates.shape[len(indices.shape) - 1:]) == tuple(a[0].shape[1:])):   # whole rows (ScatterND)
        raise OnnxExportError(f"scatter-add with {dims}, updates {updates.shape} into {a[0].shape} has no rule")
    idx, valid = _row_index(g, x[1], indices.dtype, a[0].shape[0], p.get("mode"))     # [..., 1]
    values = x[2]
    if valid is not None:
        # valid [..., 1] -> over the update window's trailing dims
        window = len(updates.shape) - (len(indices.shape) - 1)
        mask = g.op("Squeeze", valid, g.const(np.asarray([-1], np.int64)))
        if window:
            mask = g.op("Unsqueeze", mask, g.const(np.arange(-window, 0, dtype=np.int64)))
        values = g.op("Where", mask, values, g.const(np.asarray(0, updates.dtype)))
    idx = g.op("Cast", idx, to=onnx_type(np.int64))
    return [g.op("ScatterND", x[0], idx, values, reduction="add")]
