"""The one-stream batch contract between the data pipeline and the train step.

Every global batch the converter yields is a nested dict of NumPy arrays with static shapes, one sub-batch per
*kind* of data. A kind whose configured batch size is 0 is absent from the dict.

```
{
  "speech": {                                   # unlabeled speech (w2v-BERT), packed or bucketed rows
    "features":    float32 [B_s, T_s, 80]       # normalized 80-dim log-mel, 100 frames/s
    "segment_ids": int32   [B_s, T_s]           # 0 = padding, 1..n = utterance within the row
  },
  "text": {                                     # unlabeled text (SpanBERT MLM), packed seqio-style
    "tokens":      int32   [B_t, L_t]           # SentencePiece ids, PAD = 0, EOS = 1
    "segment_ids": int32   [B_t, L_t]           # 0 = padding, 1..n = sentence within the row
    "positions":   int32   [B_t, L_t]           # position within its segment, starting at 0
  },
  "paired": {                                   # paired ASR data (TLM / STM / CTC), one pair per row
    "features":    float32 [B_p, T_p, 80]
    "segment_ids": int32   [B_p, T_p]           # 1 = real frame, 0 = padding
    "tokens":      int32   [B_p, L_p]           # transcript ids, EOS-terminated
    "token_segment_ids": int32 [B_p, L_p]       # 1 = real token, 0 = padding
    # only with StreamConfig.paired_source_tokens > 0 (speech translation's source transcript):
    "source_tokens":            int32 [B_p, S_p]  # source-vocabulary ids, EOS-terminated
    "source_token_segment_ids": int32 [B_p, S_p]  # 1 = real token, 0 = padding
  },
}
```

Rules the producer guarantees:
- Padding sits at the end of each row; padded features are zero.
- In packed speech rows every segment starts at a frame index that is a multiple of ``SPEECH_ALIGN`` (the
  encoder's 4x time subsampling), so a packed utterance sees exactly the frames it would see alone.
- Segment ids are numbered 1, 2, ... from the start of each row.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """What the trainer asks of the stream (gin binds it at the trainer's edge).

    batch_size: global rows per batch, split across kinds by the top-level mixture rates.
    speech_frames / text_tokens: row length of packed speech (log-mel frames, 100/s) / text (tokens) rows.
    paired_frames / paired_tokens: row lengths of paired rows (one pair per row).
    paired_source_tokens: > 0 adds the pairs' source transcripts ("source_text", e.g. CoVoST's English sentence) to
      paired rows as `source_tokens` / `source_token_segment_ids` of this length; 0 leaves them out.
    on_error: "raise" (DataError naming file and problem) or "skip" (dropped and counted in stats()).
    pack_bins: open rows the packer fills first-fit (more bins, less padding).
    max_unk_fraction: a text or transcript whose share of UNK pieces (characters outside the SentencePiece
      vocabulary) exceeds this is a bad example (raise / skip as `on_error`); UNK pieces below it are counted per
      kind in stats() (`unk_fraction`). Our choice: 0.05, so a stray symbol passes and a wrong-script or
      wrong-vocabulary corpus does not.
    """

    mixture: str
    split: str = "train"
    batch_size: int = 16
    speech_frames: int = 1024
    text_tokens: int = 128
    paired_frames: int = 1024
    paired_tokens: int = 128
    paired_source_tokens: int = 0
    seed: int = 0
    shuffle: bool = True
    on_error: str = "raise"
    pack_bins: int = 4
    max_unk_fraction: float = 0.05


class StreamMismatchError(ValueError):
    """A data-iterator state restored into a stream of other content (mixture, shapes, seed, shard, ...)."""


class DataError(ValueError):
    """A bad input example (the message names the file and the problem), or a failed input pipeline."""


KINDS = ("speech", "text", "paired")
NUM_MEL_BINS = 80
SPEECH_ALIGN = 4

KEYS = {
    "speech": ("features", "segment_ids"),
    "text": ("tokens", "segment_ids", "positions"),
    "paired": ("features", "segment_ids", "tokens", "token_segment_ids"),
}
SOURCE_KEYS = ("source_tokens", "source_token_segment_ids")   # paired rows, with StreamConfig.paired_source_tokens


Spec = dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]


def batch_spec(config: StreamConfig, rows: Mapping[str, int]) -> Spec:
    """The shapes and dtypes of one batch: {kind: {key: (shape, dtype)}} for the kinds with `rows[kind]` > 0, row
    lengths from `config` (what the converter yields for that config; the train step, slam-aot and slam-bench build
    their batches from it). Paired rows carry `source_tokens` only with `config.paired_source_tokens` > 0."""
    lengths = {"speech": {"features": config.speech_frames, "segment_ids": config.speech_frames},
               "text": {key: config.text_tokens for key in KEYS["text"]},
               "paired": {"features": config.paired_frames, "segment_ids": config.paired_frames,
                          "tokens": config.paired_tokens, "token_segment_ids": config.paired_tokens,
                          "source_tokens": config.paired_source_tokens,
                          "source_token_segment_ids": config.paired_source_tokens}}
    spec: Spec = {}
    for kind, n in rows.items():
        if kind not in KEYS:
            raise ValueError(f"unknown batch kind {kind!r}; expected a subset of {KINDS}")
        if not n:
            continue
        keys = KEYS[kind] + (SOURCE_KEYS if kind == "paired" and config.paired_source_tokens > 0 else ())
        spec[kind] = {key: ((n, lengths[kind][key], NUM_MEL_BINS), np.dtype(np.float32)) if key == "features"
                      else ((n, lengths[kind][key]), np.dtype(np.int32)) for key in keys}
    return spec


def validate(batch: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Raises ValueError naming the kind/key when `batch` breaks the contract above."""
    for kind, sub in batch.items():
        if kind not in KEYS:
            raise ValueError(f"unknown batch kind {kind!r}; expected a subset of {KINDS}")
        missing = set(KEYS[kind]) - set(sub)
        if missing:
            raise ValueError(f"batch[{kind!r}] lacks {sorted(missing)}")
        rows = {k: v.shape[0] for k, v in sub.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"batch[{kind!r}] has inconsistent batch sizes {rows}")
        if "features" in sub:
            f, s = sub["features"], sub["segment_ids"]
            if f.ndim != 3 or f.shape[-1] != NUM_MEL_BINS or f.shape[:2] != s.shape:
                raise ValueError(
                    f"batch[{kind!r}]: features {f.shape} / segment_ids {s.shape} must be [B, T, 80] / [B, T]")
