"""Corpus BLEU with sacrebleu, reported with its signature (Post 2018: a BLEU number is only comparable with the
signature that says how it was computed).

sacrebleu's defaults throughout: 13a tokenization, exponential smoothing, mixed case, one reference per segment
(CoVoST 2 has one). Hypotheses and references are detokenized text (SentencePiece decoding gives detokenized text).

Corpus BLEU is a function of n-gram match counts summed over segments, so batches and hosts add up their
statistics (`bleu_statistics`: sacrebleu's own sufficient statistics) and the score is computed once from the sum
(`bleu_from_statistics`), the same number `sacrebleu.corpus_bleu` gives on the whole corpus.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import sacrebleu

NUM_STATISTICS = 2 + 2 * sacrebleu.metrics.BLEU().max_ngram_order  # hyp_len, ref_len, matches[n], totals[n]


def _metric() -> sacrebleu.metrics.BLEU:
    metric = sacrebleu.metrics.BLEU()
    metric.num_refs = 1  # what sacrebleu records when it scores one reference stream (enters the signature)
    return metric


def signature() -> str:
    """sacrebleu's signature of the BLEU computed here, e.g. 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|...'."""
    return str(_metric().get_signature())


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """int64 [NUM_STATISTICS]: the summed sufficient statistics of these segments (zeros for none)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not references:
        return np.zeros(NUM_STATISTICS, np.int64)
    stats = _metric()._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, np.int64).sum(0)


def bleu_from_statistics(stats: np.ndarray) -> dict[str, float | str]:
    """{"bleu": corpus BLEU 0-100, "bleu_signature", "bleu_details": sacrebleu's score line} of summed statistics.

    Raises ValueError when no reference word was scored (BLEU of an empty corpus is undefined).
    """
    stats = np.asarray(stats, np.int64)
    if stats.shape != (NUM_STATISTICS,):
        raise ValueError(f"BLEU statistics must have shape ({NUM_STATISTICS},), got {stats.shape}")
    if stats[1] == 0:
        raise ValueError("no reference words were scored: BLEU is undefined for an empty corpus")
    metric = _metric()
    score = metric._compute_score_from_stats(stats.tolist())
    return {"bleu": float(score.score), "bleu_signature": str(metric.get_signature()), "bleu_details": str(score)}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """`bleu_from_statistics(bleu_statistics(hypotheses, references))`."""
    return bleu_from_statistics(bleu_statistics(hypotheses, references))
