"""ONNX export of a CTC ASR model: log-mel features in, CTC log-probabilities out, for onnxruntime and other serving
stacks without JAX.

    slam-export --model_dir=/tmp/slam_ft --output_dir=/tmp/slam_ft_export --onnx [--onnx_frames=3000 --onnx_batch=1]

The graph (`model.onnx` in the export folder, opset 18) has fixed shapes, as compiled TPU programs do:

    inputs   features     float32 [batch, frames, 80]  log-mel as `inference.Model.features` gives it, zero-padded
             segment_ids  int32   [batch, frames]      1 on real frames, 0 on padding
    outputs  log_probs    float32 [batch, frames', vocab]  CTC log-probabilities (id 0 is the blank), frames' =
                                                          `subsampled_length(frames)` (4x subsampling)
             lengths      int32   [batch]               valid frames' of each row

Our choice: the graph comes from translating the model's inference jaxpr with the `onnx` helper API (this module),
not from jax2onnx or jax2tf + tf2onnx. jax2onnx 0.12 fails on this model (its flax patches and missing primitive
plugins) and newer releases pin an older orbax; tf2onnx does not install beside TensorFlow 2.21. The jaxpr of an
eval-mode encoder uses about 40 primitives; each has a rule in `slam_jax/onnx_rules.py`, and any other primitive
is an error naming it. Call-like primitives (jit, custom_jvp/vjp, remat) are inlined and a scan over layers is
unrolled, so the graph is flat.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from slam_jax.onnx_rules import OPSET, RULES, Graph, OnnxExportError, onnx_type

__all__ = ["ONNX_FILE", "OnnxExportError", "ctc_function", "export_ctc", "max_difference", "to_onnx"]
ONNX_FILE = "model.onnx"


# -- the walk over a jaxpr --------------------------------------------------------------------------------------


# Primitives that only call a jaxpr (same values in, same values out): inlined. Any other primitive holding a jaxpr
# (cond, while, shard_map, ...) needs a rule of its own.
CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                   "custom_vjp_call_jaxpr", "checkpoint", "remat"})


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
    """(jaxpr, consts) of a call-like primitive (CALLS) to inline, else None."""
    if eqn.primitive.name not in CALLS:
        return None
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if hasattr(sub, "consts"):       # ClosedJaxpr
            return sub.jaxpr, list(sub.consts)
        if hasattr(sub, "eqns"):
            return sub, []
    return None


def _emit(g: Graph, jaxpr, consts: Sequence[Any], args: Sequence[str]) -> list[str]:
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
            raise OnnxExportError(f"no ONNX rule for the JAX primitive {name!r} (add a rule in slam_jax/onnx_rules.py)")
        for var, out in zip(eqn.outvars, outs):
            env[var] = out
    return [read(v) for v in jaxpr.outvars]


def _scan(g: Graph, eqn, ins: list[str]) -> list[str]:
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
    g = Graph()
    names = [param_path(path) for path, _ in leaves]
    g.initializers.extend(numpy_helper.from_array(np.array(leaf, order="C"), name)
                          for name, (_, leaf) in zip(names, leaves))
    outs = _emit(g, closed.jaxpr, closed.consts, [*names, *input_names])
    for out, name in zip(outs, output_names):
        g.nodes.append(helper.make_node("Identity", [out], [name]))
    used = {i for node in g.nodes for i in node.input}
    initializers = [t for t in g.initializers if t.name in used]
    value = lambda name, aval: helper.make_tensor_value_info(name, onnx_type(aval.dtype), list(aval.shape))
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
    `inference.Model` loaded from a CTC ASR run, computed in float32 whatever the run's `ModelConfig.dtype` (the
    parameters are float32 either way; onnxruntime's CPU provider has no bfloat16 MatMul)."""
    import dataclasses

    import jax
    from flax import nnx

    from slam_jax.finetune.asr_ctc import AsrModel
    if model.task.name != "asr_ctc":
        raise OnnxExportError(f"{model.model_dir} is a {model.task.name!r} run: the ONNX export is of CTC ASR models")
    cfg = dataclasses.replace(model.task.model_cfg, dtype="float32")
    with nnx.use_eager_sharding(False):
        graphdef = nnx.split(nnx.eval_shape(lambda: AsrModel(cfg, rngs=nnx.Rngs(0))))[0]

    def fn(params, features, segment_ids):
        logits, seg = nnx.merge(graphdef, params)(features, segment_ids)
        return jax.nn.log_softmax(logits, -1), (seg > 0).sum(1).astype(np.int32)
    return fn


def export_ctc(model, path: str, *, batch_size: int = 1, frames: int = 3000) -> dict[str, Any]:
    """Writes `model` (a CTC ASR `inference.Model`) as ONNX to `path`; returns its input/output shapes."""
    import jax
    import jax.numpy as jnp
    import tensorflow as tf
    fn = ctc_function(model)
    args = (jnp.zeros((batch_size, frames, model.task.model_cfg.num_mel_bins), jnp.float32),
            jnp.ones((batch_size, frames), jnp.int32))
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
    (features float32 [batch, frames, 80], segment_ids int32 [batch, frames], the ONNX file's shapes). The JAX side
    is `ctc_function`, the float32 computation the file holds: for a bfloat16 run this measures the translation,
    not the distance to the run's own bfloat16 outputs."""
    import jax
    import onnxruntime
    want, lengths = jax.jit(ctc_function(model))(model.params, features, segment_ids)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got, got_lengths = session.run(None, {"features": features, "segment_ids": segment_ids})
    if not np.array_equal(np.asarray(lengths), got_lengths):
        return float("inf")
    valid = np.arange(got.shape[1])[None, :] < got_lengths[:, None]            # [batch, frames']
    return float(np.abs(np.asarray(want) - got)[valid].max(initial=0.0))
