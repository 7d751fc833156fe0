"""`slam-prepare`: convert a LibriSpeech- or Libri-Light-layout folder into sharded TFRecords for fast reading.

  slam-prepare --corpus_dir=/data/LibriSpeech --output_dir=gs://bucket/libri_prepared \\
      --layout=librispeech --split_dir=train=train-960 --split_dir=validation=dev-clean --num_shards=64

writes `<output_dir>/<split>/<split>.tfrecord-00000-of-00064 ...` and `<output_dir>/manifest.json`
(`slam_jax/data/prepare.py` describes the records). A bad file stops the run naming it, or with `--on_error=skip` is
left out and listed in the manifest ("skipped") and on the console.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from slam_jax.cli import common


def _split_dirs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise ValueError(f"--split_dir wants NAME=SUBDIR (e.g. train=train-clean-100), got {value!r}")
        out[name] = directory
    return out


def build_parser() -> argparse.ArgumentParser:
    from slam_jax.data import prepare
    parser = common.new_parser("slam-prepare", __doc__, gin=False)
    parser.add_argument("--corpus_dir", required=True, help="corpus root (local or gs://)")
    common.add_flags(parser, "output_dir", required=("output_dir",))
    parser.add_argument("--layout", choices=prepare.LAYOUTS, default="librispeech",
                        help="librispeech: <spk>/<chap>/*.flac + *.trans.txt; librilight: *.flac + *.json; "
                             "audio: any audio files")
    parser.add_argument("--split_dir", action="append", default=[], metavar="NAME=SUBDIR",
                        help="split name and its sub-directory of --corpus_dir (repeatable); default train=train, "
                             "validation=dev")
    parser.add_argument("--num_shards", type=int, default=16,
                        help="TFRecord files per split (readers shard over them; default 16)")
    parser.add_argument("--no_transcripts", action="store_true",
                        help="librispeech layout: do not require a transcript for every audio file")
    parser.add_argument("--chunk_seconds", type=float, default=None,
                        help="cut recordings into chunks of at most this many seconds (default: 32 for librilight, "
                             "none otherwise)")
    parser.add_argument("--resample", action="store_true", help="resample other rates to 16 kHz instead of failing")
    common.add_flags(parser, "on_error")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error("--num_shards must be at least 1")
    try:
        splits = _split_dirs(args.split_dir) if args.split_dir else {"train": "train", "validation": "dev"}
    except ValueError as e:
        parser.error(str(e))
    from slam_jax.data import prepare
    chunk = args.chunk_seconds if args.chunk_seconds is not None else (32.0 if args.layout == "librilight" else None)
    manifests = []

    def run():
        manifests.append(prepare.prepare_corpus(
            args.corpus_dir, args.output_dir, splits, layout=args.layout, num_shards=args.num_shards,
            transcripts=not args.no_transcripts, chunk_seconds=chunk, resample=args.resample,
            on_error=args.on_error or "raise", progress=not args.quiet))

    code = common.run_guarded(parser.prog, run, errors=(prepare.PrepareError,))
    if code:
        return code
    for name, entry in manifests[0]["splits"].items():
        print(f"{name}: {entry['examples']} examples, {entry['seconds'] / 3600:.3f} h in {entry['num_shards']} "
              f"shards, {len(entry['skipped'])} skipped")
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
