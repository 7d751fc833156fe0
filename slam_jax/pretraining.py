"""One pre-training step's losses: runs every active objective on its sub-batch and sums the weighted losses.

The batch follows `slam_jax.data.schema`. Masking happens here, inside the jitted step, from a PRNG key the trainer
derives from (seed, step), so it is reproducible and differs every step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from slam_jax import health, masking
from slam_jax.model import SlamModel
from slam_jax.objectives import ctc, span_mlm, stm, tlm, w2v_bert
from slam_jax.objectives.common import masked_mean

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
    """One pre-training objective as the rest of the code sees it.

    name: its `ObjectiveConfig` switch (and gin name); kind: the batch kind it reads (schema.py);
    losses: the metric names of its losses (what must fall in training); weight: its `ObjectiveConfig` weight field.
    passes: the encoder passes `compute_losses` runs for it, given the config (`ENCODER_PASSES`; objectives that
      need the same pass share it); heads: the output heads it adds on its kind's rows. `slam_jax.flops` counts
      a step's FLOPs from these two.
    """

    name: str
    kind: str
    losses: tuple[str, ...]
    weight: str
    passes: Callable[["ObjectiveConfig"], tuple[str, ...]]
    heads: tuple[str, ...]


# The Conformer passes of one step, each on the sub-batch its prefix names:
#   speech.speech_stack  unlabeled speech (masked) through the speech stack (after subsampling + quantizer)
#   speech.shared_stack  ... on through the shared stack to the top
#   text.shared_stack    unlabeled text (masked) through the shared stack
#   paired.joint         masked paired speech through the speech stack, then [CLS; text; speech] through the shared
#   paired.speech_stack  the clean paired speech alone through the speech stack
#   paired.stm           the clean pairs and their rolled negatives, [CLS; text; speech], through the shared stack
#   paired.ctc           the clean paired speech alone on through the shared stack
ENCODER_PASSES = ("speech.speech_stack", "speech.shared_stack", "text.shared_stack", "paired.joint",
                  "paired.speech_stack", "paired.stm", "paired.ctc")


def _stm_passes(cfg: "ObjectiveConfig") -> tuple[str, ...]:
    return ("paired.joint" if cfg.stm_on_masked else "paired.speech_stack", "paired.stm")


# Every objective, in the order of the loss metrics. `ObjectiveConfig.active`, `kinds`, `loss_names`, the FLOP model
# (`slam_jax.flops.forward_flops`), the mixture check of every run config (tests/test_run_configs.py) and the
# registry test (tests/test_objectives.py: each objective alone yields exactly its losses) derive from it.
OBJECTIVES: tuple[Objective, ...] = (
    Objective("contrastive", "speech", ("speech/contrastive_loss",), "contrastive_weight",
              lambda c: ("speech.speech_stack",) + (("speech.shared_stack",) if c.contrastive_on == "top" else ()),
              ("contrastive",)),
    Objective("speech_mlm", "speech", ("speech/mlm_loss",), "speech_mlm_weight",
              lambda c: ("speech.speech_stack", "speech.shared_stack"), ("speech_mlm_head",)),
    Objective("text_mlm", "text", ("text/mlm_loss",), "text_mlm_weight",
              lambda c: ("text.shared_stack",), ("text_mlm_head",)),
    Objective("tlm", "paired", ("paired/tlm_text_loss", "paired/tlm_speech_loss"), "tlm_weight",
              lambda c: ("paired.joint",), ("text_mlm_head", "speech_mlm_head")),
    Objective("paired_contrastive", "paired", ("paired/contrastive_loss",), "contrastive_weight",
              lambda c: ("paired.joint",), ("contrastive",)),
    Objective("stm", "paired", ("paired/stm_loss",), "stm_weight", _stm_passes, ("stm_head",)),
    Objective("ctc", "paired", ("paired/ctc_loss",), "ctc_weight",
              lambda c: ("paired.speech_stack", "paired.ctc"), ("ctc_head",)),
)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Which objectives run, their weights and their masking (SLAM, arXiv 2110.10329, and w2v-BERT, arXiv
    2108.06209; (C): a convention of public re-implementations, (?): not reported, our choice).

    Objectives:
      contrastive: w2v-BERT contrastive + diversity loss on unlabeled speech (w2v-conformer alone).
      speech_mlm: w2v-BERT masked prediction of quantizer ids on unlabeled speech.
      text_mlm: SpanBERT masked LM on unlabeled text.
      tlm: masked prediction of both modalities on paired data.
      stm: speech-text matching on paired data (negatives by rolling transcripts, ?).
      ctc: CTC on paired speech run alone (mSLAM).
      paired_contrastive (?): also the contrastive loss on the masked paired speech (default off).
      contrastive_on: 'speech_stack' (w2v-BERT: layer N) or 'top' (w2v-conformer: the last layer).
    Weights (?: SLAM does not report them; mSLAM reportedly 1.0 speech / 0.3 text / 0.03 paired):
      every active loss is multiplied by its weight and summed. `diversity_weight` is alpha (S: 0.1).
    Masking:
      speech: start prob 0.065, span 10, at least 2 spans (S/C) -> ~49% of frames.
      text: 15% in spans of 5 (S), all replaced by [MASK] (?: `text_random_fraction` / `text_keep_fraction` give
        BERT's 80/10/10).
      tlm: ~50% of tokens (span 5) and ~75% of frames (span 10) (S).
      stm_on_masked (?): classify the TLM-masked pair (one forward) instead of the clean pair (ALBEF, default).
    Speech targets and features (?: not reported; departures from the w2v-BERT defaults, measured in
    docs/EXPERIMENTS.md):
      speech_mlm_targets: 'sampled' = the Gumbel-sampled code ids (the quantizer's training output, default) or
        'argmax' = the code of the largest logit (no Gumbel noise in the masked-prediction targets; also TLM's).
      exclude_same_code_negatives (C): see `w2v_bert.contrastive_loss` (default True, as wav2vec 2.0).
      target_gradient: True (w2v-BERT, wav2vec 2.0) trains the quantizer and the feature encoder through the
        targets (straight-through Gumbel); False stops every gradient into the targets: the quantizer keeps its
        random initialization (a fixed random-projection quantizer, as BEST-RQ, Chiu et al. 2022) and z learns only
        through the context path, so neither can collapse the targets to make them easy.
      feature_penalty: weight of fairseq's `features_pen`, the mean square of the subsampled features z (10 in
        wav2vec 2.0 Base; default 0).
    """

    contrastive: bool = True
    speech_mlm: bool = True
    text_mlm: bool = True
    tlm: bool = False
    stm: bool = False
    ctc: bool = False
    paired_contrastive: bool = False
    contrastive_on: str = "speech_stack"

    contrastive_weight: float = 1.0
    diversity_weight: float = 0.1
    speech_mlm_weight: float = 1.0
    text_mlm_weight: float = 1.0
    tlm_weight: float = 1.0
    stm_weight: float = 1.0
    ctc_weight: float = 1.0

    num_negatives: int = 100
    contrastive_temperature: float = 0.1
    exclude_same_code_negatives: bool = True

    speech_mask_prob: float = 0.065
    speech_mask_span: int = 10
    speech_min_spans: int = 2
    text_mask_fraction: float = 0.15
    text_mask_span: int = 5
    text_random_fraction: float = 0.0
    text_keep_fraction: float = 0.0
    tlm_text_mask_fraction: float = 0.5
    tlm_speech_mask_fraction: float = 0.75
    stm_on_masked: bool = False
    speech_mlm_targets: str = "sampled"
    feature_penalty: float = 0.0
    target_gradient: bool = True

    def __post_init__(self):
        if self.contrastive_on not in ("speech_stack", "top"):
            raise ValueError(f"contrastive_on must be 'speech_stack' or 'top', got {self.contrastive_on!r}")
        if self.speech_mlm_targets not in ("sampled", "argmax"):
            raise ValueError(f"speech_mlm_targets must be 'sampled' or 'argmax', got {self.speech_mlm_targets!r}")

    def quantize(self, model: SlamModel, z: Array, step: Array, key: Array | None):
        """The quantizer's targets for subsampled features z [B, T', d] (see `target_gradient`)."""
        if self.target_gradient:
            return model.quantizer(z, step, key)
        return jax.tree.map(jax.lax.stop_gradient, model.quantizer(jax.lax.stop_gradient(z), step, key))

    def mlm_targets(self, quantized) -> Array:
        """The speech masked-prediction targets int [batch, time, G] of `speech_mlm_targets`."""
        if self.speech_mlm_targets == "argmax":
            return jnp.argmax(quantized.probs, -1).astype(jnp.int32)
        return quantized.ids

    @property
    def objectives(self) -> tuple[Objective, ...]:
        """The switched-on objectives (`OBJECTIVES` order)."""
        return tuple(o for o in OBJECTIVES if getattr(self, o.name))

    @property
    def encoder_passes(self) -> tuple[str, ...]:
        """The Conformer passes the switched-on objectives need (`ENCODER_PASSES` order, each once)."""
        needed = {p for o in self.objectives for p in o.passes(self)}
        return tuple(p for p in ENCODER_PASSES if p in needed)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @property
    def kinds(self) -> frozenset[str]:
        """The batch kinds the switched-on objectives read (a run's mixture must yield exactly these)."""
        return frozenset(o.kind for o in self.objectives)

    @property
    def uses_speech(self) -> bool:
        return "speech" in self.kinds

    @property
    def uses_paired(self) -> bool:
        return "paired" in self.kinds

    @property
    def speech_masking(self) -> masking.SpanMasking:
        return masking.SpanMasking(self.speech_mask_prob, self.speech_mask_span, self.speech_min_spans)

    @property
    def text_masking(self) -> masking.SpanMasking:
        return masking.SpanMasking.for_fraction(self.text_mask_fraction, self.text_mask_span, 1)

    @property
    def tlm_text_masking(self) -> masking.SpanMasking:
        return masking.SpanMasking.for_fraction(self.tlm_text_mask_fraction, self.text_mask_span, 1)

    @property
    def tlm_speech_masking(self) -> masking.SpanMasking:
        return masking.SpanMasking.for_fraction(self.tlm_speech_mask_fraction, self.speech_mask_span,
                                                self.speech_min_spans)


