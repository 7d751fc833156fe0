"""seqio preprocessors that turn source records into the shared example schema (see `sources`).

Examples flow through these dict keys (all optional until `finalize`):
  "audio_path" string []    file to read          "waveform" float32 [samples]   mono, 16 kHz, in [-1, 1]
  "speech"     float32 [frames, 80] log-mel       "text"     string [] -> int32 [tokens]
  "id"         string  []  example location       "error"    string []  "" or "<file>: <problem>"

Errors never raise inside the pipeline: the record keeps flowing with `error` set and an empty payload, and the
converter raises (naming the file and the problem) or skips and counts it, as `StreamConfig.on_error` says.
Decoding runs in `tf.numpy_function` over `audio.load_audio` (folders; gfile read + decode); TFDS and `slam-prepare` records
carry int16 samples and stay in pure TF.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from slam_jax.data import audio, features

AUTOTUNE = tf.data.AUTOTUNE


def _error(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return ex.get("error", tf.constant(""))


def _ok(ex: Mapping[str, tf.Tensor]) -> tf.Tensor:
    return tf.equal(tf.strings.length(_error(ex)), 0)


def _read_and_decode(path: bytes, error: bytes, allow_multichannel: bool, resample: bool
                     ) -> tuple[np.ndarray, bytes]:
    """Python side of `read_audio`: returns (float32 waveform [samples], error message or b"")."""
    empty = np.zeros([0], np.float32)
    if error:
        return empty, error
    name = path.decode("utf-8")
    try:
        wav = audio.load_audio(name, sample_rate=features.SAMPLE_RATE, resample=resample,
                               allow_multichannel=allow_multichannel)
    except audio.AudioError as e:
        return empty, str(e).encode()
    return np.asarray(wav, np.float32).reshape([-1]), b""


def read_audio(allow_multichannel: bool = False, resample: bool = False):
    """Preprocessor: {"audio_path", "error"} -> + "waveform" float32 [samples] (FLAC/WAV/OGG/MP3, 16 kHz mono).

    A missing/unreadable file, corrupt data, a sample rate other than 16 kHz (unless `resample`: converted with
    `audio.resample_waveform`) or (unless `allow_multichannel`) a multi-channel file sets "error" to
    "<path>: <problem>" and leaves the waveform empty.
    """
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        wav, err = tf.numpy_function(functools.partial(_read_and_decode, allow_multichannel=allow_multichannel,
                                                       resample=resample),
                                     [ex["audio_path"], _error(ex)], [tf.float32, tf.string], stateful=False)
        ex["waveform"] = tf.ensure_shape(wav, [None])
        ex["error"] = tf.ensure_shape(err, [])
        return ex

    def preprocessor(ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)

    return preprocessor


def chunk_waveform(chunk_seconds: float):
    """Preprocessor: cuts "waveform" into consecutive chunks of <= `chunk_seconds` (one example each; the id gets
    "@<start second>"). A record with an error passes through as one example."""
    size = int(round(chunk_seconds * features.SAMPLE_RATE))

    def preprocessor(ds: tf.data.Dataset) -> tf.data.Dataset:
        def split(ex: dict[str, tf.Tensor]) -> tf.data.Dataset:
            n = tf.shape(ex["waveform"])[0]
            count = tf.maximum(1, (n + size - 1) // size)
            starts = tf.range(count) * size

            def chunk(start: tf.Tensor) -> dict[str, tf.Tensor]:
                out = dict(ex)
                out["waveform"] = ex["waveform"][start:start + size]
                seconds = tf.strings.as_string(start // features.SAMPLE_RATE)
                out["id"] = tf.strings.join([ex["id"], "@", seconds])
                return out

            return tf.data.Dataset.from_tensor_slices(starts).map(chunk)

        return ds.flat_map(split)

    return preprocessor


def samples_for_frames(frames: int) -> int:
    """The fewest samples whose log-mel has at least `frames` frames (features.num_frames inverted)."""
    samples = max(features.WINDOW, (frames - 1) * features.HOP + features.WINDOW - 2 * features.HOP)
    while features.num_frames(samples) < frames:
        samples += 1
    return samples


@seqio.map_over_dataset(num_seeds=1)
def crop_waveform(ex: dict[str, tf.Tensor], sequence_length: Mapping[str, int], seed: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
    """Random crop of "waveform" to the samples that make `sequence_length["speech"]` log-mel frames.

    Cropping the waveform (not the features) keeps the log-mel cost proportional to the kept audio.
    """
    if not sequence_length or sequence_length.get("speech") is None:
        return ex
    keep = samples_for_frames(int(sequence_length["speech"]))
    wav = ex["waveform"]
    n = tf.shape(wav)[0]
    start = tf.random.stateless_uniform([], seed, 0, tf.maximum(n - keep, 0) + 1, dtype=tf.int32)
    ex = dict(ex)
    ex["waveform"] = wav[start:start + keep]
    return ex


@seqio.map_over_dataset
def log_mel(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """"waveform" [samples] -> "speech" float32 [frames, 80] via features.log_mel.

    Audio shorter than one analysis window becomes an error (it would give no frames).
    """
    ex = dict(ex)
    wav = ex.pop("waveform")
    short = tf.logical_and(_ok(ex), tf.shape(wav)[0] < features.WINDOW)
    ex["error"] = tf.where(short, tf.strings.join(
        [ex["id"], f": audio shorter than one {features.WINDOW}-sample analysis window"]), _error(ex))
    empty = tf.zeros([0, features.NUM_MEL_BINS], tf.float32)
    ex["speech"] = tf.cond(_ok(ex), lambda: tf.cast(features.log_mel(wav), tf.float32), lambda: empty)
    ex["speech"] = tf.ensure_shape(ex["speech"], [None, features.NUM_MEL_BINS])
    return ex


@seqio.map_over_dataset
def tfds_audio(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """TFDS librispeech record {"speech": int16 [samples], "text", "id"} -> {"waveform", "text", "id", "error"}."""
    return {"waveform": tf.cast(ex["speech"], tf.float32) / 32768.0, "text": ex["text"],
            "id": tf.strings.join(["tfds:", ex["id"]]), "error": tf.constant("")}


@seqio.map_over_dataset
def pcm16_audio(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """`slam-prepare` record {"audio": int16 bytes} -> "waveform" float32 [samples]."""
    ex = dict(ex)
    ex["waveform"] = tf.cast(tf.io.decode_raw(ex.pop("audio"), tf.int16, little_endian=True), tf.float32) / 32768.0
    return ex


@seqio.map_over_dataset
def no_error(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Adds an empty "error" to records of sources that validated their input already (TFDS, slam-prepare)."""
    ex = dict(ex)
    ex.setdefault("error", tf.constant(""))
    return ex


