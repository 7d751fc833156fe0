"""The stream the trainer reads: `OneStream` iterates a built tf.data pipeline (converter.py) as per-host numpy
batches, counts what it yields and drops (`stats()`, `stall_report()`), and saves / restores its exact position.

`get_state()` serializes the tf.data iterator (`tf.train.Checkpoint(iterator=...)`: shuffle buffers, packing bins,
sampler state, file positions) plus the running statistics, so `set_state()` in a fresh process continues with
exactly the batches that would have come next, at a cost independent of how many batches were consumed.
"""
from __future__ import annotations

import atexit
import gc
import io
import json
import os
import re
import tempfile
import weakref
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from slam_jax.data import mixtures, packing
from slam_jax.data.schema import DataError, StreamConfig, StreamMismatchError


MAX_MESSAGES = 20
_LIVE_STREAMS: "weakref.WeakSet[OneStream]" = weakref.WeakSet()


@atexit.register
def _close_streams() -> None:
    """Releases tf.data iterators before interpreter shutdown: background threads still running Python decoding
    (tf.numpy_function) during finalization can otherwise abort or hang the process at exit."""
    for stream in list(_LIVE_STREAMS):
        stream.close()
    gc.collect()


# StreamConfig fields that do not change which examples the stream yields in which order: a resume may change them.
_NOT_CONTENT = ("on_error",)


def _content_identity(fingerprint: str) -> dict:
    """A stream fingerprint without the options a resume may change (`_NOT_CONTENT`)."""
    found = json.loads(fingerprint)
    found["config"] = {k: v for k, v in found["config"].items() if k not in _NOT_CONTENT}
    return found


