"""CTC decoding: greedy (best path) and prefix beam search with optional n-gram LM shallow fusion (KenLM).

Labels are SentencePiece pieces; id `blank_id` (0, the PAD id) is the CTC blank. A piece starting with "▁"
(U+2581) begins a new word, which is where the word-level LM scores a completed word.

Shallow fusion (Hannun et al. 2014, "First-pass large vocabulary continuous speech recognition using bi-directional
recurrent DNNs"): a hypothesis W scores `log P_ctc(W | x) + alpha * log P_lm(W) + beta * |W|` (|W| = words). The LM is
an ARPA or KenLM binary file the user provides (nothing is downloaded); build one with KenLM's `lmplz` on the training
transcripts or the LibriSpeech LM corpus.

Two decoders of beam search with an LM (`CtcDecodeConfig.lm_decoder`):
- 'flashlight' (default): flashlight-text's lexicon decoder (C++), the words of the LM (an ARPA file) spelled in the
  model's pieces, EOS as the silence token, which also carries a held piece's probability (`hold_as_silence`:
  otherwise a word whose last piece is held over several frames is decoded twice). On the toy corpus it was 60-75x
  faster than ours and 11 WER points better at the same LM weight (docs/PERFORMANCE.md). It emits only LM words.
- 'prefix_beam': `prefix_beam_search` below, pure Python, lexicon-free (any piece sequence, KenLM binary LMs too);
  the reference flashlight is tested against, and the beam search without an LM. Its weakness: a word is LM-scored
  only once the next one starts, so a hypothesis that glues pieces into one long never-finished word escapes the LM.

Why not pyctcdecode: its releases pin numpy < 2, which cannot install beside jax 0.10 (numpy >= 2).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

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
    lm_decoder: 'flashlight' (lexicon decoder over the LM's words, C++; an ARPA file) or 'prefix_beam' (ours,
      lexicon-free, any KenLM file); see the module docstring.
    """

    beam_size: int = 1
    prune_top_k: int = 16
    lm_path: str | None = None
    lm_alpha: float = 0.5
    lm_beta: float = 1.0
    lm_decoder: str = "flashlight"

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError(f"CtcDecodeConfig.beam_size must be >= 1, got {self.beam_size}")
        if self.lm_path and self.beam_size == 1:
            raise ValueError("CtcDecodeConfig.lm_path needs beam search: set CtcDecodeConfig.beam_size > 1")
        if self.lm_decoder not in ("flashlight", "prefix_beam"):
            raise ValueError(f"CtcDecodeConfig.lm_decoder must be 'flashlight' or 'prefix_beam', got "
                             f"{self.lm_decoder!r}")

    def decoder(self, pieces: Sequence[str], *, blank_id: int = 0, silence_id: int = 1,
                encode: Callable[[str], list[int]] | None = None) -> Callable[[np.ndarray, int], list[int]]:
        """(log_probs [frames, vocab], valid frames) -> labels, per these settings: greedy, prefix beam search, or
        beam search with the LM by `lm_decoder`. `silence_id`: a label the model never emits (EOS), flashlight's
        word-boundary token for sub-word units (fairseq's choice); `encode`: a word -> its piece ids."""
        if self.beam_size == 1:
            return lambda log_probs, length: greedy_decode(np.argmax(log_probs, -1), length, blank_id)
        if self.lm_path and self.lm_decoder == "flashlight":
            return LexiconDecoder(self.lm_path, pieces, beam_size=self.beam_size, prune_top_k=self.prune_top_k,
                                  alpha=self.lm_alpha, beta=self.lm_beta, blank_id=blank_id, silence_id=silence_id,
                                  encode=encode)
        lm = WordLM(self.lm_path) if self.lm_path else None
        return lambda log_probs, length: prefix_beam_search(
            log_probs, length, pieces, beam_size=self.beam_size, prune_top_k=self.prune_top_k, blank_id=blank_id,
            lm=lm, alpha=self.lm_alpha, beta=self.lm_beta)


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


def arpa_words(path: str) -> list[str]:
    """The words of an ARPA LM (its unigrams without <s>, </s>, <unk>); ValueError for another format."""
    words, in_unigrams = [], False
    with open(path, "rb") as f:
        if not f.read(64).lstrip().startswith(b"\\data\\"):
            raise ValueError(f"{path}: not an ARPA text file; CtcDecodeConfig.lm_decoder='flashlight' reads the LM's "
                             "words from an ARPA file (a KenLM binary or gzipped LM works with 'prefix_beam')")
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif line.startswith("\\") and in_unigrams:
                break
            elif in_unigrams and line:
                word = line.split()[1]
                if word not in ("<s>", "</s>", "<unk>"):
                    words.append(word)
    return words