def _prefixed(prefix: str, metrics: dict[str, Array]) -> dict[str, Array]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _contrastive(model: SlamModel, key: Array, c: Array, quantized, frame_mask: Array, segment_ids: Array,
                 cfg: ObjectiveConfig) -> tuple[Array, dict[str, Array]]:
    negatives, scored = w2v_bert.sample_negatives(key, frame_mask, segment_ids, cfg.num_negatives)
    loss, metrics = w2v_bert.contrastive_loss(model.contrastive(c.astype(jnp.float32)),
                                              model.contrastive_targets(quantized.vectors),
                                              quantized.ids, negatives, scored,
                                              temperature=cfg.contrastive_temperature,
                                              exclude_same_code=cfg.exclude_same_code_negatives)
    diversity, _ = w2v_bert.diversity_loss(quantized.probs, segment_ids > 0)
    metrics["diversity_loss"] = diversity
    return loss + cfg.diversity_weight * diversity, metrics


def _speech_health(model: SlamModel, sub: dict[str, Array], z: Array, c: Array, h: Array | None, quantized,
                   valid: Array, unmasked: Array, train: bool) -> dict[str, Array]:
    """Health metrics of the speech sub-batch (`slam_jax.health`): quantizer statistics, effective ranks of z and of
    the speech-stack / top outputs at unmasked frames, code-vector similarity; in evaluation also every layer's
    effective rank and mean pairwise cosine on the unmasked utterances (`layer_rank/NN`, `layer_cosine/NN`:
    00 = z, then the speech layers, then the shared layers)."""
    out = health.quantizer_health(quantized.probs, quantized.ids if train else None, valid)
    out["code_vector_cosine"] = health.codebook_cosine(model.quantizer.codebook[...])
    out["feature_rank"] = health.effective_rank(z, valid)
    out["context_rank"] = health.effective_rank(c, unmasked)
    if h is not None:
        out["top_rank"] = health.effective_rank(h, unmasked)
    if not train:
        layers, seg = model.encoder.speech_representations(sub["features"], sub["segment_ids"])
        for i in range(layers.shape[0]):
            out[f"layer_rank/{i:02d}"] = health.effective_rank(layers[i], seg > 0)
            out[f"layer_cosine/{i:02d}"] = health.mean_pairwise_cosine(layers[i], seg > 0)
    return out


