"""What the one stream feeds the model, and how fast (the `slam-data inspect` command: `slam_jax/cli/data.py`).

`inspect_stream` prints, over N batches: examples per task and kind against the configured rates, padding fraction
per kind, tokens and seconds of audio per batch, skipped examples (with their messages), and examples/s and
batches/s (timed after the first batch, which includes start-up). `show=K` decodes K rows per kind of the first
batch.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from slam_jax.data import schema

FRAMES_PER_SECOND = 100


def _segments(segment_ids: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)] of the segments 1, 2, ... of one row."""
    out = []
    for s in range(1, int(segment_ids.max(initial=0)) + 1):
        idx = np.nonzero(segment_ids == s)[0]
        if idx.size:
            out.append((int(idx[0]), int(idx[-1]) + 1))
    return out


def show_batch(batch: dict, vocabulary, rows: int, out=sys.stdout, source_vocabulary=None) -> None:
    """Prints `rows` decoded rows per kind: transcripts/sentences, audio lengths, mask statistics (and a paired
    row's source transcript, decoded with `source_vocabulary`, when the batch carries one)."""
    for kind, sub in batch.items():
        print(f"  [{kind}] first {rows} rows", file=out)
        for r in range(min(rows, sub["segment_ids"].shape[0])):
            seg = sub["segment_ids"][r]
            if kind == "text":
                pieces = [vocabulary.decode([int(t) for t in sub["tokens"][r][a:b] if t > 1])
                          for a, b in _segments(seg)]
                print(f"    row {r}: {len(pieces)} sentences, {int((seg > 0).sum())}/{seg.size} tokens real", file=out)
                for p in pieces[:3]:
                    print(f"      {p!r}", file=out)
            elif kind == "speech":
                lengths = [(b - a) / FRAMES_PER_SECOND for a, b in _segments(seg)]
                starts = [a for a, _ in _segments(seg)]
                feats = sub["features"][r][seg > 0]
                print(f"    row {r}: {len(lengths)} utterances, seconds {[round(x, 2) for x in lengths]}, starts "
                      f"{starts} (aligned to {schema.SPEECH_ALIGN}: {all(a % schema.SPEECH_ALIGN == 0 for a in starts)}), "
                      f"real frames {int((seg > 0).sum())}/{seg.size}, feature mean {feats.mean():.3f} std "
                      f"{feats.std():.3f}", file=out)
            else:
                tokens = [int(t) for t, m in zip(sub["tokens"][r], sub["token_segment_ids"][r]) if m and t > 1]
                print(f"    row {r}: {int((seg > 0).sum()) / FRAMES_PER_SECOND:.2f} s audio "
                      f"({int((seg > 0).sum())}/{seg.size} frames real), {int(sub['token_segment_ids'][r].sum())}/"
                      f"{sub['tokens'].shape[1]} tokens real: {vocabulary.decode(tokens)!r}",
                      file=out)
                if "source_tokens" in sub and source_vocabulary is not None:
                    source = [int(t) for t, m in zip(sub["source_tokens"][r], sub["source_token_segment_ids"][r])
                              if m and t > 1]
                    print(f"      source: {source_vocabulary.decode(source)!r}", file=out)


def inspect_stream(config, batches: int, show: int = 0, out=sys.stdout, stall_s: float = 60.0) -> dict:
    """Runs the stream `config` (a `StreamConfig`) for `batches` batches and prints the report; returns the
    stream's stats. The mixture must be registered (`slam_jax.config.register_tasks`). A stream that yields no
    batch for `stall_s` seconds says what it produced and dropped (`data.watchdog`): an error under
    `on_error='raise'`, a line every `stall_s` seconds under 'skip' (Ctrl-C ends it)."""
    from slam_jax.data import converter, mixtures, watchdog

    start = time.perf_counter()
    stream = watchdog.WatchedStream(converter.make_stream(config), stall_s=stall_s,
                                    fail_on_stall=config.on_error == "raise",
                                    report=lambda line: print(line, file=sys.stderr, flush=True))
    first = next(stream)
    ready = time.perf_counter()
    first_stats = stream.stats()
    for _ in range(batches - 1):
        next(stream)
    end = time.perf_counter()
    stats = stream.stats()
    timed = batches - 1
    examples_first = sum(sum(first_stats[k]["examples"].values()) for k in stream.host_batch_sizes)
    examples = sum(sum(stats[k]["examples"].values()) for k in stream.host_batch_sizes) - examples_first

    print(f"mixture {config.mixture!r} split {config.split!r}: {batches} batches of {config.batch_size} rows "
          f"{stream.kind_batch_sizes} (start-up + first batch {ready - start:.2f} s)", file=out)
    for kind in stream.host_batch_sizes:
        s = stats[kind]
        total = sum(s["examples"].values())
        print(f"[{kind}] {stream.kind_batch_sizes[kind]} rows/batch ({stream.kind_batch_sizes[kind] / config.batch_size:.3f}"
              f" of rows), {total} examples, {total / stats['batches']:.1f} examples/batch", file=out)
        for task in s["examples"]:
            print(f"    {task:28s} examples {s['examples'][task]:7d}  observed {s['task_fraction'][task]:.3f}  "
                  f"configured {s['task_rate'][task]:.3f}  skipped {s['skipped'][task]}  "
                  f"too_long {s['too_long'][task]}", file=out)
        line = f"    padding fraction {s['padding_fraction']:.3f}"
        if kind in ("speech", "paired"):
            line += f", audio {s['real'] / FRAMES_PER_SECOND / stats['batches']:.1f} s/batch"
        if kind == "text":
            line += f", tokens {s['real'] / stats['batches']:.0f}/batch"
        if kind == "paired":
            line += (f", token padding fraction {s['token_padding_fraction']:.3f}, tokens "
                     f"{s['token_real'] / stats['batches']:.0f}/batch")
        print(line, file=out)
    skipped = sum(stats[k]["skipped_total"] for k in stream.host_batch_sizes)
    print(f"skipped examples: {skipped}", file=out)
    for message in stats["messages"]:
        print(f"    {message}", file=out)
    if timed > 0:
        print(f"throughput: {timed / (end - ready):.2f} batches/s, {examples / (end - ready):.1f} examples/s "
              f"(over {timed} batches after the first)", file=out)
    if show:
        show_batch(first, mixtures.vocabulary_for(config.mixture), show, out=out,
                   source_vocabulary=mixtures.vocabulary_for(config.mixture, "source_text"))
    stream.close()
    return stats
