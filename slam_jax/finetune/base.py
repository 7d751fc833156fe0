"""What every fine-tuning task shares: its gin config, the task interface and the fine-tuning optimizer.

A task (`FinetuneTask`) owns a model with an `encoder` attribute (a `slam_jax.model.SlamEncoder`), its loss, its
training stream and its evaluation. Because the encoder sits under the same attribute name as in `SlamModel`, a
pre-training checkpoint's `encoder/...` parameters warm-start it by name (t5x-style): matching parameters are restored,
the task's head starts fresh, and a missing or reshaped encoder parameter is an error that names it.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import re
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from slam_jax import masking, optim
from slam_jax.model import ModelConfig, SlamEncoder

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (loop settings stay in `TrainConfig`, data in `StreamConfig`, Adam in `OptimizerConfig`).

    task: the registered task name (`slam_jax.finetune.TASKS`), e.g. 'asr_ctc'.
    init_from: a pre-training run directory (or its `checkpoints/` folder) whose latest checkpoint initializes every
      encoder parameter; None trains from random initialization (the baseline).
    fresh_prefixes: parameter-name prefixes (`checkpointing` names, e.g. 'encoder/shared_stack') that keep their
      random initialization instead of `init_from`'s values: re-initializing the top of a pre-trained encoder
      (Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning", re-initialize BERT's top layers; our option,
      measured on the toy corpus in docs/EXPERIMENTS.md). Default: every encoder parameter restored.
    freeze_encoder_steps: a head-only phase: no encoder parameter (front-ends and both stacks) is updated for this
      many steps, so the fresh head learns to read the pre-trained features before their gradients can overwrite
      them (wav2vec 2.0's `freeze_finetune_updates`; default 0).
    freeze_speech_steps: the conv subsampling and the speech-only layers get no update for this many steps
      (our choice; wav2vec 2.0 freezes its feature encoder likewise), then train with the rest.
    encoder_lr_scale: learning-rate multiplier of every encoder parameter (1.0 = full fine-tuning, 0.0 = the task
      head only, i.e. a linear probe of the frozen encoder).
    layer_lr_decay: layer-wise learning-rate decay (ELECTRA/BEiT style): the top Conformer layer gets
      `layer_lr_decay`, each layer below one more factor, and the front-ends (conv subsampling, text embedding, CLS)
      the factor of a layer below the lowest; 1.0 disables it. Multiplies `encoder_lr_scale`.
    SpecAugment during fine-tuning (Park et al. 2019; the paper fine-tunes with SpecAugment, sizes are our choice):
      spec_time_mask_fraction / spec_time_mask_span: a fraction of the subsampled frames (40 ms each) is masked in
        spans, replaced as in pre-training (`SlamEncoder.mask_speech`); 0 disables it.
      spec_freq_masks / spec_freq_mask_width: bands of log-mel bins zeroed per utterance (SpecAugment's F = 27).
    """

    task: str = "asr_ctc"
    init_from: str | None = None
    fresh_prefixes: tuple[str, ...] = ()
    freeze_encoder_steps: int = 0
    freeze_speech_steps: int = 0
    encoder_lr_scale: float = 1.0
    layer_lr_decay: float = 1.0
    spec_time_mask_fraction: float = 0.1
    spec_time_mask_span: int = 5
    spec_freq_masks: int = 2
    spec_freq_mask_width: int = 27

    def __post_init__(self):
        object.__setattr__(self, "fresh_prefixes", tuple(self.fresh_prefixes))   # gin may bind a list
        if any(not p.startswith("encoder/") for p in self.fresh_prefixes):
            raise ValueError(f"FinetuneConfig.fresh_prefixes: every prefix names encoder parameters ('encoder/...'), "
                             f"got {self.fresh_prefixes}")
        if self.encoder_lr_scale < 0 or not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"FinetuneConfig: encoder_lr_scale must be >= 0 and layer_lr_decay in (0, 1], got "
                             f"{self.encoder_lr_scale} / {self.layer_lr_decay}")

    def param_groups(self) -> optim.ParamGroups:
        """The per-parameter learning-rate multipliers these settings ask for (`optim.ParamGroups`)."""
        return optim.ParamGroups(encoder_lr_scale=self.encoder_lr_scale, layer_lr_decay=self.layer_lr_decay,
                                 freeze_speech_steps=self.freeze_speech_steps,
                                 freeze_encoder_steps=self.freeze_encoder_steps)


