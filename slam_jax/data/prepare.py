"""`slam-prepare`: convert a LibriSpeech- or Libri-Light-layout folder into sharded TFRecords for fast reading.

  slam-prepare --input /data/LibriSpeech --output gs://bucket/libri_prepared \\
      --layout librispeech --split train=train-960 --split validation=dev-clean --num_shards 64

writes `<output>/<split>/<split>.tfrecord-00000-of-00064 ...` and `<output>/manifest.json`. Each record is a
tf.train.Example {"id": source file (+ "@<second>" for chunks), "audio": little-endian int16 PCM at 16 kHz mono,
"transcript": text ("" without transcripts)} -- decoded once here, so training reads them in pure TF
(`sources.add_prepared_task`). Records go round-robin to shards in sorted id order: the output is deterministic.

Bad input (corrupt audio, wrong sample rate unless --resample, multi-channel, a transcript line without audio, an
audio file without transcript, an empty transcript, a missing Libri-Light JSON) stops the run with the file and the
problem, or with `--on_error skip` is left out and listed in the manifest ("skipped") and on the console.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from slam_jax.data import audio, features, sources

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
    """Records {"id", "audio_path", "transcript", "error"} of one split directory (see `sources.list_*`)."""
    if layout == "librispeech":
        return sources.list_librispeech(directory, need_transcripts=transcripts)
    return sources.list_audio_files(directory, require_json=layout == "librilight")


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


def _parse_splits(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise argparse.ArgumentTypeError(f"--split wants NAME=SUBDIR (e.g. train=train-clean-100), got {value!r}")
        out[name] = directory
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="slam-prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="corpus root (local or gs://)")
    parser.add_argument("--output", required=True, help="output root (local or gs://)")
    parser.add_argument("--layout", choices=LAYOUTS, default="librispeech",
                        help="librispeech: <spk>/<chap>/*.flac + *.trans.txt; librilight: *.flac + *.json; "
                             "audio: any audio files")
    parser.add_argument("--split", action="append", default=[], metavar="NAME=SUBDIR",
                        help="split name and its sub-directory of --input (repeatable); default train=train, "
                             "validation=dev")
    parser.add_argument("--num_shards", type=int, default=16,
                        help="TFRecord files per split (readers shard over them; default 16)")
    parser.add_argument("--no_transcripts", action="store_true",
                        help="librispeech layout: do not require a transcript for every audio file")
    parser.add_argument("--chunk_seconds", type=float, default=None,
                        help="cut recordings into chunks of at most this many seconds (default: 32 for librilight, "
                             "none otherwise)")
    parser.add_argument("--resample", action="store_true", help="resample other rates to 16 kHz instead of failing")
    parser.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                        help="a bad audio file or transcript: stop naming it (raise, default) or count and skip it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error("--num_shards must be at least 1")
    try:
        splits = _parse_splits(args.split) if args.split else {"train": "train", "validation": "dev"}
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    chunk = args.chunk_seconds if args.chunk_seconds is not None else (32.0 if args.layout == "librilight" else None)
    manifest = {"input": args.input, "layout": args.layout, "sample_rate": features.SAMPLE_RATE,
                "format": "tf.train.Example {id: bytes, audio: int16 little-endian PCM bytes, transcript: bytes}",
                "splits": {}}
    try:
        for name, directory in splits.items():
            manifest["splits"][name] = prepare_split(
                posixpath.join(args.input, directory), args.output, name, layout=args.layout,
                num_shards=args.num_shards, transcripts=not args.no_transcripts, chunk_seconds=chunk,
                resample=args.resample, on_error=args.on_error, progress=not args.quiet)
    except (PrepareError, FileNotFoundError) as e:
        print(f"slam-prepare: error: {e}", file=sys.stderr)
        return 1
    with tf.io.gfile.GFile(posixpath.join(args.output, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    for name, entry in manifest["splits"].items():
        print(f"{name}: {entry['examples']} examples, {entry['seconds'] / 3600:.3f} h in {entry['num_shards']} "
              f"shards, {len(entry['skipped'])} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
