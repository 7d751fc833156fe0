import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slam_jax import masking


def _segments(batch, length, lengths=None):
    seg = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = length if lengths is None else lengths[b]
        seg[b, :n] = 1
    return jnp.asarray(seg)


def test_speech_mask_fraction_matches_theory():
    # p = 0.065, span 10 -> 1 - 0.935^10 = 49% of frames (w2v-BERT).
    seg = _segments(256, 600)
    mask = masking.span_mask(jax.random.key(0), seg, masking.SpanMasking(0.065, 10, 2))
    assert abs(float(mask.mean()) - 0.49) < 0.03


def test_text_mask_fraction_matches_theory():
    seg = _segments(256, 512)
    mask = masking.span_mask(jax.random.key(1), seg, masking.SpanMasking.for_fraction(0.15, 5))
    assert abs(float(mask.mean()) - 0.15) < 0.02


def test_tlm_start_probabilities_match_spec():
    assert masking.start_prob_for_fraction(0.5, 5) == pytest.approx(0.129, abs=1e-3)
    assert masking.start_prob_for_fraction(0.75, 10) == pytest.approx(0.129, abs=1e-3)


def test_mask_respects_padding_and_segments():
    seg = np.zeros((64, 40), np.int32)
    seg[:, :12], seg[:, 12:30] = 1, 2  # two packed segments, then padding
    seg = jnp.asarray(seg)
    mask = np.asarray(masking.span_mask(jax.random.key(2), seg, masking.SpanMasking(0.3, 8, 0)))
    assert not mask[:, 30:].any()
    assert 0.5 < mask[:, :30].mean() < 0.99


def test_min_spans_forced_per_segment():
    seg = np.zeros((16, 60), np.int32)
    seg[:, :20], seg[:, 20:44] = 1, 2
    seg = jnp.asarray(seg)
    mask = np.asarray(masking.span_mask(jax.random.key(3), seg, masking.SpanMasking(0.0, 3, 2)))
    for row in mask:
        for lo, hi in ((0, 20), (20, 44)):
            n = row[lo:hi].sum()
            assert 2 <= n <= 6, (lo, hi, n)  # two forced spans of <= 3 frames each
        assert not row[44:].any()


def test_spans_never_cross_segment_boundary():
    # Segment 1 is a single frame whose forced span (length 5) would cover frames 0..4 if it crossed into
    # segment 2; segment 2 gets exactly one forced span of its own, so it must hold one contiguous run <= 5.
    seg = jnp.asarray(np.array([[1] + [2] * 20] * 64, np.int32))
    mask = np.asarray(masking.span_mask(jax.random.key(4), seg, masking.SpanMasking(0.0, 5, 1)))
    assert mask[:, 0].all()
    for row in mask[:, 1:]:
        idx = np.nonzero(row)[0]
        assert 1 <= len(idx) <= 5 and idx.max() - idx.min() == len(idx) - 1


def test_replace_tokens_fractions():
    tokens = jnp.full((200, 100), 7, jnp.int32)
    mask = jnp.ones((200, 100), bool)
    new, use_mask = masking.replace_tokens(jax.random.key(5), tokens, mask, 50, 0.1, 0.1)
    random_frac = float(((new != 7) | (new == 7) & ~use_mask).mean())
    assert abs(float(use_mask.mean()) - 0.8) < 0.02
    assert 0.17 < random_frac < 0.23