@dataclasses.dataclass(frozen=True)
class SpecAugment:
    """Fine-tuning augmentation of the speech input (see `FinetuneConfig`): spans of encoder frames replaced as in
    pre-training, bands of log-mel bins zeroed."""

    time_mask_fraction: float
    time_mask_span: int
    freq_masks: int
    freq_mask_width: int

    @classmethod
    def from_config(cls, cfg: FinetuneConfig) -> "SpecAugment":
        return cls(cfg.spec_time_mask_fraction, cfg.spec_time_mask_span, cfg.spec_freq_masks,
                   cfg.spec_freq_mask_width)


def encode_speech(encoder: SlamEncoder, features: Array, segment_ids: Array, key: Array | None = None,
                  augment: SpecAugment | None = None) -> tuple[Array, Array]:
    """The speech path of every speech task: log-mel [B, T, 80] + ids [B, T] -> (top-layer output [B, T/4, d],
    frame ids [B, T/4]); speech runs alone through the speech and shared stacks, with SpecAugment when `augment` is
    given (and `key` drives it and dropout)."""
    keys = jax.random.split(key, 5) if key is not None else [None] * 5
    if augment is not None:
        features = masking.frequency_mask(keys[0], features, augment.freq_masks, augment.freq_mask_width)
    z, seg = encoder.speech_features(features, segment_ids)
    if augment is not None and augment.time_mask_fraction > 0:
        frames = masking.span_mask(keys[1], seg, masking.SpanMasking.for_fraction(
            augment.time_mask_fraction, augment.time_mask_span))
        z = encoder.mask_speech(z, frames, keys[2])
    return encoder.shared(encoder.speech_encoder(z, seg, keys[3]), seg, key=keys[4]), seg


def decode_tag(decode_cfg: Any) -> str:
    """The decoding settings that differ from their defaults, for result file names (`_beam_size8_lm-words`), so
    evaluations with other settings never overwrite each other; "" for the defaults. A config class that also
    holds model settings names its decoding fields in a `DECODING_FIELDS` class attribute (only those count)."""
    if decode_cfg is None or not dataclasses.is_dataclass(decode_cfg):
        return ""
    default = dataclasses.asdict(type(decode_cfg)())
    fields = getattr(type(decode_cfg), "DECODING_FIELDS", None)
    parts = []
    for key, value in dataclasses.asdict(decode_cfg).items():
        if value == default.get(key) or (fields is not None and key not in fields):
            continue
        if isinstance(value, str) and ("/" in value or "." in value):
            value = os.path.splitext(os.path.basename(value))[0]
        parts.append(f"{key}{'-' if isinstance(value, str) else ''}{value}")
    return "".join("_" + re.sub(r"[^A-Za-z0-9._+-]", "", p) for p in parts)


def write_predictions(out_dir: str, mixture: str, split: str, step: int, columns: Sequence[str],
                      rows: Sequence[Sequence[Any]], summary: dict, tag: str = "") -> str:
    """Writes `out_dir/eval/<mixture>_<split>_step<step><tag>.tsv` (one line per example, `columns` as header; with
    several processes each writes its own rows to `.process<i>.tsv`) and, on process 0, `.json` with `summary`.
    `tag`: the decoding settings (`decode_tag`). Returns the path without extension."""
    import tensorflow as tf
    folder = os.path.join(out_dir, "eval")
    tf.io.gfile.makedirs(folder)
    stem = os.path.join(folder, f"{mixture}_{split}_step{step}{tag}")
    suffix = f".process{jax.process_index()}" if jax.process_count() > 1 else ""
    with tf.io.gfile.GFile(stem + suffix + ".tsv", "w") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(x).replace("\t", " ") for x in row) + "\n")
    if jax.process_index() == 0:
        with tf.io.gfile.GFile(stem + ".json", "w") as f:
            json.dump({"mixture": mixture, "split": split, "step": step, **summary}, f, indent=1)
    return stem


