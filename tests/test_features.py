"""The log-mel front-end (slam_jax.data.features) against librosa, on real mini-corpus speech and on noise."""
import glob
import os

import librosa
import numpy as np
import pytest
import tensorflow as tf

from slam_jax.data import audio, features

MINI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slam_jax", "assets", "mini_corpus")
# Largest |ours - librosa| allowed on log(mel + 1e-6) (natural log). Measured: ~1.3e-4 on espeak speech (float32
# round-off, largest in near-silent frames where the log floor magnifies it), ~6e-6 on white noise.
LOG_MEL_ATOL = 1e-3


def _librosa_log_mel(waveform: np.ndarray) -> np.ndarray:
    """The reference: same recipe as the module docstring of `features`, unnormalized. -> [frames, 80]."""
    pad = (features.FFT_LENGTH - features.WINDOW) // 2  # aligns librosa's centred 400-in-512 window with our frames
    mel = librosa.feature.melspectrogram(
        y=np.pad(waveform.astype(np.float64), pad), sr=16000, n_fft=512, hop_length=160, win_length=400,
        window="hann", center=False, power=2.0, n_mels=80, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    return np.log(mel + features.LOG_FLOOR).T


def _speech() -> np.ndarray:
    path = sorted(glob.glob(os.path.join(MINI, "train", "*", "*", "*.flac")))[0]
    return audio.load_audio(path)


def test_filterbank_equals_librosa_htk():
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=80, fmin=0.0, fmax=8000.0, htk=True, norm=None)
    np.testing.assert_allclose(features.mel_filterbank(), ref.T, atol=1e-6)


@pytest.mark.parametrize("source", ["speech", "noise"])
def test_log_mel_matches_librosa(source):
    if source == "speech":
        wav = _speech()
    else:
        wav = (np.random.default_rng(0).standard_normal(12345) * 0.1).astype(np.float32)
    ours = features.log_mel_np(wav, normalize=False)
    ref = _librosa_log_mel(wav)
    assert ours.shape == ref.shape == (features.num_frames(len(wav)), features.NUM_MEL_BINS)
    np.testing.assert_allclose(ours, ref, atol=LOG_MEL_ATOL, rtol=0)


def test_normalization_is_per_bin_over_time():
    wav = _speech()
    raw = features.log_mel_np(wav, normalize=False)
    norm = features.log_mel_np(wav)
    np.testing.assert_allclose(norm.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(norm.std(axis=0), 1.0, atol=1e-3)
    expected = (raw - raw.mean(0)) / np.sqrt(raw.var(0) + features.VARIANCE_FLOOR)
    np.testing.assert_allclose(norm, expected, atol=1e-4)


@pytest.mark.parametrize("samples", [0, 1, 399, 400, 401, 559, 560, 16000, 16001])
def test_num_frames_matches_graph_with_unknown_length(samples):
    fn = tf.function(features.log_mel, input_signature=[tf.TensorSpec([None], tf.float32)])
    wav = np.random.default_rng(samples).uniform(-0.5, 0.5, samples).astype(np.float32)
    out = fn(tf.constant(wav))
    assert out.shape == (features.num_frames(samples), features.NUM_MEL_BINS)
    assert np.all(np.isfinite(out.numpy()))


def test_num_frames_formula():
    assert [features.num_frames(n) for n in (399, 400, 559, 560, 16000)] == [0, 1, 1, 2, 98]


def test_log_mel_np_rejects_multichannel():
    with pytest.raises(ValueError, match=r"mono waveform \[samples\], got shape \(2, 800\)"):
        features.log_mel_np(np.zeros([2, 800], np.float32))


def test_gain_is_normalized_away():
    """Per-utterance normalization removes the recording level where the log floor is negligible."""
    rng = np.random.default_rng(1)
    envelope = 0.05 + 0.2 * np.abs(np.sin(np.arange(16000) * np.pi / 4000))  # syllable-like loudness changes
    wav = (rng.standard_normal(16000) * envelope).astype(np.float32)
    np.testing.assert_allclose(features.log_mel_np(wav), features.log_mel_np(wav * 0.25), atol=5e-3)
    raw_gap = features.log_mel_np(wav, normalize=False) - features.log_mel_np(wav * 0.25, normalize=False)
    np.testing.assert_allclose(raw_gap, np.log(16.0), atol=5e-3)  # floor: quietest low bins
