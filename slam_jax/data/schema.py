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

from typing import Mapping

import numpy as np

KINDS = ("speech", "text", "paired")
NUM_MEL_BINS = 80
SPEECH_ALIGN = 4

KEYS = {
    "speech": ("features", "segment_ids"),
    "text": ("tokens", "segment_ids", "positions"),
    "paired": ("features", "segment_ids", "tokens", "token_segment_ids"),
}


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
