"""The speech front-end: 80-dim log-mel features, 100 frames per second, per-utterance normalized.

Recipe (w2v-BERT / SLAM: 80-dim log-mel, 25 ms window / 10 ms hop), at 16 kHz:
  1. frames of WINDOW=400 samples every HOP=160 samples, no centre padding: frame t covers samples
     [160 t, 160 t + 400); `num_frames(n) = 1 + (n - 400) // 160` for n >= 400, else 0 (a partial last frame is
     dropped);
  2. periodic Hann window (400), zero-padded to FFT_LENGTH=512, power spectrum |X|^2 (257 bins);
  3. 80 triangular mel filters from 0 to 8000 Hz on the **HTK** mel scale (mel = 2595 log10(1 + f / 700)),
     triangles linear in Hz, peak 1, no area normalization — exactly `librosa.filters.mel(sr=16000, n_fft=512,
     n_mels=80, fmin=0, fmax=8000, htk=True, norm=None)` (note `tf.signal.linear_to_mel_weight_matrix` differs: its
     triangles are linear in mel and it zeroes the DC bin, so we build the matrix ourselves);
  4. natural log with an additive floor: log(mel + LOG_FLOOR), LOG_FLOOR = 1e-6 (-138 dB re full scale power of
     one sample; waveforms are in [-1, 1]);
  5. per-utterance mean / variance normalization over time, per mel bin:
     (x - mean_t x) / sqrt(var_t x + VARIANCE_FLOOR), VARIANCE_FLOOR = 1e-5. A constant bin becomes 0.
No pre-emphasis, no dither. Steps 1-4 agree with
`log(librosa.feature.melspectrogram(y=pad(y, 56), sr=16000, n_fft=512, hop_length=160, win_length=400,
window="hann", center=False, power=2.0, n_mels=80, fmin=0, fmax=8000, htk=True, norm=None) + 1e-6).T`
(the 56 zeros on both sides align librosa's 512-sample frames, whose 400-sample window sits centred, with ours);
tests/test_features.py measures the difference.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
WINDOW = 400         # 25 ms
HOP = 160            # 10 ms
FFT_LENGTH = 512
NUM_FFT_BINS = FFT_LENGTH // 2 + 1
LOWER_HZ = 0.0
UPPER_HZ = 8000.0
LOG_FLOOR = 1e-6
VARIANCE_FLOOR = 1e-5


def num_frames(num_samples: int) -> int:
    """Frames `log_mel` makes from `num_samples` samples: 1 + (n - WINDOW) // HOP, or 0 below one window."""
    n = int(num_samples)
    return 0 if n < WINDOW else 1 + (n - WINDOW) // HOP


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=None)
def mel_filterbank() -> np.ndarray:
    """float32 [NUM_FFT_BINS=257, NUM_MEL_BINS=80]: power-spectrum bins -> HTK mel bands (triangles linear in Hz,
    peak 1, no area normalization; librosa's `htk=True, norm=None`)."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, NUM_FFT_BINS)                                   # [257]
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(LOWER_HZ), _hz_to_mel(UPPER_HZ), NUM_MEL_BINS + 2))  # [82]
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]        # [80, 1] each
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))                                      # [80, 257]
    return weights.T.astype(np.float32)


def mel_power(waveform: tf.Tensor) -> tf.Tensor:
    """float32 [samples] -> mel power spectrogram float32 [frames, 80] (steps 1-3 of the module recipe)."""
    waveform = tf.convert_to_tensor(waveform, tf.float32)
    frames = tf.signal.frame(waveform, WINDOW, HOP, pad_end=False)                  # [frames, 400]
    frames = frames * tf.signal.hann_window(WINDOW, periodic=True, dtype=tf.float32)
    spectrum = tf.signal.rfft(frames, fft_length=[FFT_LENGTH])                      # [frames, 257] complex64
    power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
    return tf.linalg.matmul(power, tf.constant(mel_filterbank()))                   # [frames, 80]


def normalize_per_utterance(features: tf.Tensor) -> tf.Tensor:
    """[frames, bins] -> [frames, bins] with zero mean and unit variance over time in every bin."""
    mean, variance = tf.nn.moments(features, axes=[0], keepdims=True)               # [1, bins] each
    return (features - mean) * tf.math.rsqrt(variance + VARIANCE_FLOOR)


def log_mel(waveform: tf.Tensor, *, normalize: bool = True) -> tf.Tensor:
    """float32 [samples] at 16 kHz in [-1, 1] -> float32 [num_frames(samples), 80] log-mel features.

    Pure TensorFlow (graph-safe, unknown length fine). `normalize=False` skips the per-utterance mean/variance
    normalization (step 5) and returns log(mel + LOG_FLOOR). Fewer than WINDOW samples give [0, 80].
    """
    features = tf.math.log(mel_power(waveform) + LOG_FLOOR)
    return normalize_per_utterance(features) if normalize else features


def log_mel_np(waveform: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """NumPy front door to `log_mel` for tools: float [samples] -> float32 [frames, 80]."""
    waveform = np.asarray(waveform, np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"log_mel_np expects a mono waveform [samples], got shape {waveform.shape}")
    return log_mel(tf.constant(waveform), normalize=normalize).numpy()