def speech_losses(model: SlamModel, sub: dict[str, Array], step: Array, key: Array, cfg: ObjectiveConfig,
                  train: bool) -> tuple[Array, dict[str, Array]]:
    """w2v-BERT (contrastive + diversity, masked prediction) on the unlabeled-speech sub-batch."""
    k_q, k_mask, k_fill, k_drop1, k_drop2, k_neg = jax.random.split(key, 6)
    enc = model.encoder
    z, seg = enc.speech_features(sub["features"], sub["segment_ids"])
    quantized = cfg.quantize(model, z, step, k_q if train else None)
    frame_mask = masking.span_mask(k_mask, seg, cfg.speech_masking)
    c = enc.speech_encoder(enc.mask_speech(z, frame_mask, k_fill), seg, k_drop1 if train else None)
    valid = seg > 0
    h = enc.shared(c, seg, key=k_drop2 if train else None) \
        if cfg.speech_mlm or cfg.contrastive_on == "top" else None
    total, metrics = 0.0, {
        "mask_fraction": frame_mask.sum() / jnp.maximum(valid.sum(), 1),
        "frames": valid.sum(),
        **_speech_health(model, sub, z, c, h, quantized, valid, valid & ~frame_mask, train),
    }
    if cfg.contrastive:
        loss, m = _contrastive(model, k_neg, c if cfg.contrastive_on == "speech_stack" else h, quantized,
                               frame_mask, seg, cfg)
        total += cfg.contrastive_weight * loss
        metrics.update({"contrastive_loss": m["loss"], "contrastive_accuracy": m["accuracy"],
                        "contrastive_chance": m["chance"], "diversity_loss": m["diversity_loss"]})
    if cfg.speech_mlm:
        loss, m = w2v_bert.speech_mlm_loss(model.speech_mlm_logits(h), cfg.mlm_targets(quantized), frame_mask)
        total += cfg.speech_mlm_weight * loss
        metrics.update({"mlm_loss": m["loss"], "mlm_accuracy": m["accuracy"]})
    if cfg.feature_penalty:
        penalty, _ = masked_mean(jnp.mean(jnp.square(z.astype(jnp.float32)), -1), valid)
        total += cfg.feature_penalty * penalty
        metrics["feature_penalty"] = penalty
    return total, metrics