def dropped_examples(stream, split: str, *, strict: bool) -> dict[str, float]:
    """Utterances of a finished finite paired stream (`converter.eval_stream`) that were not scored: too long for
    the rows (`StreamConfig.paired_frames` / `paired_tokens`) or bad (`on_error='skip'`), summed over processes.

    None -> {"too_long": 0.0, "skipped": 0.0}. Otherwise a warning line, or with `strict` (slam-eval: a score
    must cover the split) a DataError naming the counts, the longest utterance and the binding to raise.
    """
    from slam_jax.data.schema import DataError
    stats = stream.stats().get("paired", {})
    live = stream.live.get("paired")
    counts = np.asarray([sum(stats.get("too_long", {}).values()), sum(stats.get("skipped", {}).values()),
                         *(live.longest.max(0) if live is not None else (0, 0))], np.int64)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        every = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size)
        counts = np.concatenate([every[:, :2].sum(0), every[:, 2:].max(0)])
    too_long, skipped, frames, tokens = (int(x) for x in counts)
    if too_long or skipped:
        cfg = stream.config
        message = (f"{too_long + skipped} utterance(s) of split {split!r} of {cfg.mixture!r} were not scored: "
                   f"{too_long} longer than the rows (StreamConfig.paired_frames={cfg.paired_frames}, "
                   f"paired_tokens={cfg.paired_tokens}; the longest has {frames} frames / {tokens} tokens), "
                   f"{skipped} bad (on_error='skip')")
        if strict:
            hint = (f"; score them all with --gin.StreamConfig.paired_frames={-(-frames // 64) * 64} "
                    f"--gin.StreamConfig.paired_tokens={max(tokens, cfg.paired_tokens)}" if too_long else "")
            raise DataError(message + hint)
        print(f"warning: {message}", flush=True)
    return {"too_long": float(too_long), "skipped": float(skipped)}


def paired_vocabulary(mixture: str, what: str):
    """The text vocabulary of a paired task or mixture (`StreamConfig.mixture`) for the speech task `what`;
    raises ValueError naming the mixture when it holds other kinds."""
    from slam_jax.data import mixtures
    kinds = mixtures.kind_children(mixture)
    if set(kinds) != {"paired"}:
        raise ValueError(f"{what} needs a paired task or mixture; StreamConfig.mixture = {mixture!r} has kinds "
                         f"{sorted(kinds)}")
    return mixtures.vocabulary_for(mixture)


class FinetuneTask(abc.ABC):
    """One downstream task: its model, loss, training data and evaluation (driven by slam-finetune / slam-eval).

    Subclasses set `name` and `loss_names` and implement the abstract methods. The batch format is the task's own
    (the ASR task uses the paired sub-batch of `slam_jax.data.schema`).
    """

    name: str = ""
    loss_names: tuple[str, ...] = ()
    # The frozen dataclass of the task's decoding / prediction options, or None; slam_jax.config binds it in gin
    # under its class name (e.g. `CtcDecodeConfig.beam_size`), and slam-finetune / slam-eval pass it in.
    decode_config_class: type | None = None

    def __init__(self, model_cfg: ModelConfig, finetune_cfg: FinetuneConfig, stream_cfg, decode_cfg: Any = None):
        self.model_cfg, self.cfg, self.stream_cfg = model_cfg, finetune_cfg, stream_cfg
        self.decode_cfg = decode_cfg if decode_cfg is not None or self.decode_config_class is None \
            else self.decode_config_class()

    @abc.abstractmethod
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The model: an `encoder` attribute (`SlamEncoder`) and the task's head(s)."""

    @abc.abstractmethod
    def losses(self, model: nnx.Module, batch: dict, step: Array, key: Array, train: bool
               ) -> tuple[Array, dict[str, Array]]:
        """(total loss, metrics) of one global batch; metrics hold "loss" (the total) and `kind/metric` entries.
        `train` enables augmentation and dropout."""

    @abc.abstractmethod
    def train_stream(self, shard_index: int, num_shards: int) -> Iterator[dict]:
        """This host's infinite training batches, with `get_state`, `set_state` and `kind_batch_sizes`."""

    @abc.abstractmethod
    def evaluate(self, trainer, params: Any, split: str, step: int, out_dir: str | None, *, strict: bool = False
                 ) -> dict[str, float]:
        """Scores `params` on `split`; writes predictions under `out_dir/eval/` when given; returns {metric: value}.
        `strict` (slam-eval): an example the stream cannot score (too long, bad) is an error, not a warning."""


