"""ONNX export of a CTC ASR model: log-mel features in, CTC log-probabilities out, for onnxruntime and other serving
stacks without JAX.

    slam-export --model_dir=/tmp/slam_ft --output_dir=/tmp/slam_ft_export --onnx [--onnx_frames=3000 --onnx_batch=1]

The graph (`model.onnx` in the export folder, opset 18) has fixed shapes, as compiled TPU programs do:

    inputs   features     float32 [batch, frames, 80]  log-mel (`slam_jax.data.features.log_mel`), zero-padded
             segment_ids  int32   [batch, frames]      1 on real frames, 0 on padding
    outputs  log_probs    float32 [batch, frames', vocab]  CTC log-probabilities (id 0 is the blank), frames' =
                                                          `subsampled_length(frames)` (4x subsampling)
             lengths      int32   [batch]               valid frames' of each row

Our choice: the graph comes from translating the model's inference jaxpr with the `onnx` helper API (this module),
not from jax2onnx or jax2tf + tf2onnx. jax2onnx 0.12 fails on this model (its flax patches and missing primitive
plugins) and newer releases pin an older orbax; tf2onnx does not install beside TensorFlow 2.21. The jaxpr of an
eval-mode encoder uses about 40 primitives; each has a rule below, and any other primitive is an error naming it
(add its rule here). Call-like primitives (jit, custom_jvp/vjp, remat) are inlined and a scan over layers is
unrolled, so the graph is flat.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import numpy as np

OPSET = 18
ONNX_FILE = "model.onnx"


class OnnxExportError(ValueError):
    """The jaxpr uses something this translator has no rule for."""


@dataclasses.dataclass
class _Graph:
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


def _onnx_type(dtype: Any) -> int:
    from onnx import helper
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        from onnx import TensorProto
        return TensorProto.BFLOAT16
    return helper.np_dtype_to_tensor_dtype(dtype)


# -- rules: each takes (graph, input names, input avals, output avals, eqn params) and returns output names --------

Rule = Callable[[_Graph, list, list, list, dict], list]
RULES: dict[str, Rule] = {}


def _rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn
    return register


def _elementwise(onnx_op: str, **attrs) -> Rule:
    return lambda g, x, a, o, p: [g.op(onnx_op, *x, **attrs)]


for _jax, _onnx in {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
                    "pow": "Pow", "eq": "Equal", "lt": "Less", "gt": "Greater", "le": "LessOrEqual",
                    "ge": "GreaterOrEqual", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
                    "neg": "Neg", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "erf": "Erf", "floor": "Floor",
                    "ceil": "Ceil", "sin": "Sin", "cos": "Cos"}.items():
    RULES[_jax] = _elementwise(_onnx)


@_rule("stop_gradient", "copy", "copy_p", "reduce_precision", "optimization_barrier")
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
    return [g.op("Pow", x[0], g.const(np.asarray(p["y"], a[0].dtype)))]


@_rule("log1p")
def _log1p(g, x, a, o, p):
    return [g.op("Log", g.op("Add", x[0], g.const(np.asarray(1, a[0].dtype))))]


def _logical_rule(jax_name: str, bool_op: str, bit_op: str) -> Rule:
    def rule(g, x, a, o, p):
        return [g.op(bool_op if a[0].dtype == np.bool_ else bit_op, *x)]
    return rule


for _jax, _bool, _bit in (("and", "And", "BitwiseAnd"), ("or", "Or", "BitwiseOr"), ("xor", "Xor", "BitwiseXor"),
                          ("not", "Not", "BitwiseNot")):
    RULES[_jax] = _logical_rule(_jax, _bool, _bit)


@_rule("rem")
def _rem(g, x, a, o, p):
    return [g.op("Mod", *x, fmod=1)]          # C-like remainder (sign of the dividend), as lax.rem


@_rule("clamp")
def _clamp(g, x, a, o, p):
    lo, v, hi = x
    return [g.op("Max", g.op("Min", v, hi), lo)]


@_rule("convert_element_type")
def _convert(g, x, a, o, p):
    return [g.op("Cast", x[0], to=_onnx_type(o[0].dtype))]


@_rule("select_n")
def _select_n(g, x, a, o, p):
    pred, cases = x[0], x[1:]
    if a[0].dtype == np.bool_:                       # select_n(pred, on_false, on_true)
        return [g.op("Where", pred, cases[1], cases[0])]
    out = cases[0]
    for i, case in enumerate(cases[1:], start=1):    # integer selector: case i where pred == i
        hit = g.op("Equal", pred, g.const(np.asarray(i, a[0].dtype)))
        out = g.op("Where", hit, case, out)
    return [out]


@_rule("reshape", "squeeze", "expand_dims")
def _reshape(g, x, a, o, p):
    return [g.reshape(x[0], o[0].shape)]


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
    dtype = o[0].dtype
    if a[0].dtype != dtype:
        lhs, rhs = (g.op("Cast", t, to=_onnx_type(dtype)) for t in (lhs, rhs))
    return [g.reshape(g.op("MatMul", lhs, rhs), o[0].shape)]


def _reduce(onnx_op: str) -> Rule:
    def rule(g, x, a, o, p):
        axes = g.const(np.asarray(p["axes"], np.int64))
        return [g.op(onnx_op, x[0], axes, keepdims=0)]
    return rule


RULES.update(reduce_sum=_reduce("ReduceSum"), reduce_max=_reduce("ReduceMax"), reduce_min=_reduce("ReduceMin"),
             reduce_prod=_reduce("ReduceProd"))


@_rule("argmax", "argmin")
def _argmax(g, x, a, o, p):
    (axis,) = p["axes"]
    op = "ArgMax" if p.get("_name") != "argmin" else "ArgMin"
    return [g.op("Cast", g.op(op, x[0], axis=int(axis), keepdims=0), to=_onnx_type(o[0].dtype))]


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
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(dtype)
    fill = g.const(np.asarray(info.min if is_max else info.max, dtype))
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


@_rule("gather")
def _gather(g, x, a, o, p):
    dims, operand, indices = p["dimension_numbers"], a[0], a[1]
    if not (_simple_gather_dims(dims) and indices.shape[-1] == 1
            and tuple(p["slice_sizes"]) == (1, *operand.shape[1:])):
        raise OnnxExportError(f"gather with {dims}, slice_sizes {p['slice_sizes']} has no rule")
    idx = g.op("Squeeze", x[1], g.const(np.asarray([-1], np.int64)))
    return [g.op("Gather", x[0], idx, axis=0)]


@_rule("scatter-add", "scatter_add")
def _scatter_add(g, x, a, o, p):
    """Rows of updates added into operand rows (indices in range: ONNX has no drop mode for stray indices)."""
    dims, indices = p["dimension_numbers"], a[1]
    if not (tuple(dims.scatter_dims_to_operand_dims) == (0,) and tuple(dims.inserted_window_dims) == (0,)
            and not dims.operand_batching_dims and indices.shape[-1] == 1):
        raise OnnxExportError(f"scatter-add with {dims} has no rule")
    idx = g.op("Cast", x[1], to=_onnx_type(np.int64))
    return [g.op("ScatterND", x[0], idx, x[2], reduction="add")]


# -- the walk over a jaxpr --------------------------------------------------------------------------------------


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
    """(jaxpr, consts) of a call-like primitive to inline, else None."""
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None or eqn.primitive.name == "scan":
            continue
        if hasattr(sub, "consts"):       # ClosedJaxpr
            return sub.jaxpr, list(sub.consts)
        if hasattr(sub, "eqns"):
            return sub, []
    return None


def _emit(g: _Graph, jaxpr, consts: Sequence[Any], args: Sequence[str]) -> list[str]:
    """Adds `jaxpr`'s equations to `g` with its inputs bound to `args`; returns its output names."""
    from jax._src import source_info_util
    from jax.extend import core as jex_core
    env: dict = {}

    def read(v) -> str:
        if isinstance(v, jex_core.Literal):
            return g.const(np.asarray(v.val, v.aval.dtype))
        return env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = g.const(np.asarray(value))
    for var, name in zip(jaxpr.invars, args):
        env[var] = name
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        in_avals = [v.aval for v in eqn.invars]
        out_avals = [v.aval for v in eqn.outvars]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn)
        if name == "scan":
            outs = _scan(g, eqn, ins)
        elif sub is not None:
            outs = _emit(g, sub[0], sub[1], ins)
        elif name in RULES:
            first = len(g.nodes)
            outs = RULES[name](g, ins, in_avals, out_avals, {**eqn.params, "_name": name})
            for node in g.nodes[first:]:          # node names say which primitive and line they come from
                node.name = g.name(f"{name}@{source_info_util.summarize(eqn.source_info)}")
        else:
            raise OnnxExportError(f"no ONNX rule for the JAX primitive {name!r} (slam_jax/onnx_export.py)")
        for var, out in zip(eqn.outvars, outs):
            env[var] = out
    return [read(v) for v in jaxpr.outvars]


