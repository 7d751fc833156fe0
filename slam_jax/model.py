"""The unified SLAM encoder and its objective heads (Flax NNX).

```
speech: log-mel [B, T, 80] -> ConvSubsampling -> z [B, T/4, d] -(mask)-> N Conformer layers -> c  (contrastive)
text:   ids [B, L] -> Embedding + sinusoidal PE -> LayerNorm -> e [B, L, d]
paired: [CLS] e  c   (layout configurable)              \
speech-only: c ; text-only: e                            -> M shared Conformer layers -> h  -> heads
```
No losses live here; `slam_jax.pretraining` wires the model to the objectives.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from slam_jax.layers import common
from slam_jax.layers.conformer import ConformerConfig, ConformerStack
from slam_jax.layers.quantizer import GumbelQuantizer, QuantizerConfig
from slam_jax.layers.subsampling import ConvSubsampling
from slam_jax.layers.text_embedding import TextEmbedding

Array = jax.Array

PAIRED_LAYOUTS = ("cls_text_speech", "cls_speech_text")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every architectural hyper-parameter of the encoder and heads (defaults: the 600M model of SLAM (Bapna et al. 2021, arXiv 2110.10329): d 1024,
    FFN 4096, 8 heads, kernel 5, 8 speech + 16 shared Conformer layers).

    Attributes marked (C) follow public re-implementations (fairseq / WeNet w2v-BERT, lingvo Conformer), (?) are
    not reported by the papers and are our choice, (S) are stated by the papers:
      subsampling_channels (?): 128.  group_norm_groups/eps (C): 32 / 1e-3.  dropout (?): 0.0.
      paired_layout (?): 'cls_text_speech' = learned CLS, transcript, speech; or 'cls_speech_text'.
      modality_embedding (?): add a learned 2-row text/speech embedding to paired inputs (default off).
      speech_mask_vector (?): 'random' replaces masked frames by N(0, speech_mask_std^2) vectors (S, C: std 0.1);
        'learned' uses one learned vector.
      tie_text_embedding (?): text-MLM output projection tied to the input embedding.
      gumbel_temperature_start / _decay / _floor (C): quantizer temperature max(start * decay^step, floor),
        default 2.0 * 0.999995^step floored at 0.1.
      quantizer_input_norm / quantizer_logit_init_std / quantizer_codebook_init (?): see `QuantizerConfig`
        (defaults: z as it is, fan-in init, U[0, 1) codebook; fairseq's wav2vec 2.0: True / 1.0 / U[0, 1)).
      feature_grad_mult (?): scales the gradient that reaches the conv subsampling (fairseq's `feature_grad_mult`,
        0.1 in wav2vec 2.0 Base; default 1.0: the plain gradient).
      project_targets (C): a linear projection of the quantized vectors before the contrastive similarity
        (fairseq's `project_q` / fairseq2's `final_target_proj`); False compares W c_t with q_t directly.
      ctc_head: add a CTC head over the vocabulary (mSLAM-CTC); blank = id 0 (PAD).
      remat: 'none' | 'full' | 'dots' | 'dots_no_batch' (`jax.checkpoint` policy inside the layer scan).
      scan_layers: scan each stack over its layers (compile time flat in depth); False unrolls the layers.
      dtype: compute dtype 'float32' or 'bfloat16' (params, norms, softmax and losses stay float32).
    """

    d_model: int = 1024
    num_heads: int = 8
    ffn_dim: int = 4096
    conv_kernel: int = 5
    speech_layers: int = 8
    shared_layers: int = 16
    vocab_size: int = 32000
    num_mel_bins: int = 80
    subsampling_channels: int = 128
    group_norm_groups: int = 32
    group_norm_eps: float = 1e-3
    dropout: float = 0.0
    paired_layout: str = "cls_text_speech"
    modality_embedding: bool = False
    speech_mask_vector: str = "random"
    speech_mask_std: float = 0.1
    tie_text_embedding: bool = True
    num_codebooks: int = 1
    codebook_size: int = 1024
    code_dim: int = 1024
    gumbel_temperature_start: float = 2.0
    gumbel_temperature_decay: float = 0.999995
    gumbel_temperature_floor: float = 0.1
    quantizer_input_norm: bool = False
    quantizer_logit_init_std: float = 0.0
    quantizer_codebook_init: str = "uniform"
    feature_grad_mult: float = 1.0
    project_targets: bool = False
    ctc_head: bool = False
    remat: str = "full"
    scan_layers: bool = True
    dtype: str = "float32"
    conv_impl: str = "shift"
    attention_impl: str | None = None

    def __post_init__(self):
        if self.paired_layout not in PAIRED_LAYOUTS:
            raise ValueError(f"paired_layout must be one of {PAIRED_LAYOUTS}, got {self.paired_layout!r}")
        if self.speech_mask_vector not in ("random", "learned"):
            raise ValueError(f"speech_mask_vector must be 'random' or 'learned', got {self.speech_mask_vector!r}")

    @property
    def conformer(self) -> ConformerConfig:
        return ConformerConfig(
            d_model=self.d_model, num_heads=self.num_heads, ffn_dim=self.ffn_dim, conv_kernel=self.conv_kernel,
            group_norm_groups=self.group_norm_groups, group_norm_eps=self.group_norm_eps, dropout=self.dropout,
            dtype=self.dtype, conv_impl=self.conv_impl, attention_impl=self.attention_impl)

    @property
    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig(num_codebooks=self.num_codebooks, codebook_size=self.codebook_size,
                               code_dim=self.code_dim, temperature_start=self.gumbel_temperature_start,
                               temperature_decay=self.gumbel_temperature_decay,
                               temperature_floor=self.gumbel_temperature_floor,
                               input_norm=self.quantizer_input_norm, logit_init_std=self.quantizer_logit_init_std,
                               codebook_init=self.quantizer_codebook_init)