class OneStream:
    """Iterator of per-host batch dicts (schema.py) plus `_`-free statistics; checkpointable.

    Attributes: kind_batch_sizes (global rows per kind), host_batch_sizes (this host's rows), task_names per kind.
    """

    def __init__(self, dataset: tf.data.Dataset, *, config: StreamConfig, kind_batch_sizes: Mapping[str, int],
                 host_batch_sizes: Mapping[str, int], task_names: Mapping[str, Sequence[str]], fingerprint: str,
                 rates: Mapping[str, Mapping[str, float]], live: Mapping[str, packing.LiveCounts]):
        self.config = config
        self.kind_batch_sizes = dict(kind_batch_sizes)
        self.host_batch_sizes = dict(host_batch_sizes)
        self.task_names = {k: list(v) for k, v in task_names.items()}
        self.rates = {k: dict(v) for k, v in rates.items()}
        self._fingerprint = fingerprint
        self.live = dict(live)
        self._unk_id = _unk_id_of(config.mixture)
        self._dataset = dataset
        self._iterator = iter(dataset)
        self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)
        self._stats = self._empty_stats()
        # Example ids of the rows of the batch `__next__` returned last, for kinds with one example per row
        # (paired): {kind: [id of row 0, ...]}, "" for padding rows.
        self.ids: dict[str, list[str]] = {}
        _LIVE_STREAMS.add(self)

    def close(self) -> None:
        """Stops the input pipeline (the stream cannot be used afterwards)."""
        self._checkpoint = None
        self._iterator = None

    def _empty_stats(self) -> dict[str, Any]:
        return {"batches": 0, "messages": [],
                **{k: {"rows": 0, "real": 0, "slots": 0, "token_real": 0, "token_slots": 0,
                       "unk_tokens": 0,
                       "examples": {t: 0 for t in self.task_names[k]}, "skipped": {t: 0 for t in self.task_names[k]},
                       "too_long": {t: 0 for t in self.task_names[k]}} for k in self.host_batch_sizes}}

    def __iter__(self) -> Iterator[dict[str, dict[str, np.ndarray]]]:
        return self

    def __next__(self) -> dict[str, dict[str, np.ndarray]]:
        if self._iterator is None:
            raise StopIteration
        try:
            raw = next(self._iterator)
        except StopIteration:
            raise
        except tf.errors.OpError as e:
            found = re.search(r"DataError: (.*)", e.message)
            if found:
                raise DataError(found.group(1).strip()) from None
            raise DataError(f"input pipeline of mixture {self.config.mixture!r} failed: {e.message}") from e
        batch: dict[str, dict[str, np.ndarray]] = {}
        stats = self._stats
        stats["batches"] += 1
        for kind, sub in raw.items():
            arrays = {k: v.numpy() for k, v in sub.items()}
            s = stats[kind]
            names = self.task_names[kind]
            for key, field in (("_task_counts", "examples"), ("_skipped", "skipped"), ("_too_long", "too_long")):
                if key in arrays:
                    for name, count in zip(names, arrays.pop(key).sum(axis=0)):
                        s[field][name] += int(count)
            for message in arrays.pop("_message"):
                if message and len(stats["messages"]) < MAX_MESSAGES:
                    stats["messages"].append(message.decode("utf-8", "replace"))
            if "_id" in arrays:
                self.ids[kind] = [i.decode("utf-8", "replace") for i in arrays.pop("_id")]
            s["rows"] += arrays["segment_ids"].shape[0]
            s["real"] += int((arrays["segment_ids"] > 0).sum())
            s["slots"] += int(arrays["segment_ids"].size)
            if kind == "paired":
                s["token_real"] += int((arrays["token_segment_ids"] > 0).sum())
                s["token_slots"] += int(arrays["token_segment_ids"].size)
            if self._unk_id is not None and "tokens" in arrays:
                real = arrays["token_segment_ids" if kind == "paired" else "segment_ids"] > 0
                s["unk_tokens"] = s.get("unk_tokens", 0) + int(((arrays["tokens"] == self._unk_id) & real).sum())
            batch[kind] = arrays
        return batch

    def stats(self) -> dict[str, Any]:
        """Running statistics since the stream started (carried over by set_state).

        {"batches", "messages": first skipped-example messages, kind: {"rows", "examples": {task: n},
        "skipped": {task: n}, "too_long": {task: n}, "padding_fraction", "token_padding_fraction" (paired),
        "task_fraction": {task: observed share of the kind's examples}, "task_rate": {task: configured share}}}.
        """
        out = json.loads(json.dumps(self._stats))
        for kind in self.host_batch_sizes:
            s = out[kind]
            s["padding_fraction"] = 1.0 - s["real"] / s["slots"] if s["slots"] else 0.0
            if kind == "paired":
                s["token_padding_fraction"] = 1.0 - s["token_real"] / s["token_slots"] if s["token_slots"] else 0.0
            total = sum(s["examples"].values())
            s["task_fraction"] = {t: (n / total if total else 0.0) for t, n in s["examples"].items()}
            s["task_rate"] = self.rates[kind]
            s["skipped_total"] = sum(s["skipped"].values())
            if kind in ("text", "paired"):
                tokens = s["token_real"] if kind == "paired" else s["real"]
                s["unk_fraction"] = s.get("unk_tokens", 0) / tokens if tokens else 0.0
        return out

    def stall_report(self) -> str:
        """What each kind has produced and dropped so far, for a stream that yields no batch: examples per task
        (from emitted batches) and bad / too-long examples counted as the pipeline dropped them."""
        parts = []
        for kind in self.host_batch_sizes:
            s, live = self._stats[kind], self.live[kind]
            produced = sum(s["examples"].values())
            tasks = []
            for i, task in enumerate(live.task_names):
                dropped = []
                if live.skipped[i]:
                    dropped.append(f"{live.skipped[i]} bad (StreamConfig.on_error='skip')")
                if live.too_long[i]:
                    dropped.append(f"{live.too_long[i]} too long for StreamConfig.paired_frames="
                                   f"{self.config.paired_frames} / paired_tokens={self.config.paired_tokens}")
                tasks.append(f"{task}: {s['examples'][task]} examples" + (", dropped " + " and ".join(dropped)
                                                                           if dropped else ""))
            state = "has produced no example" if not produced else f"has produced {produced} examples"
            parts.append(f"kind {kind!r} {state} ({'; '.join(tasks)})")
        return "; ".join(parts)

    def get_state(self) -> bytes:
        """The iterator position (tf.data checkpoint) and statistics, as bytes for the trainer's checkpoint."""
        with tempfile.TemporaryDirectory() as tmp:
            prefix = self._checkpoint.write(os.path.join(tmp, "iterator"))
            files = {f: np.frombuffer(open(os.path.join(tmp, f), "rb").read(), np.uint8) for f in os.listdir(tmp)}
        buffer = io.BytesIO()
        meta = {"fingerprint": self._fingerprint, "prefix": os.path.basename(prefix), "stats": self._stats,
                "files": sorted(files)}
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **{f"file{i}": files[f] for i, f in enumerate(sorted(files))})
        return buffer.getvalue()

    def set_state(self, state: bytes) -> None:
        """Restores a position saved by `get_state` of a stream built with the same config and shard."""
        arrays = np.load(io.BytesIO(state))
        meta = json.loads(arrays["meta"].tobytes().decode())
        saved, current = _content_identity(meta["fingerprint"]), _content_identity(self._fingerprint)
        if saved != current:
            differ = sorted(k for k in set(saved["config"]) | set(current["config"])
                            if saved["config"].get(k) != current["config"].get(k))
            if saved.get("shard") != current.get("shard"):
                differ.append("shard (process index / count)")
            if saved.get("tasks") != current.get("tasks"):
                differ.append("tasks of the mixture")
            raise StreamMismatchError(
                "the checkpoint's data-iterator state belongs to another stream (differs in: "
                f"{', '.join(differ) or 'finite/endless'}):\n saved:   {meta['fingerprint']}\n current: "
                f"{self._fingerprint}")
        with tempfile.TemporaryDirectory() as tmp:
            for i, name in enumerate(meta["files"]):
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(arrays[f"file{i}"].tobytes())
            self._checkpoint.read(os.path.join(tmp, meta["prefix"])).assert_consumed()
        self._stats = meta["stats"]


def _unk_id_of(mixture: str) -> int | None:
    """The UNK id of the mixture's text vocabulary; None when it has none (or no text feature)."""
    try:
        return mixtures.vocabulary_for(mixture).unk_id
    except Exception:  # noqa: BLE001 - a mixture without a SentencePiece text feature: nothing to count
        return None
