"""Audio decoding: FLAC / WAV (anything libsndfile reads) -> float32 mono waveform at a fixed sample rate.

Every problem raises `AudioError` whose message starts with the file name and says what is wrong:

  missing file       "<path>: audio file not found (FileNotFoundError: ...)"
  unreadable data    "<name>: cannot decode audio (...)"       (corrupt, truncated, empty, unknown format)
  wrong sample rate  "<name>: sample rate 8000 Hz, expected 16000 Hz ..."   unless `resample=True`
  several channels   "<name>: 2 channels, expected mono ..."              unless `allow_multichannel=True`
  too short          "<name>: audio too short (0.20 s < min_seconds 0.50 s)"
  too long           "<name>: audio too long (...)"                          only with `crop="none"`
  non-finite values  "<name>: audio contains NaN or infinite samples"

Files are read through `tf.io.gfile.GFile`, so `gs://` (and any other TF filesystem) paths work. Resampling uses
`scipy.signal.resample_poly` (polyphase FIR with a Kaiser window; scipy comes with jax).
"""
from __future__ import annotations

import io
import math
from typing import Literal, Optional

import numpy as np
import soundfile as sf
import tensorflow as tf

Crop = Literal["start", "random", "none"]
CROPS = ("start", "random", "none")


class AudioError(ValueError):
    """A file's audio cannot be used; the message names the file and the problem."""


def load_audio(path: str, *, sample_rate: int = 16000, resample: bool = False, max_seconds: Optional[float] = None,
               min_seconds: float = 0.0, crop: Crop = "start", rng: Optional[np.random.Generator] = None,
               allow_multichannel: bool = False) -> np.ndarray:
    """Reads and decodes the audio file at `path` (local or `gs://`).

    Returns float32 [samples] in [-1, 1], mono, at `sample_rate`. The options are those of `decode_audio_bytes`.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as fh:
            data = fh.read()
    except tf.errors.NotFoundError as e:
        raise AudioError(f"{path}: audio file not found (FileNotFoundError: {e.message})") from e
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", None) or str(e)
        raise AudioError(f"{path}: cannot read audio file ({type(e).__name__}: {message})") from e
    return decode_audio_bytes(data, name=path, sample_rate=sample_rate, resample=resample, max_seconds=max_seconds,
                              min_seconds=min_seconds, crop=crop, rng=rng, allow_multichannel=allow_multichannel)


def decode_audio_bytes(data: bytes, *, name: str, sample_rate: int = 16000, resample: bool = False,
                       max_seconds: Optional[float] = None, min_seconds: float = 0.0, crop: Crop = "start",
                       rng: Optional[np.random.Generator] = None, allow_multichannel: bool = False) -> np.ndarray:
    """Decodes an encoded audio file held in memory (`name` only labels errors).

    Args:
      data: the file's bytes (FLAC, WAV, OGG, ... as libsndfile reads them).
      name: where the bytes come from; every error message starts with it.
      sample_rate: the rate the caller needs. A file at another rate is an error unless `resample`.
      resample: convert other rates to `sample_rate` with `scipy.signal.resample_poly`.
      max_seconds: longer audio is cut to this length as `crop` says (None: no limit).
      min_seconds: shorter audio (after resampling/cropping bookkeeping) is an error ("too short").
      crop: "start" keeps the first `max_seconds`; "random" keeps a window starting at a sample drawn from `rng`
        (required then, for reproducibility); "none" makes audio longer than `max_seconds` an error ("too long").
      rng: the generator for `crop="random"`.
      allow_multichannel: average several channels to mono instead of raising.

    Returns:
      float32 [samples] in [-1, 1] (float files are clipped to that range; so is the resampler's overshoot).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if crop == "random" and max_seconds is not None and rng is None:
        raise ValueError("crop='random' needs rng (a np.random.Generator) so that crops are reproducible")
    if not data:
        raise AudioError(f"{name}: cannot decode audio (the file is empty)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            wav = f.read(dtype="float32", always_2d=True)  # [samples, channels]
    except Exception as e:  # libsndfile reports corrupt data with several exception types across versions
        raise AudioError(f"{name}: cannot decode audio ({type(e).__name__}: {e})") from e
    if channels != 1 and not allow_multichannel:
        raise AudioError(f"{name}: {channels} channels, expected mono (pass allow_multichannel=True to average "
                         "the channels)")
    if rate != sample_rate and not resample:
        raise AudioError(f"{name}: sample rate {rate} Hz, expected {sample_rate} Hz (convert the file or pass "
                         "resample=True)")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    mono = wav.mean(axis=1) if channels != 1 else wav[:, 0]
    if rate != sample_rate:
        mono = resample_waveform(mono, rate, sample_rate)
    mono = np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)
    seconds = mono.shape[0] / sample_rate
    if seconds < min_seconds:
        raise AudioError(f"{name}: audio too short ({seconds:.2f} s < min_seconds {min_seconds:.2f} s)")
    if max_seconds is not None:
        mono = crop_waveform(mono, int(round(max_seconds * sample_rate)), crop=crop, rng=rng, name=name)
    return mono


def resample_waveform(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling of float [samples] from `from_rate` to `to_rate` Hz -> float32 [samples']."""
    if from_rate == to_rate:
        return waveform.astype(np.float32, copy=False)
    from scipy import signal  # imported lazily: only resampling needs scipy

    g = math.gcd(int(from_rate), int(to_rate))
    return signal.resample_poly(waveform, int(to_rate) // g, int(from_rate) // g).astype(np.float32)


def crop_waveform(waveform: np.ndarray, max_samples: int, *, crop: Crop = "start",
                  rng: Optional[np.random.Generator] = None, name: str = "<waveform>") -> np.ndarray:
    """Cuts [samples] to at most `max_samples` (see `decode_audio_bytes` for `crop`)."""
    n = waveform.shape[0]
    if n <= max_samples:
        return waveform
    if crop == "none":
        raise AudioError(f"{name}: audio too long ({n} samples > max {max_samples}; crop='none')")
    if crop == "start":
        return waveform[:max_samples]
    if rng is None:
        raise ValueError("crop='random' needs rng (a np.random.Generator) so that crops are reproducible")
    start = int(rng.integers(0, n - max_samples + 1))
    return waveform[start:start + max_samples]