def _scan(g: _Graph, eqn, ins: list[str]) -> list[str]:
    """A scan of static length, unrolled: consts, carry, then one slice of each scanned input per iteration."""
    p = eqn.params
    body, n_consts, n_carry, length = p["jaxpr"], p["num_consts"], p["num_carry"], p["length"]
    consts, carry, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
    ys: list[list[str]] = []
    order = range(length - 1, -1, -1) if p["reverse"] else range(length)
    for i in order:
        index = g.const(np.asarray(i, np.int64))
        x_i = [g.op("Gather", x, index, axis=0) for x in xs]
        outs = _emit(g, body.jaxpr, body.consts, [*consts, *carry, *x_i])
        carry, y = outs[:n_carry], outs[n_carry:]
        ys.append(y)
    if p["reverse"]:
        ys.reverse()
    zero = g.const(np.asarray([0], np.int64))
    stacked = [g.op("Concat", *(g.op("Unsqueeze", y[k], zero) for y in ys), axis=0) for k in range(len(ys[0]))] \
        if ys and ys[0] else []
    return [*carry, *stacked]


def to_onnx(fn: Callable, params: Any, example_args: Sequence[Any], input_names: Sequence[str],
            output_names: Sequence[str], *, graph_name: str = "slam_jax") -> Any:
    """`fn(params, *example_args)` as an ONNX ModelProto with the example arguments' (fixed) shapes; `params` (a
    tree of arrays) become initializers named by their path ("encoder/speech_stack/.../kernel")."""
    import jax
    from onnx import checker, helper, numpy_helper

    from slam_jax.optim import param_path
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    closed = jax.make_jaxpr(lambda flat, *args: fn(jax.tree_util.tree_unflatten(treedef, flat), *args))(
        [leaf for _, leaf in leaves], *example_args)
    g = _Graph()
    names = [param_path(path) for path, _ in leaves]
    g.initializers.extend(numpy_helper.from_array(np.array(leaf, order="C"), name)
                          for name, (_, leaf) in zip(names, leaves))
    outs = _emit(g, closed.jaxpr, closed.consts, [*names, *input_names])
    for out, name in zip(outs, output_names):
        g.nodes.append(helper.make_node("Identity", [out], [name]))
    used = {i for node in g.nodes for i in node.input}
    initializers = [t for t in g.initializers if t.name in used]
    value = lambda name, aval: helper.make_tensor_value_info(name, _onnx_type(aval.dtype), list(aval.shape))
    inputs = closed.jaxpr.invars[len(names):]
    graph = helper.make_graph(g.nodes, graph_name, [value(n, v.aval) for n, v in zip(input_names, inputs)],
                              [value(n, v.aval) for n, v in zip(output_names, closed.jaxpr.outvars)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="slam_jax")
    model.ir_version = min(model.ir_version, 10)    # what onnxruntime >= 1.20 reads
    checker.check_model(model)
    return model


def ctc_function(model) -> Callable:
    """(params, features [B, T, 80], segment_ids [B, T]) -> (log_probs [B, T', vocab], lengths [B]) of an
    `inference.Model` loaded from a CTC ASR run."""
    import jax
    from flax import nnx
    if model.task.name != "asr_ctc":
        raise OnnxExportError(f"{model.model_dir} is a {model.task.name!r} run: the ONNX export is of CTC ASR models")
    with nnx.use_eager_sharding(False):
        graphdef = nnx.split(nnx.eval_shape(lambda: model.task.build_model(nnx.Rngs(0))))[0]

    def fn(params, features, segment_ids):
        logits, seg = nnx.merge(graphdef, params)(features, segment_ids)
        return jax.nn.log_softmax(logits, -1), (seg > 0).sum(1).astype(np.int32)
    return fn


def export_ctc(model, path: str, *, batch_size: int = 1, frames: int = 3000) -> dict[str, Any]:
    """Writes `model` (a CTC ASR `inference.Model`) as ONNX to `path`; returns its input/output shapes."""
    import jax
    import jax.numpy as jnp
    import tensorflow as tf

    from slam_jax.data.features import NUM_MEL_BINS
    fn = ctc_function(model)
    args = (jnp.zeros((batch_size, frames, NUM_MEL_BINS), jnp.float32), jnp.ones((batch_size, frames), jnp.int32))
    params = jax.tree.map(np.asarray, model.params)
    proto = to_onnx(fn, params, args, ("features", "segment_ids"), ("log_probs", "lengths"), graph_name="slam_jax_ctc")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(proto.SerializeToString())
    shape = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]
    return {"file": path.rsplit("/", 1)[-1], "opset": OPSET,
            "inputs": {v.name: shape(v) for v in proto.graph.input},
            "outputs": {v.name: shape(v) for v in proto.graph.output}}


def max_difference(model, path: str, features: np.ndarray, segment_ids: np.ndarray) -> float:
    """Largest |JAX - onnxruntime| difference of the CTC log-probabilities over the valid frames of one batch
    (features float32 [batch, frames, 80], segment_ids int32 [batch, frames], the ONNX file's shapes)."""
    import jax
    import onnxruntime
    want, lengths = jax.jit(ctc_function(model))(model.params, features, segment_ids)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got, got_lengths = session.run(None, {"features": features, "segment_ids": segment_ids})
    if not np.array_equal(np.asarray(lengths), got_lengths):
        return float("inf")
    valid = np.arange(got.shape[1])[None, :] < got_lengths[:, None]            # [batch, frames']
    return float(np.abs(np.asarray(want) - got)[valid].max(initial=0.0))
