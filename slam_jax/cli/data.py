"""`slam-data`: look at what the one stream feeds the model (`inspect`), or train a SentencePiece model on
transcripts (`vocab`).

  slam-data inspect --mixture=mini_slam --num_batches=20 --show=3
  slam-data inspect --gin_file=runs/cpu_smoke.gin --num_batches=20     # exactly the stream of that run
  slam-data vocab --text_file=/data/LibriSpeech/train-clean-100 --vocab_size=256 --output_prefix=/data/asr_wp256

`inspect` prints, over N batches: examples per task and kind against the configured rates, padding fraction per
kind, tokens and seconds of audio per batch, skipped examples (with their messages), and examples/s and batches/s
(`slam_jax/data/inspection.py`). `vocab`: `slam_jax/data/vocab.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Sequence

from slam_jax import config
import slam_jax.finetune.run  # noqa: F401  (registers FinetuneConfig: --gin_file may be a fine-tuning run's)
from slam_jax.cli import common

STREAM_FLAGS = ("mixture", "split", "batch_size", "speech_frames", "text_tokens", "paired_frames", "paired_tokens",
                "paired_source_tokens", "seed", "on_error")


def build_parser() -> argparse.ArgumentParser:
    parser = common.new_parser("slam-data", __doc__, gin=False)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="statistics and throughput of a mixture's one stream",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config.GIN_FLAGS_HELP + """
With --gin_file the stream is exactly the run's (its StreamConfig and DataConfig); the flags below override it;
without, StreamConfig's defaults with 16 rows per batch.""")
    common.add_flags(p, "mixture", "module_import")
    p.add_argument("--num_batches", type=int, default=10, help="batches to read (default 10)")
    p.add_argument("--show", type=int, default=0, help="decode this many rows per kind of the first batch")
    common.add_flags(p, "split", "batch_size", "speech_frames", "text_tokens", "paired_frames", "paired_tokens")
    p.add_argument("--paired_source_tokens", type=int, default=None,
                   help="> 0: paired rows also carry the source transcript (speech translation); default 0")
    p.add_argument("--seed", type=int, default=None, help="the stream's shuffling seed (StreamConfig.seed)")
    common.add_flags(p, "on_error")
    p.add_argument("--stall_seconds", type=float, default=60.0,
                   help="seconds without a batch before saying what the stream produced and dropped (default 60)")
    v = sub.add_parser("vocab", help="train a SentencePiece model on transcripts (an ASR head's word pieces)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--text_file", action="append", required=True,
                   help="LibriSpeech-layout folder (its *.trans.txt) or text file of transcripts; repeatable")
    v.add_argument("--vocab_size", type=int, default=1024, help="pieces, PAD/EOS/UNK included (SLAM §4.1: 1024)")
    v.add_argument("--output_prefix", required=True,
                   help="writes OUTPUT_PREFIX.model and OUTPUT_PREFIX.vocab (local or gs://)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["vocab"]:
        return _vocab(parser, parser.parse_args(argv))
    args, files, bindings = common.parse_gin_args(parser, argv, example_gin_file=None)
    if args.num_batches < 1:
        parser.error("--num_batches must be at least 1")
    if not files and not args.mixture:
        parser.error("give --mixture or a run's --gin_file")
    overrides = {k: getattr(args, k) for k in STREAM_FLAGS if getattr(args, k) is not None}
    from slam_jax.data import inspection

    def run():
        config.parse(files, bindings)
        stream_cfg = (dataclasses.replace(config.StreamConfig(), **overrides) if files
                      else config.StreamConfig(**{"batch_size": 16, **overrides}))
        config.register_tasks(args.module_import)
        inspection.inspect_stream(stream_cfg, args.num_batches, args.show, out=sys.stdout,
                                  stall_s=args.stall_seconds)

    code = common.run_guarded(parser.prog, run, errors=(ValueError, TypeError))
    return common.exit_after_blocked_workers(code)


def _vocab(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from slam_jax.data import vocab
    reports = []
    code = common.run_guarded(parser.prog, lambda: reports.append(
        vocab.train_vocabulary(args.text_file, args.vocab_size, args.output_prefix)), errors=(ValueError,))
    if code:
        return code
    report = reports[0]
    print(f"wrote {args.output_prefix}.model ({report['vocab_size']} pieces) from {report['transcripts']} "
          f"transcripts: {report['pieces_per_transcript']:.1f} pieces per transcript, {report['pieces_per_word']:.2f} "
          "per word")
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
