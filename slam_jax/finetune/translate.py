"""Speech translation: the SLAM encoder + a Transformer decoder, trained with label-smoothed teacher forcing and
decoded by beam search; scored by corpus BLEU (sacrebleu, with its signature).

```
log-mel [B, T, 80] -(SpecAugment)-> ConvSubsampling -> N speech layers -> M shared layers (speech alone)
   -> memory [B, T/4, d] -> TransformerDecoder (cross-attention to memory) -> target subword logits
```
SLAM §4 (CoVoST 2 En->X): a 4-layer Transformer decoder (384 dim, 1536 FFN, 4 heads) with an 8192-token multilingual
subword vocabulary is attached to the pre-trained encoder. Our choices (not reported): the decoder details in
`slam_jax.layers.decoder`, label smoothing 0.1, beam 4 with GNMT length penalty alpha 0.6, the speech path of the
ASR task (speech alone through both stacks) and its SpecAugment (`FinetuneConfig.spec_*`).

Auxiliary source CTC (ours, off by default; `TranslationConfig.ctc_weight`): a linear CTC head over the encoder's
speech output predicts the *source* transcript, and the loss is `(1 - w) * translation + w * CTC`, as in multi-task
speech translation (Weiss et al. 2017; ESPnet's ST recipes use w = 0.3). It teaches the encoder the source words
while the decoder learns to translate, which matters when the paired data is small. Needs tasks that carry source
transcripts (the CoVoST factory) and `StreamConfig.paired_source_tokens`; rows whose transcript CTC cannot align are
left out of that loss only (`asr_ctc.CtcStream`). The head is not used for decoding.

Data: any paired task or mixture whose "text" feature holds the target-language ids (`tasks/covost.py`:
`mini_st_de`, `covost2_en_{de,ca,ar,tr}`); the decoder's vocabulary is that task's vocabulary. References for BLEU
are the decoded target ids (exact for SentencePiece with identity normalization and full character coverage; a
reference holding UNK pieces is counted in `references_with_unk`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import nnx

from slam_jax.data import converter, mixtures

from slam_jax.data import stream as stream_lib
from slam_jax.decoding.beam_search import beam_search
from slam_jax.evaluation import bleu
from slam_jax.evaluation.evaler import Evaler, sum_over_processes
from slam_jax.finetune.asr_ctc import BLANK_ID, CtcStream, ctc_labels
from slam_jax.data.schema import DataError
from slam_jax.finetune.base import (FinetuneTask, SpecAugment, decode_tag, dropped_examples, encode_speech,
                                    paired_vocabulary,
                                    write_predictions)
from slam_jax.layers import common
from slam_jax.layers.decoder import DecoderConfig, TransformerDecoder
from slam_jax.model import ModelConfig, SlamEncoder
from slam_jax.objectives import ctc, seq2seq

Array = jax.Array
START_ID = 0  # T5 convention: the decoder starts from PAD


@dataclasses.dataclass(frozen=True)
class TranslationConfig:
    """Decoder size and decoding options (gin: `TranslationConfig.*`; size presets in gin/finetune/decoders/).

    decoder_*: SLAM §4's ST decoder by default (4 layers, 384 dim, 1536 FFN, 4 heads); decoder_dropout (ours: 0.1).
    label_smoothing (ours: 0.1). beam_size (ours: 4; 1 = greedy), length_penalty: GNMT alpha (ours: 0.6).
    max_decode_length: most generated tokens, EOS included (0: `StreamConfig.paired_tokens`).
    ctc_weight: weight w of the auxiliary CTC on the source transcript (ours; 0 = off, see the module docstring).
    """

    DECODING_FIELDS = ("beam_size", "length_penalty", "max_decode_length")  # in result file names (decode_tag)

    decoder_layers: int = 4
    decoder_dim: int = 384
    decoder_heads: int = 4
    decoder_ffn_dim: int = 1536
    decoder_dropout: float = 0.1
    label_smoothing: float = 0.1
    beam_size: int = 4
    length_penalty: float = 0.6
    max_decode_length: int = 0
    ctc_weight: float = 0.0

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"TranslationConfig.beam_size must be >= 1, got {self.beam_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"TranslationConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.ctc_weight < 1.0:
            raise ValueError(f"TranslationConfig.ctc_weight must be in [0, 1), got {self.ctc_weight}")

    def decoder(self, vocab_size: int, dtype: str) -> DecoderConfig:
        return DecoderConfig(num_layers=self.decoder_layers, d_model=self.decoder_dim, num_heads=self.decoder_heads,
                             ffn_dim=self.decoder_ffn_dim, vocab_size=vocab_size, dropout=self.decoder_dropout,
                             dtype=dtype)


class TranslationModel(nnx.Module):
    """The SLAM encoder and a Transformer decoder over its top-layer speech output; with `source_vocab_size` > 0 also
    a linear CTC head over the source vocabulary (the auxiliary loss)."""

    def __init__(self, cfg: ModelConfig, decoder_cfg: DecoderConfig, *, source_vocab_size: int = 0,
                 rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = SlamEncoder(cfg, rngs=rngs)
        self.decoder = TransformerDecoder(decoder_cfg, cfg.d_model, rngs=rngs)
        self.source_ctc = common.dense(cfg.d_model, source_vocab_size, ("embed", "vocab"), dtype=jnp.float32,
                                       rngs=rngs) if source_vocab_size else None

    def encode(self, features: Array, segment_ids: Array, *, key: Array | None = None,
               augment: SpecAugment | None = None) -> tuple[Array, Array]:
        """-> (memory [B, T/4, d], memory_mask bool [B, T/4])."""
        h, seg = encode_speech(self.encoder, features, segment_ids, key, augment)
        return common.constrain(h, common.BATCH_ACTIVATION), seg > 0

    def __call__(self, features: Array, segment_ids: Array, decoder_inputs: Array, *, key: Array | None = None,
                 augment: SpecAugment | None = None) -> tuple[Array, Array | None, Array]:
        """Teacher forcing: decoder_inputs int [B, L] -> (float32 logits [B, L, target vocab], source CTC logits
        float32 [B, T/4, source vocab] or None without the head, memory_mask bool [B, T/4])."""
        k_enc, k_dec = common.split_key(key, 2)
        memory, mask = self.encode(features, segment_ids, key=k_enc, augment=augment)
        ctc_logits = self.source_ctc(memory.astype(jnp.float32)) if self.source_ctc is not None else None
        return self.decoder(decoder_inputs, memory, mask, key=k_dec), ctc_logits, mask

    def translate(self, features: Array, segment_ids: Array, *, beam_size: int, max_length: int, eos_id: int,
                  alpha: float) -> tuple[Array, Array]:
        """Beam search -> (best tokens int32 [B, max_length], zero after EOS; scores float32 [B])."""
        memory, mask = self.encode(features, segment_ids)
        cache = self.decoder.init_cache(memory, mask, max_length)
        tokens, scores = beam_search(self.decoder.decode_step, cache, batch_size=features.shape[0],
                                     beam_size=beam_size, max_length=max_length, eos_id=eos_id, start_id=START_ID,
                                     alpha=alpha)
        return tokens[:, 0], scores[:, 0]


class TranslateTask(FinetuneTask):
    """Speech translation on any registered paired task or mixture (`StreamConfig.mixture`), scored by BLEU."""

    name = "translate"
    decode_config_class = TranslationConfig

    def __init__(self, model_cfg, finetune_cfg, stream_cfg, decode_cfg: TranslationConfig | None = None, *,
                 vocabulary: seqio.Vocabulary | None = None, source_vocabulary: seqio.Vocabulary | None = None):
        """`vocabulary` / `source_vocabulary`: the target and (with `ctc_weight` > 0) source-transcript vocabularies;
        default the paired mixture's (`stream_cfg.mixture`). An exported model (`slam_jax.export`) passes its own and
        no stream config (inference only; `max_decode_length` then must be set)."""
        super().__init__(model_cfg, finetune_cfg, stream_cfg, decode_cfg)
        self.vocabulary: seqio.Vocabulary = vocabulary or paired_vocabulary(
            stream_cfg.mixture, "speech translation (target text as the 'text' feature)")
        self.decoder_cfg = self.decode_cfg.decoder(self.vocabulary.vocab_size, model_cfg.dtype)
        if stream_cfg is None and not self.decode_cfg.max_decode_length:
            raise ValueError("TranslateTask without a stream config needs TranslationConfig.max_decode_length > 0")
        self.max_length = self.decode_cfg.max_decode_length or stream_cfg.paired_tokens
        self.augment = SpecAugment.from_config(finetune_cfg)
        self.source_vocabulary: seqio.Vocabulary | None = source_vocabulary
        self.loss_names = ("st/xent_loss",)
        if self.decode_cfg.ctc_weight > 0:
            if stream_cfg is not None and stream_cfg.paired_source_tokens <= 0:
                raise ValueError(f"TranslationConfig.ctc_weight = {self.decode_cfg.ctc_weight} needs the source "
                                 "transcripts in the batch: set StreamConfig.paired_source_tokens (their row length)")
            if self.source_vocabulary is None:
                self.source_vocabulary = mixtures.vocabulary_for(stream_cfg.mixture, "source_text")
            self.loss_names += ("st/ctc_loss",)

    def build_model(self, rngs: nnx.Rngs) -> TranslationModel:
        return TranslationModel(self.model_cfg, self.decoder_cfg, rngs=rngs, source_vocab_size=(
            self.source_vocabulary.vocab_size if self.source_vocabulary is not None else 0))

    def losses(self, model: TranslationModel, batch: dict, step: Array, key: Array, train: bool):
        sub = batch["paired"]
        targets, weights = sub["tokens"], sub["token_segment_ids"] > 0
        logits, ctc_logits, frame_valid = model(
            sub["features"], sub["segment_ids"], seq2seq.shift_right(targets, START_ID),
            key=key if train else None, augment=self.augment if train else None)
        xent, m = seq2seq.smoothed_cross_entropy(logits, targets, weights, self.decode_cfg.label_smoothing)
        metrics = {"st/xent_loss": xent, "st/nll": m["nll"], "st/token_accuracy": m["accuracy"],
                   "st/tokens": m["tokens"]}
        loss = xent
        if ctc_logits is not None:
            w = self.decode_cfg.ctc_weight
            labels, valid = ctc_labels(sub["source_tokens"], sub["source_token_segment_ids"],
                                       self.source_vocabulary.eos_id)
            ctc_loss, c = ctc.ctc_loss(ctc_logits, frame_valid, labels, valid, blank_id=BLANK_ID)
            loss = (1.0 - w) * xent + w * ctc_loss
            metrics.update({"st/ctc_loss": ctc_loss, "st/ctc_utterances": c["count"]})
        return loss, {"loss": loss, **metrics}

    def train_stream(self, shard_index: int, num_shards: int) -> stream_lib.OneStream | CtcStream:
        stream = converter.make_stream(self.stream_cfg, shard_index=shard_index, num_shards=num_shards)
        if self.source_vocabulary is None:
            return stream
        return CtcStream(stream, self.source_vocabulary.eos_id, getattr(self.source_vocabulary, "unk_id", None),
                         labels="source_tokens", whole_row=False, missing=(
                             "no source transcript: TranslationConfig.ctc_weight > 0 needs paired tasks that carry "
                             "one (the CoVoST task factory, slam_jax.data.covost)"))

    # ------------------------------------------------------------------------------------------ evaluation
    def detokenize(self, tokens: np.ndarray, valid: np.ndarray | None = None) -> str:
        """One row of ids -> text: up to the first EOS, without PAD (and within `valid` when given)."""
        ids = tokens[valid] if valid is not None else tokens
        ids = ids.tolist()
        eos = self.vocabulary.eos_id
        if eos in ids:
            ids = ids[:ids.index(eos)]
        return self.vocabulary.decode([i for i in ids if i != 0])

    def decoder(self) -> tuple[Callable[[nnx.Module, dict], dict[str, Array]], Callable[[dict], list[str]]]:
        """(predict: the model's batch -> device outputs, jitted by the caller; translate: those outputs -> one text
        per row), per `TranslationConfig`: beam search (greedy at beam_size 1) with the GNMT length penalty."""
        cfg = self.decode_cfg
        max_length = cfg.max_decode_length or self.max_length

        def predict(model: TranslationModel, batch: dict) -> dict[str, Array]:
            sub = batch["paired"]
            tokens, scores = model.translate(sub["features"], sub["segment_ids"], beam_size=cfg.beam_size,
                                             max_length=max_length, eos_id=self.vocabulary.eos_id,
                                             alpha=cfg.length_penalty)
            return {"tokens": tokens, "scores": scores}

        def translate(outputs: dict[str, np.ndarray]) -> list[str]:
            return [self.detokenize(row) for row in outputs["tokens"]]

        return predict, translate

    def evaluate(self, trainer, params: Any, split: str, step: int, out_dir: str | None, *, strict: bool = False
                 ) -> dict[str, float]:
        """Corpus BLEU of `split` (every pair; pairs the stream skips are counted in its statistics).

        Prints sacrebleu's score line and signature; writes `out_dir/eval/<split>_step<N>.tsv` (id, reference,
        hypothesis) and `.json` (scores, signature, decoding options) when `out_dir` is given. Statistics are summed
        over hosts before the score is computed.
        """
        cfg = self.decode_cfg
        predict, to_text = self.decoder()
        stream_cfg = dataclasses.replace(self.stream_cfg, split=split, shuffle=False)
        stream = converter.eval_stream(stream_cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
        stats = np.zeros(bleu.NUM_STATISTICS, np.int64)
        rows, unk = [], 0
        unk_id = getattr(self.vocabulary, "unk_id", None)
        for batch in Evaler(trainer, params, predict, kind="paired").batches(stream):
            sub = batch.local["paired"]
            texts = to_text(batch.outputs)
            hyps = [texts[i] for i in batch.rows]
            refs = [self.detokenize(sub["tokens"][i], sub["token_segment_ids"][i] > 0) for i in batch.rows]
            unk += sum(int(unk_id is not None and np.any(sub["tokens"][i] == unk_id)) for i in batch.rows)
            stats += bleu.bleu_statistics(hyps, refs)
            rows += [(batch.ids[i], r, h) for i, r, h in zip(batch.rows, refs, hyps)]
        stats = sum_over_processes(stats)
        counts = sum_over_processes(np.asarray([len(rows), unk], np.int64))
        dropped = dropped_examples(stream, split, strict=strict)
        if not counts[0]:
            raise DataError(f"no utterance of split {split!r} of {stream_cfg.mixture!r} was translated "
                            f"({dropped['too_long']:.0f} too long, {dropped['skipped']:.0f} bad)")
        result = bleu.bleu_from_statistics(stats)
        print(f"{split} step {step}: {result['bleu_details']} (sacreBLEU {result['bleu_signature']})", flush=True)
        scores = {"bleu": result["bleu"], "sentences": float(counts[0]), "references_with_unk": float(counts[1]),
                  **dropped}
        if out_dir:
            write_predictions(out_dir, stream_cfg.mixture, split, step, ("id", "reference", "hypothesis"), rows,
                              {**scores, "bleu_signature": result["bleu_signature"],
                               "bleu_details": result["bleu_details"], "decoding": dataclasses.asdict(cfg)},
                              tag=decode_tag(cfg))
        return scores