def spell(word: str, pieces: Sequence[str] | dict[str, int]) -> list[int] | None:
    """`word` at a word start ("▁" + word) as piece ids by longest-match, or None when the pieces cannot spell it
    (for a decoder without the SentencePiece model; `LexiconDecoder` takes the model's own segmentation). `pieces`:
    the piece of every id, or a prebuilt {piece: id}."""
    index = pieces if isinstance(pieces, dict) else {p: i for i, p in enumerate(pieces) if p}
    text, out, start = WORD_START + word, [], 0
    while start < len(text):
        end = next((e for e in range(len(text), start, -1) if text[start:e] in index), None)
        if end is None:
            return None
        out.append(index[text[start:end]])
        start = end
    return out


class LexiconDecoder:
    """CTC beam search with word-LM shallow fusion by flashlight-text's `LexiconDecoder` (C++, KenLM): hypotheses are
    sequences of the LM's words (an ARPA file: its unigrams), each spelled in the model's pieces by `encode` (the
    SentencePiece model's segmentation of the word alone; default `spell`); the same `alpha` (LM weight) / `beta`
    (word bonus) as `prefix_beam_search`, log-add over a word's alignments. Words outside the LM, or that need the
    UNK piece, are not emitted. Called as `decoder(log_probs [frames, vocab], length) -> labels`."""

    def __init__(self, lm_path: str, pieces: Sequence[str], *, beam_size: int, prune_top_k: int, alpha: float,
                 beta: float, blank_id: int = 0, silence_id: int = 1, unk_id: int = 2, beam_threshold: float = 25.0,
                 encode: Callable[[str], list[int]] | None = None):
        import os
        if not os.path.isfile(lm_path):
            raise FileNotFoundError(f"{lm_path}: n-gram LM file (CtcDecodeConfig.lm_path) does not exist")
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions, SmearingMode, Trie
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.decoder import LexiconDecoder as Flashlight
        from flashlight.lib.text.dictionary import create_word_dict
        if encode is None:
            index = {p: i for i, p in enumerate(pieces) if p}
            encode = lambda w: spell(w, index)  # noqa: E731
        spellings = {w: encode(w) for w in arpa_words(lm_path)}
        spellings = {w: ids for w, ids in spellings.items() if ids and unk_id not in ids}
        lexicon = {w: [[pieces[i] for i in ids]] for w, ids in spellings.items()}
        if not lexicon:
            raise ValueError(f"{lm_path}: none of the LM's words can be spelled in the model's pieces (is it an "
                             "ARPA file in the transcripts' case?)")
        self.words = create_word_dict({**lexicon, "<unk>": []})   # <unk>: the dictionary's default, not in the trie
        self.lm = KenLM(lm_path, self.words)
        trie = Trie(len(pieces), silence_id)
        start = self.lm.start(False)
        for word in lexicon:
            word_id = self.words.get_index(word)
            trie.insert(spellings[word], word_id, self.lm.score(start, word_id)[1])
        trie.smear(SmearingMode.MAX)
        # flashlight's KenLM scores are log10 (as the ARPA file), emissions and `beta` natural log: alpha * ln 10 is
        # the weight `prefix_beam_search` gives the same LM (`WordLM` converts to natural log).
        options = LexiconDecoderOptions(beam_size=beam_size, beam_size_token=prune_top_k,
                                        beam_threshold=beam_threshold, lm_weight=alpha * LN10, word_score=beta,
                                        unk_score=-math.inf, sil_score=0.0, log_add=True,
                                        criterion_type=CriterionType.CTC)
        self.decoder = Flashlight(options, trie, self.lm, silence_id, blank_id, self.words.get_index("<unk>"), [],
                                  False)
        self.blank_id, self.silence_id = blank_id, silence_id

    def __call__(self, log_probs: np.ndarray, length: int) -> list[int]:
        emissions = hold_as_silence(log_probs[:length], self.blank_id, self.silence_id)
        best = self.decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])[0]
        return [i for i in greedy_decode(np.asarray(best.tokens), len(best.tokens), self.blank_id)
                if i != self.silence_id]


def hold_as_silence(log_probs: np.ndarray, blank_id: int, silence_id: int) -> np.ndarray:
    """CTC emissions [frames, vocab] for flashlight's lexicon decoder, whose hypotheses stay at the trie's root (after
    a word) only through the silence token: in CTC over SentencePiece pieces there is none (a word starts with "▁"),
    so a word whose last piece is held over several frames was decoded twice ("AND AND" for a held "▁AND": the held
    frames restart the word). Here, at each frame t where the same piece is the most probable at t - 1 and t (a held
    piece), the silence column (EOS, which a CTC model over pieces does not emit) also carries that piece's
    probability, so holding the piece that just ended a word costs what CTC charges for a repeat. Our construction
    (wav2letter lexicons end each word with a "|" token that serves as silence; SentencePiece has none); on the toy
    corpus' dev set it removed 6 of 7 doubled words and 0.3 WER points (docs/PERFORMANCE.md).
    Returns a float32 C-contiguous copy."""
    out = np.array(log_probs, np.float32, order="C")
    best = out.argmax(-1)                                                              # [frames]
    held = np.nonzero((best[1:] == best[:-1]) & (best[1:] != blank_id) & (best[1:] != silence_id))[0] + 1
    out[held, silence_id] = np.logaddexp(out[held, silence_id], out[held, best[held]])
    return out


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