def text_losses(model: SlamModel, sub: dict[str, Array], key: Array, cfg: ObjectiveConfig,
                train: bool) -> tuple[Array, dict[str, Array]]:
    """SpanBERT masked LM on the unlabeled-text sub-batch."""
    k_mask, k_replace, k_drop = jax.random.split(key, 3)
    tokens, seg = sub["tokens"], sub["segment_ids"]
    token_mask = masking.span_mask(k_mask, seg, cfg.text_masking)
    inputs, use_mask = masking.replace_tokens(k_replace, tokens, token_mask, model.cfg.vocab_size,
                                              cfg.text_random_fraction, cfg.text_keep_fraction)
    e = model.encoder.embed_text(inputs, seg, sub["positions"], use_mask)
    h = model.encoder.shared(e, seg, key=k_drop if train else None)
    loss, m = span_mlm.text_mlm_loss(model.text_mlm_logits(h), tokens, token_mask)
    metrics = {"mlm_loss": m["loss"], "mlm_accuracy": m["accuracy"], "tokens": (seg > 0).sum(),
               "mask_fraction": token_mask.sum() / jnp.maximum((seg > 0).sum(), 1)}
    return cfg.text_mlm_weight * loss, metrics


def paired_losses(model: SlamModel, sub: dict[str, Array], step: Array, key: Array, cfg: ObjectiveConfig,
                  train: bool) -> tuple[Array, dict[str, Array]]:
    """TLM, STM, CTC (and optionally contrastive) on the paired sub-batch (one pair per row)."""
    keys = iter(jax.random.split(key, 10))
    drop = (lambda: next(keys)) if train else (lambda: None)
    enc = model.encoder
    tokens, tseg = sub["tokens"], sub["token_segment_ids"]
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    z, seg = enc.speech_features(sub["features"], sub["segment_ids"])
    quantized = cfg.quantize(model, z, step, next(keys) if train else None)
    row_valid = jnp.any(seg > 0, axis=1)
    total, metrics = 0.0, {"pairs": row_valid.sum()}

    masked = cfg.tlm or cfg.paired_contrastive or (cfg.stm and cfg.stm_on_masked)
    if masked:
        frame_mask = masking.span_mask(next(keys), seg, cfg.tlm_speech_masking)
        token_mask = masking.span_mask(next(keys), tseg, cfg.tlm_text_masking)
        c_masked = enc.speech_encoder(enc.mask_speech(z, frame_mask, next(keys)), seg, drop())
        out_masked = enc.encode_paired(c_masked, seg, enc.embed_text(tokens, tseg, positions, token_mask), tseg,
                                       drop())
    if cfg.tlm:
        loss, m = tlm.tlm_loss(model.text_mlm_logits(out_masked.text), tokens, token_mask,
                               model.speech_mlm_logits(out_masked.speech), cfg.mlm_targets(quantized), frame_mask)
        total += cfg.tlm_weight * loss
        metrics.update({"tlm_text_loss": m["text_loss"], "tlm_text_accuracy": m["text_accuracy"],
                        "tlm_speech_loss": m["speech_loss"], "tlm_speech_accuracy": m["speech_accuracy"]})
    if cfg.paired_contrastive:
        loss, m = _contrastive(model, next(keys), c_masked, quantized, frame_mask, seg, cfg)
        total += cfg.contrastive_weight * loss
        metrics.update({"contrastive_loss": m["loss"], "contrastive_accuracy": m["accuracy"],
                        "contrastive_chance": m["chance"]})
    if cfg.ctc or (cfg.stm and not cfg.stm_on_masked):
        c_clean = enc.speech_encoder(z, seg, drop())
    if cfg.stm:
        neg_tokens, neg_tseg, neg_valid = stm.roll_negatives(tokens, tseg, row_valid)
        if cfg.stm_on_masked:
            c, text_mask = c_masked, token_mask
        else:
            c, text_mask = c_clean, None
        # Positives and rolled negatives go through the shared stack as one [2 * batch] call.
        both = enc.encode_paired(
            jnp.concatenate([c, c]), jnp.concatenate([seg, seg]),
            enc.embed_text(jnp.concatenate([tokens, neg_tokens]), jnp.concatenate([tseg, neg_tseg]),
                           jnp.concatenate([positions, positions]),
                           None if text_mask is None else jnp.concatenate([text_mask, jnp.roll(text_mask, 1, 0)])),
            jnp.concatenate([tseg, neg_tseg]), drop())
        logits = model.stm_logits(both.cls)
        labels = jnp.concatenate([jnp.ones_like(row_valid), jnp.zeros_like(row_valid)])
        loss, m = stm.stm_loss(logits, labels, jnp.concatenate([row_valid & neg_valid, neg_valid]))
        total += cfg.stm_weight * loss
        metrics.update({"stm_loss": m["loss"], "stm_accuracy": m["accuracy"]})
    if cfg.ctc:
        h = enc.shared(c_clean, seg, key=drop())
        loss, m = ctc.ctc_loss(model.ctc_logits(h), seg > 0, tokens, tseg > 0)
        total += cfg.ctc_weight * loss
        metrics["ctc_loss"] = m["loss"]
    return total, metrics


def compute_losses(model: SlamModel, batch: dict[str, dict[str, Array]], step: Array, key: Array,
                   cfg: ObjectiveConfig, train: bool = True) -> tuple[Array, dict[str, Array]]:
    """Sum of every active objective's weighted loss on its sub-batch.

    Args:
      model: the SlamModel. batch: sub-batches per `slam_jax.data.schema`. step: int scalar (Gumbel temperature).
      key: PRNG key of this step (masking, negatives, Gumbel noise, dropout). cfg: the objective set.
      train: False disables Gumbel noise and dropout (held-out evaluation; masking still applies).
    Returns:
      (total loss, metrics) with metrics named `kind/metric`, e.g. `speech/contrastive_loss`, `text/mlm_accuracy`.
    """
    k_speech, k_text, k_paired = jax.random.split(key, 3)
    total, metrics = jnp.zeros((), jnp.float32), {}
    if cfg.uses_speech and "speech" in batch:
        loss, m = speech_losses(model, batch["speech"], step, k_speech, cfg, train)
        total, metrics = total + loss, metrics | _prefixed("speech", m)
    if "text" in cfg.kinds and "text" in batch:
        loss, m = text_losses(model, batch["text"], k_text, cfg, train)
        total, metrics = total + loss, metrics | _prefixed("text", m)
    if cfg.uses_paired and "paired" in batch:
        loss, m = paired_losses(model, batch["paired"], step, k_paired, cfg, train)
        total, metrics = total + loss, metrics | _prefixed("paired", m)
    metrics["loss"] = total
    metrics["gumbel_temperature"] = model.cfg.quantizer.temperature(step)
    return total, metrics


def loss_names(cfg: ObjectiveConfig) -> tuple[str, ...]:
    """The metric names of every active objective's loss (what must fall during training)."""
    return tuple(name for o in cfg.objectives for name in o.losses)
