"""Converting a LibriSpeech- or Libri-Light-layout folder into sharded TFRecords for fast reading (the
`slam-prepare` command: `slam_jax/cli/prepare.py`).

  slam-prepare --corpus_dir=/data/LibriSpeech --output_dir=gs://bucket/libri_prepared \\
      --layout=librispeech --split_dir=train=train-960 --split_dir=validation=dev-clean --num_shards=64

writes `<output>/<split>/<split>.tfrecord-00000-of-00064 ...` and `<output>/manifest.json`. Each record is a
tf.train.Example {"id": source file (+ "@<second>" for chunks), "audio": little-endian int16 PCM at 16 kHz mono,
"transcript": text ("" without transcripts)} -- decoded once here, so training reads them in pure TF
(`sources.add_prepared_task`). Records go round-robin to shards in sorted id order: the output is deterministic.

Bad input (corrupt audio, wrong sample rate unless --resample, multi-channel, a transcript line without audio, an
audio file without transcript, an empty transcript, a missing Libri-Light JSON) stops the run with the file and the
problem, or with `--on_error=skip` is left out and listed in the manifest ("skipped") and on the console.
"""
from __future__ import annotations

import json
import posixpath
import sys
from typing import Optional

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from slam_jax.data import audio, features, listing

LAYOUTS = ("librispeech", "librilight", "audio")


class PrepareError(ValueError):
    """Bad input met while preparing (the message names the file and the problem)."""


def _example(example_id: str, waveform: np.ndarray, transcript: str) -> bytes:
    pcm = np.clip(np.round(waveform * 32767.0), -32768, 32767).astype("<i2").tobytes()
    feature = {
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()])),
        "audio": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pcm])),
        "transcript": tf.train.Feature(bytes_list=tf.train.BytesList(value=[transcript.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def list_split(directory: str, layout: str, transcripts: bool) -> list[dict[str, str]]:
    """Records {"id", "audio_path", "transcript", "error"} of one split directory (see `listing.list_*`)."""
    if layout == "librispeech":
        return listing.list_librispeech(directory, need_transcripts=transcripts)
    return listing.list_audio_files(directory, require_json=layout == "librilight")


def prepare_split(directory: str, output: str, split: str, *, layout: str, num_shards: int, transcripts: bool,
                  chunk_seconds: Optional[float], resample: bool, on_error: str, progress: bool = True) -> dict:
    """Writes one split's shards; returns its manifest entry {"examples", "seconds", "files", "skipped", ...}."""
    records = list_split(directory, layout, transcripts)
    tf.io.gfile.makedirs(posixpath.join(output, split))
    paths = [posixpath.join(output, split, f"{split}.tfrecord-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    writers = [tf.io.TFRecordWriter(p) for p in paths]
    chunk = int(round(chunk_seconds * features.SAMPLE_RATE)) if chunk_seconds else None
    skipped: list[str] = []
    examples, samples = 0, 0
    try:
        for record in tqdm(records, desc=f"{split}", unit="file", disable=not progress):
            error = record["error"]
            waveform = None
            if not error:
                try:
                    waveform = audio.load_audio(record["audio_path"], sample_rate=features.SAMPLE_RATE,
                                                resample=resample)
                except audio.AudioError as e:
                    error = str(e)
            if error:
                if on_error == "raise":
                    raise PrepareError(error)
                skipped.append(error)
                continue
            starts = range(0, max(len(waveform), 1), chunk) if chunk else [0]
            for start in starts:
                piece = waveform[start:start + chunk] if chunk else waveform
                example_id = record["id"] + (f"@{start // features.SAMPLE_RATE}" if chunk else "")
                writers[examples % num_shards].write(_example(example_id, piece, record["transcript"]))
                examples += 1
                samples += len(piece)
    finally:
        for w in writers:
            w.close()
    if skipped:
        print(f"slam-prepare: {split}: skipped {len(skipped)} bad inputs:", file=sys.stderr)
        for message in skipped:
            print(f"    {message}", file=sys.stderr)
    return {"source": directory, "files": len(records), "examples": examples,
            "seconds": samples / features.SAMPLE_RATE, "num_shards": num_shards, "skipped": skipped}


def prepare_corpus(corpus_dir: str, output_dir: str, splits: dict[str, str], *, layout: str = "librispeech",
                   num_shards: int = 16, transcripts: bool = True, chunk_seconds: float | None = None,
                   resample: bool = False, on_error: str = "raise", progress: bool = True) -> dict:
    """Prepares every split (name -> sub-directory of `corpus_dir`) and writes `<output_dir>/manifest.json`;
    returns the manifest."""
    manifest = {"input": corpus_dir, "layout": layout, "sample_rate": features.SAMPLE_RATE,
                "format": "tf.train.Example {id: bytes, audio: int16 little-endian PCM bytes, transcript: bytes}",
                "splits": {}}
    for name, directory in splits.items():
        manifest["splits"][name] = prepare_split(
            posixpath.join(corpus_dir, directory), output_dir, name, layout=layout, num_shards=num_shards,
            transcripts=transcripts, chunk_seconds=chunk_seconds, resample=resample, on_error=on_error,
            progress=progress)
    with tf.io.gfile.GFile(posixpath.join(output_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest
