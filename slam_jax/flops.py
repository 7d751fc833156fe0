"""Analytic FLOP and memory model of a SLAM train step (what `slam-bench` reports MFU against).

FLOPs count 2 per multiply-add and cover every matmul-like op the step runs, counted *as implemented* (e.g. the
contrastive similarity is a full `[T', T']` matrix per row, attention covers the whole row length even when
packed segments mask part of it, the quantizer's codebook lookup is a one-hot matmul). Elementwise ops, norms,
softmax and gathers are not counted. Forward FLOPs per position of one Conformer layer (d model, f FFN, k kernel,
t positions attended):

    layer(t) = 8·d·f           two macaron FFNs (d -> f -> d)
             + 8·d²            fused QKV (6·d²) and output (2·d²) projections
             + 4·t·d           Q·Kᵀ and A·V over all heads
             + 6·d² + 2·k·d    conv module: pointwise d -> 2d, depthwise k taps, pointwise d -> d

A train step costs `model_flops = 3 x forward` (the backward of a matmul is two matmuls of the same size). Remat
recomputes part of the forward on the hardware (`hardware_flops`): policy 'full' the whole forward of the
Conformer stacks again, 'dots_no_batch' only the batched attention dots (Q·Kᵀ, A·V), 'dots' and 'none' nothing.
MFU uses model FLOPs (PaLM's definition). docs/PERFORMANCE.md writes the whole formula out.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from slam_jax import partitioning
from slam_jax.model import ModelConfig, abstract_model
from slam_jax.pretraining import ObjectiveConfig


# bf16 dense peak per chip (vendor figures). Matched against `device.device_kind`, most specific first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
)


def peak_flops(device: jax.Device) -> float | None:
    """The vendor bf16 dense peak FLOP/s of `device` (PEAK_BF16_FLOPS), or None for other kinds (e.g. CPU)."""
    kind = getattr(device, "device_kind", "").lower()
    return next((peak for name, peak in PEAK_BF16_FLOPS if name.lower() in kind), None)


@dataclasses.dataclass(frozen=True)
class BatchShapes:
    """Global batch shapes of one step (the data contract's static shapes, `slam_jax.data.schema`).

    speech_rows x speech_frames: unlabeled speech, log-mel frames before the 4x subsampling.
    text_rows x text_tokens: unlabeled text.
    paired_rows x paired_frames / paired_tokens: paired rows (speech log-mel frames and transcript tokens).
    """

    speech_rows: int = 0
    speech_frames: int = 0
    text_rows: int = 0
    text_tokens: int = 0
    paired_rows: int = 0
    paired_frames: int = 0
    paired_tokens: int = 0

    @classmethod
    def from_batch(cls, batch: Mapping[str, Mapping[str, Any]]) -> "BatchShapes":
        """Shapes of a batch dict in the data contract: arrays, ShapeDtypeStructs or `schema.batch_spec`'s
        (shape, dtype) pairs."""
        def shape(kind: str, key: str) -> tuple[int, ...]:
            x = batch[kind][key]
            return tuple(x.shape if hasattr(x, "shape") else x[0])

        kw: dict[str, int] = {}
        if "speech" in batch:
            kw["speech_rows"], kw["speech_frames"] = shape("speech", "segment_ids")
        if "text" in batch:
            kw["text_rows"], kw["text_tokens"] = shape("text", "tokens")
        if "paired" in batch:
            kw["paired_rows"], kw["paired_frames"] = shape("paired", "segment_ids")
            kw["paired_tokens"] = shape("paired", "tokens")[1]
        return cls(**kw)


def subsampled(frames: int) -> int:
    """Conformer positions of `frames` log-mel frames (two stride-2 convolutions)."""
    return -(-(-(-frames // 2)) // 2)


# ------------------------------------------------------------------------------------------ forward FLOPs
def conformer_layer_flops(cfg: ModelConfig, positions: int) -> float:
    """Forward FLOPs of one Conformer layer on one row of `positions` positions (attention over the whole row)."""
    d, f, k, t = cfg.d_model, cfg.ffn_dim, cfg.conv_kernel, positions
    return t * (8 * d * f + 8 * d * d + 4 * t * d + 6 * d * d + 2 * k * d)


def attention_dot_flops(cfg: ModelConfig, positions: int) -> float:
    """Forward FLOPs of the batched attention dots (Q·Kᵀ and A·V) of one layer on one row."""
    return 4.0 * positions * positions * cfg.d_model


def subsampling_flops(cfg: ModelConfig, frames: int) -> float:
    """Forward FLOPs of the conv front-end on one row of `frames` log-mel frames.

    conv1: 3x3 taps, 1 -> C channels at [T/2, F/2]; conv2: 3x3 taps, C -> C at [T/4, F/4]; Linear (F/4)·C -> d.
    """
    c, d = cfg.subsampling_channels, cfg.d_model
    t1, f1 = -(-frames // 2), -(-cfg.num_mel_bins // 2)
    t2, f2 = -(-t1 // 2), -(-f1 // 2)
    return 2.0 * (t1 * f1 * c * 9 + t2 * f2 * c * 9 * c + t2 * f2 * c * d)


def quantizer_flops(cfg: ModelConfig, positions: int) -> float:
    """Forward FLOPs of the Gumbel quantizer on one row: logits d -> G·V, one-hot codebook lookup G·V -> code_dim."""
    v = cfg.num_codebooks * cfg.codebook_size
    return 2.0 * positions * (cfg.d_model * v + cfg.codebook_size * cfg.code_dim)


def contrastive_flops(cfg: ModelConfig, positions: int) -> float:
    """Forward FLOPs of the contrastive head on one row: projection d -> code_dim (and code_dim -> code_dim of the
    targets with `project_targets`) and the [T', T'] cosine matrix."""
    target = cfg.code_dim * cfg.code_dim if cfg.project_targets else 0
    return 2.0 * positions * (cfg.d_model * cfg.code_dim + target + positions * cfg.code_dim)


def health_flops(cfg: ModelConfig, positions: int, ranks: int) -> float:
    """Forward FLOPs of the health metrics on one row: the d x d feature covariance of each effective rank."""
    return ranks * 2.0 * positions * cfg.d_model * cfg.d_model


def speech_mlm_flops(cfg: ModelConfig, positions: int) -> float:
    return 2.0 * positions * cfg.d_model * cfg.num_codebooks * cfg.codebook_size


def text_mlm_flops(cfg: ModelConfig, positions: int) -> float:
    """Transform d -> d plus the (tied) output projection d -> vocab."""
    return 2.0 * positions * (cfg.d_model * cfg.d_model + cfg.d_model * cfg.vocab_size)


@dataclasses.dataclass
class FlopCount:
    """Forward FLOPs of one step split by component; `stack_forward` / `attention_dots` feed the remat estimate;
    `no_grad` is the part with no backward pass (the health metrics)."""

    components: dict[str, float] = dataclasses.field(default_factory=dict)
    stack_forward: float = 0.0
    attention_dots: float = 0.0
    no_grad: float = 0.0

    def add(self, name: str, flops: float, *, no_grad: bool = False) -> None:
        self.components[name] = self.components.get(name, 0.0) + float(flops)
        if no_grad:
            self.no_grad += float(flops)

    @property
    def train(self) -> float:
        """Forward + backward (2 x forward) of the differentiated part, forward of the rest."""
        return 3.0 * self.forward - 2.0 * self.no_grad

    def stack(self, name: str, cfg: ModelConfig, rows: int, layers: int, positions: int) -> None:
        f = rows * layers * conformer_layer_flops(cfg, positions)
        self.add(name, f)
        self.stack_forward += f
        self.attention_dots += rows * layers * attention_dot_flops(cfg, positions)

    @property
    def forward(self) -> float:
        return sum(self.components.values())


def forward_flops(cfg: ModelConfig, shapes: BatchShapes, objectives: ObjectiveConfig) -> FlopCount:
    """Forward FLOPs of `pretraining.compute_losses` for this objective set and batch, by component: the front-ends
    of each speech sub-batch, the encoder passes the objectives declare (`ObjectiveConfig.encoder_passes`, each
    once) and each objective's heads (`pretraining.OBJECTIVES`) on its rows. A sub-batch with no rows costs nothing.
    """
    rows = {"speech": shapes.speech_rows, "text": shapes.text_rows, "paired": shapes.paired_rows}
    frames = {"speech": shapes.speech_frames, "paired": shapes.paired_frames}
    speech = {kind: subsampled(f) for kind, f in frames.items()}          # Conformer positions of the speech
    text = {"text": shapes.text_tokens, "paired": shapes.paired_tokens}   # ... and of the text
    b, t, joint = rows["paired"], speech["paired"], 1 + shapes.paired_tokens + speech["paired"]  # [CLS; text; speech]
    n, m = cfg.speech_layers, cfg.shared_layers
    stacks = {  # pass -> its Conformer stacks as (component, rows, layers, positions)
        "speech.speech_stack": [("speech_stack", rows["speech"], n, speech["speech"])],
        "speech.shared_stack": [("shared_stack", rows["speech"], m, speech["speech"])],
        "text.shared_stack": [("shared_stack", rows["text"], m, text["text"])],
        "paired.joint": [("speech_stack", b, n, t), ("shared_stack", b, m, joint)],
        "paired.speech_stack": [("speech_stack", b, n, t)],
        "paired.stm": [("shared_stack", 2 * b, m, joint)],   # positives and rolled negatives
        "paired.ctc": [("shared_stack", b, m, t)],
    }
    heads = {  # head -> forward FLOPs on one row of `kind`
        "contrastive": lambda kind: contrastive_flops(cfg, speech[kind]),
        "speech_mlm_head": lambda kind: speech_mlm_flops(cfg, speech[kind]),
        "text_mlm_head": lambda kind: text_mlm_flops(cfg, text[kind]),
        "stm_head": lambda kind: 2 * 2 * cfg.d_model,   # d -> 1 on [CLS], positives and negatives
        "ctc_head": lambda kind: 2.0 * speech[kind] * cfg.d_model * cfg.vocab_size,
    }
    passes = [p for p in objectives.encoder_passes if rows[p.split(".")[0]]]
    out = FlopCount()
    for kind in ("speech", "paired"):
        if any(p.startswith(kind + ".") for p in passes):
            out.add("subsampling", rows[kind] * subsampling_flops(cfg, frames[kind]))
            out.add("quantizer", rows[kind] * quantizer_flops(cfg, speech[kind]))
    if "speech.speech_stack" in passes:   # effective ranks of z, c (and the top) of the speech sub-batch
        ranks = 3 if "speech.shared_stack" in passes else 2
        out.add("health", rows["speech"] * health_flops(cfg, speech["speech"], ranks), no_grad=True)
    for p in passes:
        for name, r, layers, positions in stacks[p]:
            out.stack(name, cfg, r, layers, positions)
    for objective in objectives.objectives:
        if rows[objective.kind]:
            for head in objective.heads:
                out.add(head, rows[objective.kind] * heads[head](objective.kind))
    return out


def train_step_flops(cfg: ModelConfig, shapes: BatchShapes, objectives: ObjectiveConfig | None = None) -> float:
    """Model FLOPs of one train step (forward + backward = 3 x forward; the health metrics forward only) for the
    global batch `shapes`.

    Args:
      cfg: the model. shapes: global batch shapes. objectives: the objective set (default: ObjectiveConfig(),
        i.e. SLAM = w2v-BERT + SpanBERT).
    Returns:
      FLOPs per step (divide by chips for per-chip FLOPs; divide by step time x peak for MFU).
    """
    return forward_flops(cfg, shapes, objectives or ObjectiveConfig()).train


def hardware_flops(cfg: ModelConfig, shapes: BatchShapes, objectives: ObjectiveConfig | None = None) -> float:
    """FLOPs the hardware executes: model FLOPs plus the forward that remat recomputes (see module docstring)."""
    count = forward_flops(cfg, shapes, objectives or ObjectiveConfig())
    extra = {"none": 0.0, "dots": 0.0, "dots_no_batch": count.attention_dots, "full": count.stack_forward}
    return count.train + extra[cfg.remat]


# ------------------------------------------------------------------------------------------ memory model
def _dtype_bytes(name: str) -> int:
    return 2 if name == "bfloat16" else 4


def parameter_count(cfg: ModelConfig) -> int:
    """Exact parameter count, by abstract evaluation of the model."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))


def sharded_parameter_count(cfg: ModelConfig, mesh_shape: Mapping[str, int],
                            rules: Sequence[tuple[str, Any]] = partitioning.LOGICAL_RULES) -> int:
    """Parameters held by one chip: each tensor divided by the mesh axes its logical axes map to.

    Uses the trainer's rules (`partitioning._fit`): a dimension that its mesh axes do not divide, or whose mesh
    axes an earlier dimension of the same tensor already uses, is replicated.
    """
    state = nnx.state(abstract_model(cfg), nnx.Param)
    rule = dict(rules)
    total = 0
    for var in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = tuple(var.get_metadata().get("out_sharding") or ())
        shape = var.shape
        size, used = 1, set()
        for i, dim in enumerate(shape):
            axes = rule.get(names[i]) if i < len(names) and names[i] is not None else None
            axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
            if used & set(axes):
                axes = ()
            used |= set(axes)
            split = math.prod(mesh_shape.get(a, 1) for a in axes)
            size *= dim // split if split > 1 and dim % split == 0 else dim
        total += size
    return total


REMAT_ORDER = ("none", "dots", "dots_no_batch", "full")  # most to least saved activation memory


def activation_bytes_per_position(cfg: ModelConfig, positions: int) -> dict[str, float]:
    """Bytes one Conformer layer keeps per position for the backward pass, by remat policy (an estimate).

    'none' keeps every intermediate: the FFN hidden (pre- and post-Swish, 2·f per FFN), the LayerNorm inputs and
    outputs, QKV, the attention probabilities (heads·t in fp32), the conv module's intermediates (~10·d) and the
    residual stream (~25·d in all). 'dots' keeps the outputs of every dot (2·f + 10·d + heads·t); 'dots_no_batch'
    drops the batched attention dots (2·f + 9·d); 'full' keeps only the layer input (d, in compute dtype).
    Matmul outputs are in the compute dtype; the attention probabilities and norm statistics in fp32.
    """
    d, f, h, t = cfg.d_model, cfg.ffn_dim, cfg.num_heads, positions
    c = _dtype_bytes(cfg.dtype)
    return {
        "none": c * (4 * f + 25 * d) + 4 * h * t,
        "dots": c * (2 * f + 10 * d) + 4 * h * t,
        "dots_no_batch": c * (2 * f + 9 * d),
        "full": c * d,
    }


def memory_per_chip(cfg: ModelConfig, shapes: BatchShapes, mesh_shape: Mapping[str, int] | None = None,
                    objectives: ObjectiveConfig | None = None,
                    rules: Sequence[tuple[str, Any]] = partitioning.LOGICAL_RULES) -> dict[str, float]:
    """Estimated bytes per chip of one train step.

    Args:
      cfg: model (its `remat` and `dtype` pick the activation estimate). shapes: global batch shapes.
      mesh_shape: {'data': D, 'fsdp': F, 'tensor': T} (default: one chip). objectives: default ObjectiveConfig().
    Returns:
      dict with 'params', 'grads', 'adam' (fp32: 4, 4 and 8 bytes per sharded parameter), 'activations' (saved
      per-layer activations of every stack pass of this chip's rows, plus, under remat, one layer's recompute
      working set, plus the fp32 logits of the text / speech heads with their softmax and gradient), and 'total'.
    """
    mesh_shape = dict(mesh_shape or {"data": 1, "fsdp": 1, "tensor": 1})
    objectives = objectives or ObjectiveConfig()
    rows_split = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    n_params = sharded_parameter_count(cfg, mesh_shape, rules)
    per_layer = []  # (global rows, positions, layers) of every Conformer stack pass, as in forward_flops
    n, m = cfg.speech_layers, cfg.shared_layers
    if objectives.uses_speech and shapes.speech_rows:
        t = subsampled(shapes.speech_frames)
        per_layer.append((shapes.speech_rows, t, n))
        if objectives.speech_mlm or objectives.contrastive_on == "top":
            per_layer.append((shapes.speech_rows, t, m))
    if objectives.text_mlm and shapes.text_rows:
        per_layer.append((shapes.text_rows, shapes.text_tokens, m))
    if objectives.uses_paired and shapes.paired_rows:
        t = subsampled(shapes.paired_frames)
        joint = 1 + shapes.paired_tokens + t
        if objectives.tlm or objectives.paired_contrastive or (objectives.stm and objectives.stm_on_masked):
            per_layer += [(shapes.paired_rows, t, n), (shapes.paired_rows, joint, m)]
        if objectives.ctc or (objectives.stm and not objectives.stm_on_masked):
            per_layer.append((shapes.paired_rows, t, n))
        if objectives.stm:
            per_layer.append((2 * shapes.paired_rows, joint, m))
        if objectives.ctc:
            per_layer.append((shapes.paired_rows, t, m))
    saved, working = 0.0, 0.0
    for rows, t, layers in per_layer:
        rows = -(-rows // rows_split)
        per_pos = activation_bytes_per_position(cfg, t)
        saved += rows * t * layers * per_pos[cfg.remat]
        if cfg.remat != "none":
            working = max(working, rows * t * per_pos["none"])
    logits = 0.0
    if shapes.text_rows and objectives.text_mlm:
        logits += 3 * 4 * -(-shapes.text_rows // rows_split) * shapes.text_tokens * cfg.vocab_size
    if shapes.paired_rows and objectives.tlm:
        logits += 3 * 4 * -(-shapes.paired_rows // rows_split) * shapes.paired_tokens * cfg.vocab_size
    out = {"params": 4.0 * n_params, "grads": 4.0 * n_params, "adam": 8.0 * n_params,
           "activations": saved + working + logits}
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------------------ traced count
def _dot_flops(eqn) -> float:
    (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    contract = math.prod(lhs[i] for i in lc)
    batch = math.prod(lhs[i] for i in lb)
    free_l = math.prod(d for i, d in enumerate(lhs) if i not in lc and i not in lb)
    free_r = math.prod(d for i, d in enumerate(rhs) if i not in rc and i not in eqn.params["dimension_numbers"][1][1])
    return 2.0 * batch * free_l * free_r * contract


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    dn = eqn.params["dimension_numbers"]
    kernel_in_dim, kernel_out_dim = dn.rhs_spec[1], dn.rhs_spec[0]
    window = math.prod(d for i, d in enumerate(rhs) if i not in (kernel_in_dim, kernel_out_dim))
    return 2.0 * math.prod(out) * rhs[kernel_in_dim] * window  # rhs in-dim = input features per group


def jaxpr_matmul_flops(jaxpr: Any) -> float:
    """FLOPs of every `dot_general` and convolution in a (closed) jaxpr, recursing into jit / scan (x length) /
    remat / custom-derivative calls; `cond` counts its most expensive branch. The independent check of this
    module's formulas: `jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))`.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * jaxpr_matmul_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(jaxpr_matmul_flops(b) for b in eqn.params["branches"])
        elif name == "while":
            raise ValueError("jaxpr_matmul_flops: a while loop has no static trip count")
        else:
            for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
                sub = eqn.params.get(key)
                if sub is not None and hasattr(getattr(sub, "jaxpr", sub), "eqns"):
                    total += jaxpr_matmul_flops(sub)
                    break
    return total
