"""CTC decoding: greedy (best path) and prefix beam search with optional n-gram LM shallow fusion (KenLM).

Labels are SentencePiece pieces; id `blank_id` (0, the PAD id) is the CTC blank. A piece starting with "▁"
(U+2581) begins a new word, which is where the word-level LM scores a completed word.

Shallow fusion (Hannun et al. 2014, "First-pass large vocabulary continuous speech recognition using bi-directional
recurrent DNNs"): a hypothesis W scores `log P_ctc(W | x) + alpha * log P_lm(W) + beta * |W|` (|W| = words). The LM is
read with the `kenlm` package from an ARPA or KenLM binary file the user provides (nothing is downloaded); build one
with KenLM's `lmplz` on the training transcripts or the LibriSpeech LM corpus.

Why not pyctcdecode: its releases pin numpy < 2, which cannot install beside jax 0.10 (numpy >= 2).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

WORD_START = "\u2581"
LN10 = math.log(10.0)


def greedy_decode(ids: np.ndarray, length: int, blank_id: int = 0) -> list[int]:
    """Best-path decoding of one utterance: argmax ids [frames] -> labels (repeats collapsed, then blanks removed)."""
    out, previous = [], None
    for i in ids[:length].tolist():
        if i != previous and i != blank_id:
            out.append(i)
        previous = i
    return out


@dataclasses.dataclass(frozen=True)
class CtcDecodeConfig:
    """How slam-eval / slam-finetune decode CTC outputs.

    beam_size: 1 = greedy best path; > 1 = prefix beam search over the `prune_top_k` most likely labels per frame.
    lm_path: ARPA or KenLM binary n-gram LM for shallow fusion (beam search only); words must be written as the
      transcripts are (the mini corpus and LibriSpeech: upper case).
    lm_alpha / lm_beta: LM weight and word insertion bonus (to be tuned on a dev set; 0.5 / 1.0 are our defaults).
    """

    beam_size: int = 1
    prune_top_k: int = 16
    lm_path: str | None = None
    lm_alpha: float = 0.5
    lm_beta: float = 1.0

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"CtcDecodeConfig.beam_size must be >= 1, got {self.beam_size}")
        if self.lm_path and self.beam_size == 1:
            raise ValueError("CtcDecodeConfig.lm_path needs beam search: set CtcDecodeConfig.beam_size > 1")


class WordLM:
    """Natural-log word probabilities from a KenLM model, cached per word sequence."""

    def __init__(self, path: str):
        import os
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: n-gram LM file (CtcDecodeConfig.lm_path) does not exist")
        import kenlm
        try:
            self.model = kenlm.Model(path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a readable ARPA / KenLM binary LM: {e}") from None
        self._cache: dict[tuple[tuple[str, ...], bool], float] = {}

    def score(self, words: tuple[str, ...], final: bool) -> float:
        """ln P(words) from the sentence start (and, when `final`, of the sentence end after them)."""
        key = (words, final)
        if key not in self._cache:
            self._cache[key] = self.model.score(" ".join(words), bos=True, eos=final) * LN10
        return self._cache[key]


def _words(pieces: Sequence[str], labels: tuple[int, ...]) -> list[str]:
    return "".join(pieces[i] for i in labels).replace(WORD_START, " ").split()


def prefix_beam_search(log_probs: np.ndarray, length: int, pieces: Sequence[str], *, beam_size: int,
                       prune_top_k: int = 16, blank_id: int = 0, lm: WordLM | None = None, alpha: float = 0.5,
                       beta: float = 1.0) -> list[int]:
    """CTC prefix beam search of one utterance.

    Args:
      log_probs: float [frames, vocab] log-softmax outputs; length: valid frames.
      pieces: the piece string of every label id (id `blank_id` is ignored).
      lm / alpha / beta: optional word-level shallow fusion, applied each time a word is completed (a piece
        starting with "▁" follows a non-empty prefix) and at the end (last word + sentence end).
    Returns:
      the best label sequence. Without an LM and with `beam_size` and `prune_top_k` at least the number of
      prefixes, this is the exact most probable label sequence (sum over its alignments).
    """
    neg_inf = -math.inf
    # prefix -> [log P(prefix, ending in blank), log P(prefix, ending in a label)]
    beams: dict[tuple[int, ...], list[float]] = {(): [0.0, neg_inf]}
    fusion: dict[tuple[int, ...], float] = {(): 0.0}  # LM + insertion bonus of the prefix's completed words

    def lm_bonus(prefix: tuple[int, ...], final: bool) -> float:
        """alpha * ln P_lm + beta * words over the completed words (the last word is complete only at the end)."""
        if lm is None:
            return 0.0
        words = _words(pieces, prefix)
        done = tuple(words if final else words[:-1])
        return alpha * lm.score(done, final) + beta * len(done)

    k = min(prune_top_k, log_probs.shape[1])
    for t in range(length):
        frame = log_probs[t]
        candidates = np.argpartition(-frame, k - 1)[:k] if k < frame.shape[0] else np.arange(frame.shape[0])
        if blank_id not in candidates:
            candidates = np.append(candidates, blank_id)
        nxt: dict[tuple[int, ...], list[float]] = {}

        def add(prefix, blank_score, label_score):
            entry = nxt.setdefault(prefix, [neg_inf, neg_inf])
            entry[0] = np.logaddexp(entry[0], blank_score)
            entry[1] = np.logaddexp(entry[1], label_score)

        for prefix, (p_b, p_nb) in beams.items():
            total = np.logaddexp(p_b, p_nb)
            for c in candidates.tolist():
                p = float(frame[c])
                if c == blank_id:
                    add(prefix, total + p, neg_inf)
                    continue
                extended = prefix + (c,)
                if prefix and prefix[-1] == c:
                    add(extended, neg_inf, p_b + p)      # a repeat needs a blank in between
                    add(prefix, neg_inf, p_nb + p)       # else it collapses into the same prefix
                else:
                    add(extended, neg_inf, total + p)
        for prefix in nxt:
            if prefix not in fusion:
                fusion[prefix] = lm_bonus(prefix, final=False)
        ranked = sorted(nxt.items(), key=lambda kv: np.logaddexp(*kv[1]) + fusion[kv[0]], reverse=True)
        beams = dict(ranked[:beam_size])
    best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]) + lm_bonus(kv[0], final=True))
    return list(best[0])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float [..., vocab] -> log-probabilities (NumPy, float64 for the beam search's sums)."""
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
