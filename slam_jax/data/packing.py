"""Rows of one kind as tf.data transformations: greedy first-fit packing of speech / text into rows with segment ids,
one (utterance, transcript) pair per row, and the live counts of dropped examples (used by converter.py).

- text: greedy first-fit packing of several sentences per row into `pack_bins` open rows, with segment ids
  (1, 2, ...) and positions; sentences longer than the row are truncated (seqio's trim).
- speech: the same packing for log-mel utterances (random-cropped to `speech_frames` by the task), each cut to
  a multiple of `schema.SPEECH_ALIGN` frames (<= 30 ms dropped) so every segment starts at a multiple of it and
  padding sits only at the end of the row.
- paired: one (utterance, transcript) per row, padded; a pair longer than `paired_frames` / `paired_tokens` is
  not cut (that would break the alignment) but skipped and counted as `too_long`. With `paired_source_tokens`
  the rows also carry the pair's source transcript (speech translation), under the same rule.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from slam_jax.data import schema


class LiveCounts:
    """Bad and too-long examples of one kind per task, counted the moment the pipeline drops them (the `_skipped` /
    `_too_long` batch fields only arrive with the next emitted row, which never comes when every example is dropped):
    what `OneStream.stall_report` shows when no batch arrives."""

    def __init__(self, task_names: Sequence[str]):
        self.task_names = list(task_names)
        self.skipped = np.zeros(len(task_names), np.int64)
        self.too_long = np.zeros(len(task_names), np.int64)
        self.longest = np.zeros((len(task_names), 2), np.int64)  # the longest too-long example: frames, tokens

    def count_if(self, field: str, condition: tf.Tensor, task: tf.Tensor,
                 size: tf.Tensor | None = None) -> tf.Tensor:
        """A tensor to depend on that, when `condition` holds, adds one to `field` of `task` in Python (and records
        `size` = [frames, tokens] of a too-long example in `longest`)."""
        counts = getattr(self, field)

        def bump(task, size) -> np.bool_:
            counts[int(task)] += 1
            self.longest[int(task)] = np.maximum(self.longest[int(task)], size)
            return np.bool_(True)

        size = tf.zeros([2], tf.int32) if size is None else tf.cast(size, tf.int32)
        return tf.cond(condition, lambda: tf.numpy_function(bump, [task, size], tf.bool, stateful=True),
                       lambda: tf.constant(True))


def pack(ds: tf.data.Dataset, *, length: int, tail: Sequence[int], dtype: tf.DType, align: int, bins: int,
          num_tasks: int, flush: bool) -> tf.data.Dataset:
    """Greedy first-fit packing of variable-length values into rows, as one `tf.data.Dataset.scan`.

    Input elements: {"value": dtype [n, *tail], "task": int32 [], "error": string [], "id": string [],
    "flush": bool []}. A value is cut to a multiple of `align` (speech: at most 3 trailing frames, 30 ms), so every
    segment starts at a multiple of `align` and padding sits only at the end of the row. `bins` rows stay open; a
    value goes into the first open row with room; when none has room, the fullest row is emitted and replaced. Flush elements (appended to
    finite streams) emit the fullest non-empty row. Errors are not packed: they are counted per task and reported
    with the next emitted row.
    Output rows: {"value": [length, *tail], "segment_ids": int32 [length], "positions": int32 [length],
    "_task_counts": int32 [num_tasks], "_skipped": int32 [num_tasks], "_message": string []}.
    """
    tail = list(tail)
    zero_bin = {"value": tf.zeros([length] + tail, dtype), "segment_ids": tf.zeros([length], tf.int32),
                "positions": tf.zeros([length], tf.int32), "_task_counts": tf.zeros([num_tasks], tf.int32)}
    state0 = {
        "bins": {k: tf.zeros([bins] + v.shape.as_list(), v.dtype) for k, v in zero_bin.items()},
        "fill": tf.zeros([bins], tf.int32), "nseg": tf.zeros([bins], tf.int32),
        "skipped": tf.zeros([num_tasks], tf.int32), "message": tf.constant(""),
    }

    def step(state, el):
        n = tf.minimum(tf.shape(el["value"])[0], length) // align * align
        value = el["value"][:n]
        is_error = tf.strings.length(el["error"]) > 0
        empty = tf.logical_and(tf.logical_not(is_error), tf.logical_and(tf.logical_not(el["flush"]), n == 0))
        skip = tf.logical_or(is_error, empty)
        message = tf.where(is_error, el["error"], tf.strings.join([el["id"], f": fewer than {align} frames/tokens"]))
        skipped = state["skipped"] + tf.one_hot(el["task"], num_tasks, dtype=tf.int32) * tf.cast(skip, tf.int32)
        last_message = tf.where(skip, message, state["message"])
        good = tf.logical_not(tf.logical_or(skip, el["flush"]))
        fill, nseg = state["fill"], state["nseg"]
        fits = fill + n <= length
        any_fit = tf.reduce_any(fits)
        fullest = tf.cast(tf.argmax(fill), tf.int32)
        emit = tf.logical_or(
            tf.logical_and(good, tf.logical_not(any_fit)),
            tf.logical_and(el["flush"], tf.logical_or(tf.reduce_any(fill > 0), tf.reduce_sum(skipped) > 0)))
        row = {k: v[fullest] for k, v in state["bins"].items()}
        row["_skipped"] = skipped
        row["_message"] = last_message
        row["valid"] = emit

        def clear():
            new = {k: tf.tensor_scatter_nd_update(v, [[fullest]], zero_bin[k][None]) for k, v in state["bins"].items()}
            return (new, tf.tensor_scatter_nd_update(fill, [[fullest]], [0]),
                    tf.tensor_scatter_nd_update(nseg, [[fullest]], [0]))

        b, fill, nseg = tf.cond(emit, clear, lambda: (state["bins"], fill, nseg))
        target = tf.where(any_fit, tf.cast(tf.argmax(tf.cast(fits, tf.int32)), tf.int32), fullest)

        def insert():
            start = fill[target]
            idx = tf.stack([tf.fill([n], target), start + tf.range(n)], axis=1)
            new = {
                "value": tf.tensor_scatter_nd_update(b["value"], idx, value),
                "segment_ids": tf.tensor_scatter_nd_update(b["segment_ids"], idx, tf.fill([n], nseg[target] + 1)),
                "positions": tf.tensor_scatter_nd_update(b["positions"], idx, tf.range(n)),
                "_task_counts": tf.tensor_scatter_nd_add(b["_task_counts"], [[target, el["task"]]], [1]),
            }
            end = start + n
            return (new, tf.tensor_scatter_nd_update(fill, [[target]], [end]),
                    tf.tensor_scatter_nd_add(nseg, [[target]], [1]))

        b, fill, nseg = tf.cond(good, insert, lambda: (b, fill, nseg))
        keep = tf.logical_not(emit)
        new_state = {"bins": b, "fill": fill, "nseg": nseg,
                     "skipped": skipped * tf.cast(keep, tf.int32), "message": tf.where(emit, "", last_message)}
        return new_state, row

    if flush:
        flusher = tf.data.Dataset.from_tensors({
            "value": tf.zeros([0] + tail, dtype), "task": tf.constant(0), "error": tf.constant(""),
            "id": tf.constant(""), "flush": tf.constant(True)}).repeat(bins + 1)
        ds = ds.concatenate(flusher)
    rows = ds.scan(state0, step).filter(lambda r: r["valid"])
    return rows.map(lambda r: {k: v for k, v in r.items() if k != "valid"})


def pair_rows(ds: tf.data.Dataset, *, frames: int, tokens: int, source_tokens: int, num_tasks: int,
               flush: bool, live: LiveCounts | None = None) -> tf.data.Dataset:
    """One (utterance, transcript) per row, zero-padded; errors and too-long pairs are counted, not emitted.

    With `flush` (finite streams) a last all-padding row carries the counts of trailing skipped pairs.

    Output rows: {"features": float32 [frames, 80], "segment_ids": int32 [frames], "tokens": int32 [tokens],
    "token_segment_ids": int32 [tokens], "_task_counts", "_skipped", "_too_long": int32 [num_tasks], "_message"}, and
    with `source_tokens` > 0 "source_tokens" / "source_token_segment_ids": int32 [source_tokens].
    """
    state0 = {"skipped": tf.zeros([num_tasks], tf.int32), "too_long": tf.zeros([num_tasks], tf.int32),
              "message": tf.constant("")}

    def padded(values: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
        n = tf.minimum(tf.shape(values)[0], length)
        return (tf.ensure_shape(tf.pad(values[:length], [[0, length - n]]), [length]),
                tf.ensure_shape(tf.pad(tf.ones([n], tf.int32), [[0, length - n]]), [length]))

    def step(state, ex):
        speech, text = ex["speech"], ex["text"]
        n, m = tf.shape(speech)[0], tf.shape(text)[0]
        is_flush = ex["flush"]
        onehot = tf.one_hot(ex["task"], num_tasks, dtype=tf.int32) * (1 - tf.cast(is_flush, tf.int32))
        is_error = tf.strings.length(ex["error"]) > 0
        longer = tf.logical_or(n > frames, m > tokens)
        if source_tokens:
            longer = tf.logical_or(longer, tf.shape(ex["source_text"])[0] > source_tokens)
        too_long = tf.logical_and(tf.logical_not(is_error), longer)
        if live is not None:
            with tf.control_dependencies([live.count_if("too_long", too_long, ex["task"], tf.stack([n, m]))]):
                too_long = tf.identity(too_long)
        skipped = state["skipped"] + onehot * tf.cast(is_error, tf.int32)
        long_count = state["too_long"] + onehot * tf.cast(too_long, tf.int32)
        message = tf.where(is_error, ex["error"], state["message"])
        pending = tf.reduce_sum(skipped) + tf.reduce_sum(long_count) > 0
        emit = tf.where(is_flush, pending, tf.logical_not(tf.logical_or(is_error, too_long)))
        speech, n = speech[:frames], tf.minimum(n, frames)
        row = {  # static shapes, so padded batches (eval_stream) can be built from the element spec
            "features": tf.ensure_shape(tf.pad(speech, [[0, frames - n], [0, 0]]), [frames, schema.NUM_MEL_BINS]),
            "segment_ids": tf.ensure_shape(tf.pad(tf.ones([n], tf.int32), [[0, frames - n]]), [frames]),
            "_task_counts": onehot, "_skipped": skipped, "_too_long": long_count, "_message": message,
            "_id": ex["id"], "valid": emit,
        }
        row["tokens"], row["token_segment_ids"] = padded(text, tokens)
        if source_tokens:
            row["source_tokens"], row["source_token_segment_ids"] = padded(ex["source_text"], source_tokens)
        keep = 1 - tf.cast(emit, tf.int32)
        return {"skipped": skipped * keep, "too_long": long_count * keep,
                "message": tf.where(emit, "", message)}, row

    ds = ds.map(lambda ex: {**ex, "flush": tf.constant(False)})
    if flush:
        ds = ds.concatenate(tf.data.Dataset.from_tensors({
            "speech": tf.zeros([0, schema.NUM_MEL_BINS]), "text": tf.zeros([0], tf.int32),
            "source_text": tf.zeros([0], tf.int32), "task": tf.constant(0), "id": tf.constant(""),
            "error": tf.constant(""), "flush": tf.constant(True)}))
    rows = ds.scan(state0, step).filter(lambda r: r["valid"])
    return rows.map(lambda r: {k: v for k, v in r.items() if k != "valid"})