@dataclasses.dataclass
class PairedOutputs:
    """Top-layer outputs of a paired row, split back by modality.

    cls: [batch, d]; text: [batch, L, d]; speech: [batch, T', d].
    """

    cls: Array
    text: Array
    speech: Array


class SlamEncoder(nnx.Module):
    """Conv subsampling + speech Conformer stack + text embedding + shared multimodal Conformer stack."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        conformer, dtype, d = cfg.conformer, common.dtype_of(cfg.dtype), cfg.d_model
        self.subsampling = ConvSubsampling(cfg.num_mel_bins, d, channels=cfg.subsampling_channels, dtype=dtype,
                                           rngs=rngs)
        self.speech_stack = ConformerStack(conformer, cfg.speech_layers, remat=cfg.remat,
                                           scan_layers=cfg.scan_layers, rngs=rngs)
        self.text_embedding = TextEmbedding(cfg.vocab_size, d, dtype=dtype, rngs=rngs)
        self.shared_stack = ConformerStack(conformer, cfg.shared_layers, remat=cfg.remat,
                                           scan_layers=cfg.scan_layers, rngs=rngs)
        normal = nnx.with_partitioning(jax.nn.initializers.normal(0.02), ("embed",))
        self.cls = nnx.Param(normal(rngs.params(), (d,)))
        if cfg.speech_mask_vector == "learned":
            self.speech_mask = nnx.Param(normal(rngs.params(), (d,)))
        if cfg.modality_embedding:
            self.modality = nnx.Param(nnx.with_partitioning(jax.nn.initializers.normal(0.02), (None, "embed"))(
                rngs.params(), (2, d)))

    @property
    def dtype(self) -> jnp.dtype:
        return common.dtype_of(self.cfg.dtype)

    def speech_features(self, features: Array, segment_ids: Array) -> tuple[Array, Array]:
        """Log-mel [B, T, 80] + ids [B, T] -> (z [B, T/4, d] unmasked subsampled features, ids [B, T/4])."""
        z, seg = self.subsampling(features, segment_ids)
        g = self.cfg.feature_grad_mult
        if g != 1.0:  # forward unchanged, gradient into the subsampling scaled by g
            z = g * z + (1.0 - g) * jax.lax.stop_gradient(z)
        return z, seg

    def mask_speech(self, z: Array, frame_mask: Array, key: Array) -> Array:
        """Replaces z at frame_mask (bool [B, T']) by random N(0, std^2) vectors or the learned mask vector."""
        if self.cfg.speech_mask_vector == "learned":
            fill = jnp.broadcast_to(self.speech_mask[...], z.shape)
        else:
            fill = self.cfg.speech_mask_std * jax.random.normal(key, z.shape, jnp.float32)
        return jnp.where(frame_mask[..., None], fill.astype(z.dtype), z)

    def speech_encoder(self, z: Array, segment_ids: Array, key: Array | None = None) -> Array:
        """The N speech-only layers: [B, T', d] -> contrastive vectors c [B, T', d]."""
        return self.speech_stack(z, segment_ids, key=key)

    def speech_representations(self, features: Array, segment_ids: Array) -> tuple[Array, Array]:
        """Every layer's view of unmasked speech, no dropout (probes, health metrics, feature extraction).

        Log-mel [B, T, 80] + ids [B, T] -> (layers [1 + N + M, B, T/4, d]: z, the N speech layers, then the M shared
        layers run on speech alone; ids [B, T/4]).
        """
        z, seg = self.speech_features(features, segment_ids)
        c, speech = self.speech_stack(z, seg, return_layers=True)
        _, shared = self.shared_stack(c, seg, return_layers=True)
        return jnp.concatenate([z[None].astype(speech.dtype), speech, shared]), seg

    def embed_text(self, tokens: Array, segment_ids: Array, positions: Array,
                   token_mask: Array | None = None) -> Array:
        """Token ids [B, L] -> [B, L, d] ("text encoder": embedding + PE + LayerNorm, no layers)."""
        return self.text_embedding(tokens, segment_ids, positions, token_mask)

    def shared(self, x: Array, segment_ids: Array, conv_segment_ids: Array | None = None,
               key: Array | None = None) -> Array:
        """The M shared multimodal layers: [B, S, d] -> [B, S, d]."""
        return self.shared_stack(x, segment_ids, conv_segment_ids, key=key)

    def encode_paired(self, c: Array, speech_segment_ids: Array, e: Array, text_segment_ids: Array,
                      key: Array | None = None) -> PairedOutputs:
        """Concatenates [CLS], text e [B, L, d] and speech c [B, T', d] (one pair per row) and runs the shared stack.

        Attention sees the whole pair; the depthwise conv and GroupNorm run within each modality (local segment
        ids: CLS + text = 1, speech = 2), so a row's padding between the modalities never changes the result.
        """
        b, l = text_segment_ids.shape
        dtype = c.dtype
        cls = jnp.broadcast_to(self.cls[...].astype(dtype), (b, 1, c.shape[-1]))
        text_on = (text_segment_ids > 0).astype(jnp.int32)
        speech_on = (speech_segment_ids > 0).astype(jnp.int32)
        if self.cfg.modality_embedding:
            e = e + self.modality[0].astype(dtype) * text_on[..., None]
            c = c + self.modality[1].astype(dtype) * speech_on[..., None]
        ones = jnp.ones((b, 1), jnp.int32)
        if self.cfg.paired_layout == "cls_text_speech":
            parts, seg, local = [cls, e, c], [ones, text_on, speech_on], [ones, text_on, 2 * speech_on]
        else:
            parts, seg, local = [cls, c, e], [ones, speech_on, text_on], [ones, 2 * speech_on, text_on]
        h = self.shared(jnp.concatenate(parts, 1).astype(dtype), jnp.concatenate(seg, 1),
                        jnp.concatenate(local, 1), key)
        if self.cfg.paired_layout == "cls_text_speech":
            return PairedOutputs(cls=h[:, 0], text=h[:, 1:1 + l], speech=h[:, 1 + l:])
        t = c.shape[1]
        return PairedOutputs(cls=h[:, 0], speech=h[:, 1:1 + t], text=h[:, 1 + t:])


class SlamModel(nnx.Module):
    """The encoder, the quantizer and every objective head.

    Heads: `contrastive` (W: d -> code_dim on c; optional `target_projection` of q), `speech_mlm` (d -> G*V on h),
    `text_mlm` (transform + tied embedding on h), `stm` (d -> 1 on the CLS output), optional `ctc` (d -> vocab on h
    of speech run alone).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, qcfg = cfg.d_model, cfg.quantizer
        self.encoder = SlamEncoder(cfg, rngs=rngs)
        self.quantizer = GumbelQuantizer(d, qcfg, rngs=rngs)
        self.contrastive = common.dense(d, qcfg.code_dim, ("embed", None), dtype=jnp.float32, rngs=rngs)
        if cfg.project_targets:
            self.target_projection = common.dense(qcfg.code_dim, qcfg.code_dim, (None, None), dtype=jnp.float32,
                                                  rngs=rngs)
        self.speech_mlm = common.dense(d, qcfg.num_codebooks * qcfg.codebook_size, ("embed", "codes"),
                                       dtype=jnp.float32, rngs=rngs)
        self.text_transform = common.dense(d, d, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)
        self.text_norm = common.layer_norm(d, rngs=rngs)
        if cfg.tie_text_embedding:
            self.text_bias = nnx.Param(common.zeros_init(("vocab",))(rngs.params(), (cfg.vocab_size,)))
        else:
            self.text_out = common.dense(d, cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, rngs=rngs)
        self.stm = common.dense(d, 1, ("embed", None), dtype=jnp.float32, rngs=rngs)
        if cfg.ctc_head:
            self.ctc = common.dense(d, cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, rngs=rngs)

    def contrastive_targets(self, q: Array) -> Array:
        """Quantized vectors [B, T', code_dim] -> the contrastive targets (projected with `project_targets`)."""
        return self.target_projection(q) if self.cfg.project_targets else q

    def speech_mlm_logits(self, h: Array) -> Array:
        """[B, T', d] -> float32 [B, T', G, V]."""
        q = self.cfg.quantizer
        h = common.constrain(h.astype(jnp.float32), common.BATCH_ACTIVATION)
        return self.speech_mlm(h).reshape(h.shape[:2] + (q.num_codebooks, q.codebook_size))

    def text_mlm_logits(self, h: Array) -> Array:
        """[B, L, d] -> float32 [B, L, vocab]."""
        h = common.constrain(h.astype(jnp.float32), common.BATCH_ACTIVATION)
        x = self.text_norm(jax.nn.gelu(self.text_transform(h)))
        if self.cfg.tie_text_embedding:
            return self.encoder.text_embedding.attend(x) + self.text_bias[...]
        return common.constrain(self.text_out(common.constrain(x, common.BATCH_ACTIVATION)), common.BATCH_ACTIVATION)

    def stm_logits(self, cls: Array) -> Array:
        """[B, d] -> float32 [B] matched/mismatched logit."""
        return self.stm(cls.astype(jnp.float32))[:, 0]

    def ctc_logits(self, h: Array) -> Array:
        """[B, T', d] -> float32 [B, T', vocab] (blank = 0)."""
        return self.ctc(h.astype(jnp.float32))


def abstract_model(cfg: ModelConfig) -> SlamModel:
    """The model with ShapeDtypeStruct leaves: shapes and logical axes without allocating any weight."""
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: SlamModel(cfg, rngs=nnx.Rngs(params=0)))
