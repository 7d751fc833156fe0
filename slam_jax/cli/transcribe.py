"""`slam-transcribe`: transcribe audio files with a fine-tuned ASR run (CTC or RNN-T).

    slam-transcribe --model_dir=/tmp/slam_ft a.flac dir/ list.txt [--output=out.jsonl|out.tsv] [--beam_size=4]
                    [--lm=/data/4gram.arpa [--lm_decoder=prefix_beam]] [--step=N] [--batch_size=8]

Inputs: audio files, folders (every audio file below them, sorted) and `.txt` / `.lst` lists (one path per line).
Writes one line per file, in input order, to `--output` (JSON lines with "path" and "text", or TSV "path<TAB>text",
by its extension) or to stdout as TSV. A file that cannot be transcribed (missing, corrupt, empty, too short) is
reported on stderr on its own line and skipped; the rest are transcribed. Exit codes: 0 all transcribed, 1 some file
failed (or a run-time failure), 2 a bad model directory or option.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")
LIST_EXTENSIONS = (".txt", ".lst")


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files in order: a folder contributes its audio files (sorted, recursively), a list file its lines."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(root, name) for root, _, files in os.walk(item) for name in files
                           if name.lower().endswith(AUDIO_EXTENSIONS))
            out.extend(found)
        elif item.lower().endswith(LIST_EXTENSIONS) and os.path.isfile(item):
            with open(item, encoding="utf-8") as f:
                out.extend(line.strip() for line in f if line.strip())
        else:
            out.append(item)
    return out


def _progress(done: int, total: int, failed: int) -> None:
    if sys.stderr.isatty():
        print(f"\r{done}/{total} files ({failed} failed)", end="" if done < total else "\n", file=sys.stderr,
              flush=True)


def build_parser(prog: str = "slam-transcribe", doc: str | None = __doc__, *, lm: bool = True
                 ) -> argparse.ArgumentParser:
    from slam_jax.cli import common
    parser = common.new_parser(prog, doc, gin=False)
    parser.add_argument("inputs", nargs="+", help="audio files, folders of audio files, or .txt lists of paths")
    common.add_flags(parser, "model_dir", required=("model_dir",))
    common.add_flags(parser, "output", "beam_size")
    if lm:
        parser.add_argument("--lm", default=None, help="CTC only: n-gram LM for shallow fusion: an ARPA file (the "
                                                           "default flashlight decoder), or any KenLM file with "
                                                           "--lm_decoder=prefix_beam")
        parser.add_argument("--lm_decoder", choices=("flashlight", "prefix_beam"), default=None,
                            help="CTC beam search with --lm: flashlight-text's lexicon decoder (default) or ours "
                                 "(lexicon-free)")
    common.add_flags(parser, "step", "batch_size", "verbose")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return decode_files("slam-transcribe", "transcribe", build_parser(), argv)


def decode_files(prog: str, method: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """The body of slam-transcribe and slam-translate: `method` ("transcribe" / "translate") of `inference.Model`
    over the files of the command line, bad files reported and skipped."""
    from slam_jax.cli import common
    args = parser.parse_args(argv)
    if args.output and not args.output.endswith((".jsonl", ".tsv")):
        parser.error(f"--output must end in .jsonl or .tsv, got {args.output!r}")
    common.use_compilation_cache()
    from slam_jax import inference
    from slam_jax.data.audio import AudioError
    decoding = {}
    if args.beam_size is not None:
        decoding["beam_size"] = args.beam_size
    if getattr(args, "lm", None):
        decoding["lm_path"] = args.lm
    if getattr(args, "lm_decoder", None):
        decoding["lm_decoder"] = args.lm_decoder
    paths = expand_inputs(args.inputs)
    if not paths:
        parser.error("no audio file found in the inputs")
    results: dict[str, str] = {}
    failed: list[str] = []

    def run():
        from slam_jax import config
        try:
            model = inference.load(args.model_dir, step=args.step, batch_size=args.batch_size)
            model.decoding_task(method, **decoding)       # bad options fail before any audio is read
        except inference.InferenceError as e:
            raise config.ConfigError(str(e)) from None
        good, feats = [], []
        for i, path in enumerate(paths):
            try:
                feats.append(model.features(path))
                good.append(path)
            except AudioError as e:
                failed.append(path)
                print(f"{prog}: skipped {e}", file=sys.stderr, flush=True)
            _progress(i + 1, len(paths), len(failed))
        texts = model.decode_features(method, feats, **decoding) if feats else []
        results.update(zip(good, texts))

    code = common.run_guarded(prog, run, verbose=args.verbose)
    if code:
        return code
    lines = []
    for path in paths:
        if path in results:
            lines.append(json.dumps({"path": path, "text": results[path]}) if (args.output or "").endswith(".jsonl")
                         else f"{path}\t{results[path]}")
    text = "".join(line + "\n" for line in lines)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if failed:
        print(f"{prog}: {len(failed)} of {len(paths)} file(s) failed: {', '.join(failed)}", file=sys.stderr)
        return common.EXIT_FAILED
    return common.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
