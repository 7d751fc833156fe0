"""Word and character error rates with jiwer, as error counts that add up across hosts and batches.

WER = (substitutions + deletions + insertions) / reference words, over the whole split (corpus level, the
LibriSpeech convention), never an average of per-utterance rates. CER is the same over characters (spaces count as
characters, jiwer's convention). References and hypotheses are compared as given: the mini corpus and LibriSpeech
transcripts are already normalized (upper case, no punctuation).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jiwer


@dataclasses.dataclass
class ErrorCounts:
    """Edit operations summed over utterances; `+` merges counts of two batches or hosts."""

    word_errors: int = 0
    words: int = 0
    char_errors: int = 0
    chars: int = 0
    utterances: int = 0

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def wer(self) -> float:
        return self.word_errors / self.words if self.words else float("nan")

    @property
    def cer(self) -> float:
        return self.char_errors / self.chars if self.chars else float("nan")


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorCounts:
    """Counts word and character edit operations between each reference and hypothesis (jiwer).

    An empty reference is not scorable (no words to normalize by) and raises ValueError naming its position.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        return ErrorCounts()
    for i, r in enumerate(references):
        if not r.strip():
            raise ValueError(f"reference {i} is empty; WER is undefined for it")
    words = jiwer.process_words(list(references), list(hypotheses))
    chars = jiwer.process_characters(list(references), list(hypotheses))
    return ErrorCounts(
        word_errors=words.substitutions + words.deletions + words.insertions,
        words=words.substitutions + words.deletions + words.hits,
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        chars=chars.substitutions + chars.deletions + chars.hits,
        utterances=len(references))
