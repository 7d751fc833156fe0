"""ASR fine-tuning with a CTC head on top of the unified encoder, scored by WER / CER.

```
log-mel [B, T, 80] -(SpecAugment freq masks)-> ConvSubsampling -> z [B, T/4, d] -(time masks)-> N speech layers
  -> M shared layers (speech alone) -> Linear(d, vocab) -> CTC (blank = id 0, the PAD id)
```
Targets (our choice): the paired task's own SentencePiece ids, without the EOS the task appends. A subword vocabulary
keeps label sequences short enough for the encoder's 25 frames/s (characters would need ~15 labels/s, near the CTC
limit on fast speech); the paper's fine-tuning used a 1024-piece WordPiece vocabulary with an RNN-T decoder (SLAM
§4.1), for which CTC is the simpler standard head. For LibriSpeech register the paired task with a ~1k-piece
SentencePiece model (`vocabulary=` of the task factory, or $SLAM_SPM_MODEL): 32k pieces are too sparse for CTC.

Rows CTC cannot learn from are skipped and counted, never turned into an infinite loss (`ctc_feasible`): a
transcript with characters outside the vocabulary (SentencePiece maps them to UNK) and audio with fewer encoder frames
than its labels need (labels + one blank between each repeated pair). Empty transcripts are data errors
(`StreamConfig.on_error`: raise naming the file, or skip and count).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import nnx

from slam_jax.data import converter

from slam_jax.data import stream as stream_lib
from slam_jax.decoding import ctc as ctc_decoding
from slam_jax.evaluation.asr import ErrorCounts, error_counts
from slam_jax.evaluation.evaler import Evaler, sum_over_processes
from slam_jax.data.schema import DataError
from slam_jax.finetune.base import (FinetuneTask, SpecAugment, decode_tag, dropped_examples, encode_speech,
                                    paired_vocabulary, write_predictions)
from slam_jax.layers import common
from slam_jax.layers.subsampling import subsampled_length
from slam_jax.model import ModelConfig, SlamEncoder
from slam_jax.objectives import ctc

Array = jax.Array
BLANK_ID = 0
MAX_SKIP_MESSAGES = 20


class AsrModel(nnx.Module):
    """The SLAM encoder and a linear CTC head over the vocabulary (speech runs alone through both stacks)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = SlamEncoder(cfg, rngs=rngs)
        self.ctc = common.dense(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), dtype=jnp.float32, rngs=rngs)

    def __call__(self, features: Array, segment_ids: Array, *, key: Array | None = None,
                 augment: SpecAugment | None = None) -> tuple[Array, Array]:
        """Log-mel [B, T, 80] + ids [B, T] -> (CTC logits float32 [B, T/4, vocab], frame ids [B, T/4])."""
        h, seg = encode_speech(self.encoder, features, segment_ids, key, augment)
        return self.ctc(common.constrain(h.astype(jnp.float32), common.BATCH_ACTIVATION)), seg