def tfds_text(key: str):
    """TFDS text record -> {"text", "id", "error"}; `key` names the text field ("text" for c4/librispeech_lm)."""
    @seqio.map_over_dataset
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"text": ex[key], "id": tf.constant(f"tfds:{key}"), "error": tf.constant("")}
    return fn


def rename(src: str, dst: str):
    """Preprocessor renaming feature `src` to `dst`."""
    @seqio.map_over_dataset
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        ex[dst] = ex.pop(src)
        return ex
    return fn


def require_text(problem: str):
    """Preprocessor: a good record whose "text" is blank becomes an error "<id>: <problem>"."""
    @seqio.map_over_dataset
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        blank = tf.logical_and(_ok(ex), tf.equal(tf.strings.length(tf.strings.strip(ex["text"])), 0))
        ex["error"] = tf.where(blank, tf.strings.join([ex["id"], ": " + problem]), _error(ex))
        return ex
    return fn


def _tokenize(ds: tf.data.Dataset, key: str, feature: seqio.Feature) -> tf.data.Dataset:
    """`key` string -> int32 [tokens] with the feature's vocabulary (seqio.preprocessors.tokenize), then EOS
    appended when the feature has `add_eos` and the text is not empty. Records with an error get no tokens."""
    ds = seqio.preprocessors.tokenize(ds, {key: feature}, copy_pretokenized=False)
    eos = feature.vocabulary.eos_id if feature.add_eos else None

    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        tokens = tf.cast(ex[key], tf.int32)
        if eos is not None:
            tokens = tf.cond(tf.size(tokens) > 0, lambda: tf.concat([tokens, [eos]], 0), lambda: tokens)
        ex[key] = tf.cond(_ok(ex), lambda: tokens, lambda: tf.zeros([0], tf.int32))
        return ex

    return ds.map(fn, num_parallel_calls=AUTOTUNE)


def tokenize_text(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """"text" string -> EOS-terminated int32 [tokens] with the task's vocabulary (empty for error records)."""
    return _tokenize(ds, "text", output_features["text"])


def tokenize_source_text(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """"source_text" string -> EOS-terminated int32 [tokens] with the task's source vocabulary."""
    return _tokenize(ds, "source_text", output_features["source_text"])


def finalize(task_name: str, kind: str):
    """Preprocessor producing exactly the shared schema {"speech", "text", "source_text", "task", "id", "error"}: the
    modality a `kind` lacks is empty (e.g. a speech task drops TFDS transcripts), "source_text" is empty unless a
    preprocessor made it (speech translation), and so is the payload of an error."""
    @seqio.map_over_dataset
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ok = _ok(ex)
        speech = ex["speech"] if kind != "text" else tf.zeros([0, features.NUM_MEL_BINS], tf.float32)
        text = ex["text"] if kind != "speech" else tf.zeros([0], tf.int32)
        none = tf.zeros([0], tf.int32)
        source = tf.cond(ok, lambda: ex["source_text"], lambda: none) if "source_text" in ex else none
        return {
            "speech": tf.cond(ok, lambda: speech, lambda: tf.zeros([0, features.NUM_MEL_BINS], tf.float32)),
            "text": tf.cond(ok, lambda: text, lambda: tf.zeros([0], tf.int32)),
            "source_text": source,
            "task": tf.constant(task_name),
            "id": ex["id"],
            "error": _error(ex),
        }
    return fn


__all__ = ["read_audio", "chunk_waveform", "crop_waveform", "log_mel", "tfds_audio", "pcm16_audio", "no_error",
           "tfds_text", "rename", "require_text", "tokenize_text", "tokenize_source_text", "finalize",
           "samples_for_frames"]
