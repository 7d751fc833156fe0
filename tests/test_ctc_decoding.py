"""CTC pieces of ASR fine-tuning against independent references: the loss, decoding, error rates, feasibility."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from slam_jax.decoding import ctc as ctc_decoding
from slam_jax.evaluation.asr import error_counts
from slam_jax.finetune.asr_ctc import ctc_feasible, ctc_labels
from slam_jax.objectives import ctc


def numpy_ctc_nll(log_probs: np.ndarray, labels: list[int], blank: int = 0) -> float:
    """-log P(labels | x) by the CTC forward algorithm (Graves et al. 2006), in float64 log space."""
    ext = [blank]
    for lab in labels:
        ext += [lab, blank]
    s, t_max = len(ext), log_probs.shape[0]
    alpha = np.full((t_max, s), -np.inf)
    alpha[0, 0] = log_probs[0, blank]
    if s > 1:
        alpha[0, 1] = log_probs[0, ext[1]]
    for t in range(1, t_max):
        for i in range(s):
            terms = [alpha[t - 1, i]]
            if i >= 1:
                terms.append(alpha[t - 1, i - 1])
            if i >= 2 and ext[i] != blank and ext[i] != ext[i - 2]:
                terms.append(alpha[t - 1, i - 2])
            alpha[t, i] = np.logaddexp.reduce(terms) + log_probs[t, ext[i]]
    return -np.logaddexp(alpha[-1, -1], alpha[-1, -2] if s > 1 else -np.inf)


def test_ctc_loss_matches_numpy_forward_algorithm():
    rng = np.random.default_rng(0)
    batch, frames, vocab, length = 3, 12, 6, 5
    logits = rng.normal(size=(batch, frames, vocab)).astype(np.float32)
    frame_len = np.array([12, 9, 7])
    labels = np.array([[1, 2, 2, 3, 4], [5, 1, 0, 0, 0], [3, 3, 3, 0, 0]], np.int32)  # repeats need blanks
    label_len = np.array([5, 2, 3])
    frame_valid = np.arange(frames) < frame_len[:, None]
    label_valid = np.arange(length) < label_len[:, None]
    loss, _ = ctc.ctc_loss(jnp.asarray(logits), jnp.asarray(frame_valid), jnp.asarray(labels),
                           jnp.asarray(label_valid))
    log_probs = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    expected = np.mean([numpy_ctc_nll(log_probs[b, :frame_len[b]], labels[b, :label_len[b]].tolist()) / label_len[b]
                        for b in range(batch)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_greedy_decode_collapses_repeats_then_removes_blanks():
    ids = np.array([0, 3, 3, 0, 3, 5, 5, 5, 0, 0, 7, 7, 2])
    assert ctc_decoding.greedy_decode(ids, length=12) == [3, 3, 5, 7]   # the blank separates the two 3s
    assert ctc_decoding.greedy_decode(ids, length=13) == [3, 3, 5, 7, 2]
    assert ctc_decoding.greedy_decode(np.zeros(5, int), length=5) == []


def _exact_best(log_probs: np.ndarray) -> tuple[int, ...]:
    """The label sequence with the highest total probability, by enumerating every alignment."""
    totals: dict[tuple[int, ...], float] = {}
    t, v = log_probs.shape
    for path in itertools.product(range(v), repeat=t):
        labels = tuple(ctc_decoding.greedy_decode(np.array(path), t))
        totals[labels] = np.logaddexp(totals.get(labels, -np.inf), sum(log_probs[i, c] for i, c in enumerate(path)))
    return max(totals, key=totals.get)


@pytest.mark.parametrize("seed", range(4))
def test_prefix_beam_search_finds_the_most_probable_labels(seed):
    rng = np.random.default_rng(seed)
    # Peaky-but-ambiguous frames, where the best path and the best label sequence often differ.
    log_probs = ctc_decoding.log_softmax(rng.normal(scale=2.0, size=(5, 3)))
    pieces = ["", "\u2581A", "B"]
    best = ctc_decoding.prefix_beam_search(log_probs, 5, pieces, beam_size=64, prune_top_k=3)
    assert tuple(best) == _exact_best(log_probs)


def test_beam_search_with_beam_one_is_greedy_on_peaky_outputs():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, size=20)
    log_probs = np.log(np.full((20, 4), 0.01))
    log_probs[np.arange(20), ids] = np.log(0.97)
    assert ctc_decoding.prefix_beam_search(log_probs, 20, ["", "a", "b", "c"], beam_size=1) == \
        ctc_decoding.greedy_decode(ids, 20)


def test_kenlm_shallow_fusion_prefers_the_word_the_lm_knows(tmp_path):
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\n".join([  # KenLM reads bigram models and up
        "\\data\\", "ngram 1=5", "ngram 2=2", "", "\\1-grams:", "-1.0\t<unk>\t0", "-99\t<s>\t-0.5",
        "-0.5\t</s>\t0", "-0.3\tCAT\t-0.2", "-4.0\tHAT\t-0.2", "", "\\2-grams:", "-0.2\t<s> CAT",
        "-0.3\tCAT </s>", "", "\\end\\", ""]))
    pieces = ["", "\u2581CAT", "\u2581HAT"]
    # The acoustics slightly prefer HAT; the LM strongly prefers CAT.
    log_probs = np.log(np.array([[0.1, 0.42, 0.48], [0.9, 0.05, 0.05]]))
    plain = ctc_decoding.prefix_beam_search(log_probs, 2, pieces, beam_size=4)
    lm = ctc_decoding.WordLM(str(arpa))
    fused = ctc_decoding.prefix_beam_search(log_probs, 2, pieces, beam_size=4, lm=lm, alpha=0.5, beta=0.0)
    assert plain == [2] and fused == [1]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctc_decoding.WordLM(str(tmp_path / "missing.arpa"))


def test_flashlight_lexicon_decoder_matches_the_prefix_beam_reference_and_emits_only_lm_words(tmp_path):
    """flashlight-text's decoder (`lm_decoder='flashlight'`) against `prefix_beam_search` on constructed emissions:
    the same labels where the lexicon allows them, the LM's choice where the acoustics are ambiguous, and a word
    outside the LM never emitted."""
    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\n".join([
        "\\data\\", "ngram 1=6", "ngram 2=3", "", "\\1-grams:", "-1.0\t<unk>\t0", "-99\t<s>\t-0.5",
        "-0.5\t</s>\t0", "-0.3\tCAT\t-0.2", "-4.0\tHAT\t-0.2", "-0.6\tSAT\t-0.2", "", "\\2-grams:",
        "-0.2\t<s> CAT", "-0.1\tCAT SAT", "-0.3\tSAT </s>", "", "\\end\\", ""]))
    # ids: 0 blank, 1 EOS (silence), 2 UNK, then pieces; SAT is spelled with two pieces, MAT is not in the LM.
    pieces = ["<pad>", "</s>", "<unk>", "\u2581CAT", "\u2581HAT", "\u2581S", "AT", "\u2581MAT"]
    cfg = dict(beam_size=16, prune_top_k=8, lm_path=str(arpa), lm_alpha=0.5, lm_beta=0.0)
    flashlight = ctc_decoding.CtcDecodeConfig(**cfg).decoder(pieces)   # the default lm_decoder
    reference = ctc_decoding.CtcDecodeConfig(**cfg, lm_decoder="prefix_beam").decoder(pieces)
    assert isinstance(flashlight, ctc_decoding.LexiconDecoder)

    def frames(*rows):
        p = np.full((len(rows), len(pieces)), 1e-4)
        for t, row in enumerate(rows):
            for label, prob in row.items():
                p[t, label] = prob
        return np.log(p / p.sum(1, keepdims=True))

    clear = frames({3: 0.9}, {0: 0.9}, {5: 0.9}, {6: 0.9}, {0: 0.9})        # CAT SAT, unambiguous
    ambiguous = frames({3: 0.45, 4: 0.5}, {0: 0.9}, {5: 0.9}, {6: 0.9})     # CAT or HAT: the LM decides
    for log_probs in (clear, ambiguous):
        assert flashlight(log_probs, len(log_probs)) == reference(log_probs, len(log_probs)) == [3, 5, 6]
    # The LM weight means the same in both (flashlight's log10 LM scores are scaled to natural log): acoustics that
    # favour HAT 45:1 lose to the LM's CAT in both.
    strong = frames({4: 0.9, 3: 0.02}, {0: 0.9})
    assert flashlight(strong, 2) == reference(strong, 2) == [3]
    # A word's last piece held over frames is one word, not two (`hold_as_silence`); a word said twice stays two.
    held_word = frames({3: 0.9}, {3: 0.9}, {3: 0.9}, {0: 0.9}, {5: 0.9}, {6: 0.9})
    held_piece = frames({3: 0.9}, {0: 0.9}, {5: 0.9}, {6: 0.9}, {6: 0.9}, {6: 0.9})
    twice = frames({3: 0.9}, {3: 0.9}, {0: 0.9}, {3: 0.9}, {3: 0.9})
    for log_probs, labels in ((held_word, [3, 5, 6]), (held_piece, [3, 5, 6]), (twice, [3, 3])):
        assert flashlight(log_probs, len(log_probs)) == reference(log_probs, len(log_probs)) == labels
    oov = frames({7: 0.8, 3: 0.15}, {0: 0.9})   # the acoustics say MAT, which the LM lacks
    assert reference(oov, 2) == [7] and flashlight(oov, 2) == [3]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ctc_decoding.CtcDecodeConfig(**{**cfg, "lm_path": str(tmp_path / "missing.arpa"),
                                        "lm_decoder": "flashlight"}).decoder(pieces)
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\0" + bytes(64))
    with pytest.raises(ValueError, match="not an ARPA text file"):
        ctc_decoding.CtcDecodeConfig(**{**cfg, "lm_path": str(binary), "lm_decoder": "flashlight"}).decoder(pieces)


def test_decode_config_rejects_lm_without_beam_search():
    with pytest.raises(ValueError, match="beam_size > 1"):
        ctc_decoding.CtcDecodeConfig(beam_size=1, lm_path="lm.arpa")


def test_error_rates_on_hand_made_pairs():
    refs = ["THE CAT SAT ON THE MAT", "A DOG", "HELLO"]
    hyps = ["THE CAT SAT ON MAT", "A BIG DOG", ""]
    c = error_counts(refs, hyps)
    # 1 deletion (THE) + 1 insertion (BIG) + 1 deletion (HELLO) over 6 + 2 + 1 reference words.
    assert (c.word_errors, c.words, c.utterances) == (3, 9, 3)
    assert c.wer == pytest.approx(3 / 9)
    # characters: "THE " deleted (4) + "BIG " inserted (4) + "HELLO" deleted (5) over 22 + 5 + 5 characters.
    assert (c.char_errors, c.chars) == (13, 32)
    assert (error_counts(refs[:1], refs[:1]) + error_counts(refs[1:2], hyps[1:2])).wer == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="reference 0 is empty"):
        error_counts([" "], ["A"])


def test_ctc_feasibility_names_unknown_characters_and_too_short_audio():
    eos, unk = 1, 2
    tokens = np.array([[5, 6, 1, 0], [5, 2, 7, 1], [9, 9, 9, 1], [0, 0, 0, 0]])
    tseg = (np.arange(4) < np.array([3, 4, 4, 0])[:, None]).astype(np.int32)
    labels, valid = ctc_labels(tokens, tseg, eos)
    assert valid.sum(1).tolist() == [2, 3, 3, 0]                    # EOS is not a CTC label
    # Row 2: labels 9 9 9 need 3 + 2 repeats = 5 encoder frames; 16 log-mel frames give 4.
    reasons = ctc_feasible(np.array([100, 100, 16, 0]), labels, valid, unk)
    assert reasons[0] == "" and reasons[3] == ""
    assert "outside the vocabulary" in reasons[1]
    assert "audio too short for CTC" in reasons[2] and "needs 5" in reasons[2]
    assert ctc_feasible(np.array([20]), labels[2:3], valid[2:3], unk) == [""]