def ctc_labels(tokens: np.ndarray, token_segment_ids: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired transcripts -> CTC labels: the tokens without padding and without the trailing EOS.

    Returns (labels int32 [B, L], label_valid bool [B, L]); valid labels come first in each row.
    """
    valid = (token_segment_ids > 0) & (tokens != eos_id)
    return tokens, valid


def row_reasons(frames: np.ndarray, labels: np.ndarray, label_valid: np.ndarray, unk_id: int | None,
                rule: Callable[[int, np.ndarray], str]) -> list[str]:
    """Why each row cannot be learned from ("" when it can): a transcript with UNK pieces (characters outside the
    vocabulary), else `rule(log-mel frames, labels)`. frames: int [B] (0 = padding row); labels / label_valid:
    [B, L] (`ctc_labels`). Padding rows and rows without labels get ""."""
    reasons = []
    for n, lab, ok in zip(frames.tolist(), labels, label_valid):
        lab = lab[ok]
        if n == 0 or lab.size == 0:
            reasons.append("")
        elif unk_id is not None and np.any(lab == unk_id):
            reasons.append(f"transcript has characters outside the vocabulary ({int(np.sum(lab == unk_id))} "
                           "UNK pieces)")
        else:
            reasons.append(rule(n, lab))
    return reasons


def _ctc_rule(n: int, lab: np.ndarray) -> str:
    """A row needs at least `labels + repeats` encoder frames (a blank must separate two equal consecutive labels)."""
    needed = lab.size + int(np.sum(lab[1:] == lab[:-1]))
    have = subsampled_length(n)
    return "" if have >= needed else (f"audio too short for CTC: {n / 100:.2f} s gives {have} encoder frames but the "
                                      f"transcript needs {needed} ({lab.size} labels + {needed - lab.size} repeats)")


def ctc_feasible(frames: np.ndarray, labels: np.ndarray, label_valid: np.ndarray, unk_id: int | None
                 ) -> list[str]:
    """Why CTC cannot train on each row ("" when it can): `row_reasons` with CTC's frame rule."""
    return row_reasons(frames, labels, label_valid, unk_id, _ctc_rule)


class CtcStream:
    """The paired training stream with rows CTC cannot learn from blanked out and counted.

    labels: the paired key holding the CTC labels, next to its `<singular>_segment_ids` ("tokens": the ASR
      transcript; "source_tokens": a translation pair's source transcript, for the auxiliary CTC).
    whole_row: an infeasible row becomes padding entirely (ASR), else only its labels are blanked (the auxiliary CTC:
      the row still trains the translation loss).
    missing: when given, a real row without labels raises `schema.DataError` "<example id>: <missing>".
    feasible: (frames [B], labels [B, L], label_valid [B, L]) -> a reason per row ("" = trainable); default
      `ctc_feasible` with the vocabulary's UNK id.
    Forwards `get_state` / `set_state` (the skip counts travel with the state) and `kind_batch_sizes`.
    """

    def __init__(self, stream: stream_lib.OneStream, eos_id: int, unk_id: int | None, *, labels: str = "tokens",
                 whole_row: bool = True, missing: str | None = None,
                 feasible: Callable[[np.ndarray, np.ndarray, np.ndarray], list[str]] | None = None):
        self.stream, self.eos_id = stream, eos_id
        self.feasible = feasible or (lambda frames, labels, valid: ctc_feasible(frames, labels, valid, unk_id))
        self.labels, self.label_ids = labels, labels[:-1] + "_segment_ids"
        self.whole_row, self.missing = whole_row, missing
        self.kind_batch_sizes = stream.kind_batch_sizes
        self.skipped: dict[str, int] = {}
        self.messages: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.stream)
        sub = dict(batch["paired"])
        labels, valid = ctc_labels(sub[self.labels], sub[self.label_ids], self.eos_id)
        frames = (sub["segment_ids"] > 0).sum(1)
        ids = self.stream.ids.get("paired", [""] * len(frames))
        unlabelled = np.nonzero((frames > 0) & ~valid.any(1))[0]
        if self.missing and unlabelled.size:
            raise DataError(f"{ids[unlabelled[0]]}: {self.missing}")
        reasons = self.feasible(frames, labels, valid)
        bad = [i for i, r in enumerate(reasons) if r]
        if bad:
            for key in sub if self.whole_row else (self.labels, self.label_ids):
                sub[key] = sub[key].copy()
                sub[key][bad] = 0
            for i in bad:
                kind = reasons[i].split(":")[0].split(" (")[0]
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                message = f"{ids[i]}: {reasons[i]}; {'row' if self.whole_row else self.labels} skipped"
                if len(self.messages) < MAX_SKIP_MESSAGES:
                    self.messages.append(message)
                    print(f"skipping: {message}", flush=True)
        return {**batch, "paired": sub}

    def stats(self) -> dict[str, Any]:
        return {**self.stream.stats(), "ctc_skipped": dict(self.skipped), "ctc_messages": list(self.messages)}

    def get_state(self) -> bytes:
        extra = json.dumps({"skipped": self.skipped, "messages": self.messages}).encode()
        return len(extra).to_bytes(8, "little") + extra + self.stream.get_state()

    def set_state(self, state: bytes) -> None:
        n = int.from_bytes(state[:8], "little")
        extra = json.loads(state[8:8 + n].decode())
        self.skipped, self.messages = extra["skipped"], extra["messages"]
        self.stream.set_state(state[8 + n:])


class AsrCtcTask(FinetuneTask):
    """CTC ASR on any registered paired task or mixture (`StreamConfig.mixture`), scored by WER / CER."""

    name = "asr_ctc"
    loss_names = ("asr/ctc_loss",)
    decode_config_class = ctc_decoding.CtcDecodeConfig
    output_binding = "ModelConfig.vocab_size"    # the binding that sizes the output layer (`output_size`)

    def __init__(self, model_cfg, finetune_cfg, stream_cfg, decode_cfg: ctc_decoding.CtcDecodeConfig | None = None,
                 *, vocabulary: seqio.SentencePieceVocabulary | None = None):
        """`vocabulary`: the targets' SentencePiece vocabulary; default the paired mixture's (`stream_cfg.mixture`).
        An exported model (`slam_jax.export`) passes its own and no stream config (inference only)."""
        super().__init__(model_cfg, finetune_cfg, stream_cfg, decode_cfg)
        self.vocabulary: seqio.SentencePieceVocabulary = vocabulary or paired_vocabulary(stream_cfg.mixture,
                                                                                        "ASR fine-tuning")
        if self.vocabulary.vocab_size > self.output_size(model_cfg):
            source = f"of {stream_cfg.mixture!r}" if stream_cfg is not None else "given"
            raise ValueError(f"the vocabulary {source} has {self.vocabulary.vocab_size} ids but the "
                             f"output layer has {self.output_size(model_cfg)} ({self.output_binding})")
        self.augment = SpecAugment.from_config(finetune_cfg)

    def output_size(self, model_cfg: ModelConfig) -> int:
        """Labels of the output layer (blank = id 0 included)."""
        return model_cfg.vocab_size

    def build_model(self, rngs: nnx.Rngs) -> AsrModel:
        return AsrModel(self.model_cfg, rngs=rngs)

    def losses(self, model: AsrModel, batch: dict, step: Array, key: Array, train: bool):
        sub = batch["paired"]
        logits, seg = model(sub["features"], sub["segment_ids"], key=key if train else None,
                            augment=self.augment if train else None)
        labels, valid = ctc_labels(sub["tokens"], sub["token_segment_ids"], self.vocabulary.eos_id)
        loss, m = ctc.ctc_loss(logits, seg > 0, labels, valid, blank_id=BLANK_ID)
        return loss, {"loss": loss, "asr/ctc_loss": loss, "asr/utterances": m["count"]}

    def train_stream(self, shard_index: int, num_shards: int) -> CtcStream:
        stream = converter.make_stream(self.stream_cfg, shard_index=shard_index, num_shards=num_shards)
        return CtcStream(stream, self.vocabulary.eos_id, self.vocabulary.unk_id)

    # ------------------------------------------------------------------------------------------ evaluation
    def _pieces(self) -> list[str]:
        tokenizer = self.vocabulary.tokenizer
        return [tokenizer.id_to_piece(i) for i in range(tokenizer.get_piece_size())]

    def text(self, labels: list[int]) -> str:
        return self.vocabulary.decode([i for i in labels if i >= 3])  # no PAD / EOS / UNK ids

    def decoder(self) -> tuple[Callable[[nnx.Module, dict], dict[str, Array]], Callable[[dict], list[str]]]:
        """(predict: the model's batch -> device outputs, jitted by the trainer; transcribe: this host's rows of
        those outputs -> texts), per `CtcDecodeConfig`: greedy best path, or beam search (with the LM by its
        `lm_decoder`)."""
        cfg = self.decode_cfg
        beam = cfg.beam_size > 1
        decode = cfg.decoder(self._pieces(), blank_id=BLANK_ID, silence_id=self.vocabulary.eos_id,
                             encode=self.vocabulary.tokenizer.encode_as_ids) if beam else None

        def predict(model: AsrModel, batch: dict) -> dict[str, Array]:
            logits, seg = model(batch["paired"]["features"], batch["paired"]["segment_ids"])
            out = {"best": jnp.argmax(logits, -1).astype(jnp.int32), "lengths": (seg > 0).sum(1)}
            if beam:
                out["log_probs"] = jax.nn.log_softmax(logits, -1)
            return out

        def transcribe(outputs: dict[str, np.ndarray]) -> list[str]:
            texts = []
            for row in range(outputs["lengths"].shape[0]):
                n = int(outputs["lengths"][row])
                if not beam:
                    labels = ctc_decoding.greedy_decode(outputs["best"][row], n, BLANK_ID)
                else:
                    labels = decode(outputs["log_probs"][row], n)
                texts.append(self.text(labels))
            return texts

        return predict, transcribe

    def evaluate(self, trainer, params, split: str, step: int, out_dir: str | None, *, strict: bool = False
                 ) -> dict[str, float]:
        """WER / CER of `split`, decoded per `CtcDecodeConfig`; utterances the rows cannot hold are counted
        (`too_long`, `skipped`) and warned about, an error with `strict`; a score over no utterance is an error.

        Writes `out_dir/eval/<mixture>_<split>_step<N><decoding>.tsv` (id, reference, hypothesis) and `.json`
        (scores) when `out_dir` is given (`base.write_predictions`); errors are summed over hosts.
        """
        predict, transcribe = self.decoder()
        cfg = dataclasses.replace(self.stream_cfg, split=split, shuffle=False)
        stream = converter.eval_stream(cfg, shard_index=jax.process_index(), num_shards=jax.process_count())
        counts, rows = ErrorCounts(), []
        for batch in Evaler(trainer, params, predict, kind="paired").batches(stream):
            sub = batch.local["paired"]
            hyps = transcribe(batch.outputs)
            labels, valid = ctc_labels(sub["tokens"], sub["token_segment_ids"], self.vocabulary.eos_id)
            refs = {i: self.vocabulary.decode(labels[i][valid[i]].tolist()) for i in batch.rows}
            counts = counts + error_counts([refs[i] for i in batch.rows], [hyps[i] for i in batch.rows])
            rows += [(batch.ids[i], refs[i], hyps[i]) for i in batch.rows]
        counts = ErrorCounts(*map(int, sum_over_processes(np.asarray(dataclasses.astuple(counts), np.int64))))
        dropped = dropped_examples(stream, split, strict=strict)
        if not counts.utterances:
            raise DataError(f"no utterance of split {split!r} of {cfg.mixture!r} was scored "
                            f"({dropped['too_long']:.0f} too long, {dropped['skipped']:.0f} bad)")
        scores = {"wer": counts.wer, "cer": counts.cer, "utterances": float(counts.utterances),
                  "words": float(counts.words), **dropped}
        if out_dir:
            write_predictions(out_dir, cfg.mixture, split, step, ("id", "reference", "hypothesis"), rows,
                              {**scores, "decoding": dataclasses.asdict(self.decode_cfg)},
                              tag=decode_tag(self.decode_cfg))
        return scores

