"""The one stream: a nested seqio mixture -> fixed-shape global batches `{"speech", "text", "paired"}` (schema.py).

How it works (all of it one tf.data pipeline, so the iterator state is a tf.data checkpoint):

1. The top-level mixture (e.g. `mini_slam`) lists *kind mixtures* (or tasks) with rates. Each child has one kind
   (`sources.kind_of`); children of the same kind are sampled by their rates. Rows of each kind per global batch are
   the top-level rates times `batch_size` (largest remainder), so every batch has the same static shapes; within a
   kind, seqio's sampling honours the tasks' rates. All tasks must share one output-feature schema (checked at start).
2. Each host reads its shard of every task (`seqio.ShardInfo(shard_index, num_shards)`) and yields its share of
   rows, `kind_batch_sizes[kind] // num_shards`.
3. Rows per kind (packing.py): packed speech and text rows with segment ids, one pair per paired row.
4. Bad examples arrive with `error` set (see sources). `on_error="raise"` raises `DataError` naming the file and
   the problem; `"skip"` drops them and counts them per task (`stats()["skipped"]`, with the first messages).

Determinism and resumption: given `seed`, shard and config the stream is reproducible; every epoch is reshuffled.
The returned `stream.OneStream` saves and restores its exact position (`get_state()` / `set_state()`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from slam_jax.data import mixtures, packing, schema, sources
from slam_jax.data.schema import StreamConfig
from slam_jax.data.schema import DataError
from slam_jax.data.stream import OneStream


# --------------------------------------------------------------------------------------------- example streams
def _kind_examples(kind: str, children: Sequence[tuple[str, float]], config: StreamConfig,
                   shard: Optional[seqio.ShardInfo], finite: bool, seed: int) -> tf.data.Dataset:
    """Examples of one kind (shared schema), infinite and sampled by rate, or (`finite`) one pass over each task."""
    lengths = {"speech": {"speech": config.speech_frames, "text": config.text_tokens},
               "text": {"speech": 0, "text": config.text_tokens},
               "paired": {"speech": config.paired_frames, "text": config.paired_tokens}}[kind]
    args = dict(sequence_length=lengths, split=config.split, shuffle=config.shuffle and not finite, seed=seed,
                shard_info=shard, trim_output_features=kind != "paired", try_in_mem_cache=False)
    keys = list(sources.output_features(seqio.PassThroughVocabulary(0)))
    if finite:
        tasks = [t for t in mixtures.kind_tasks(children) if config.split in t.splits]
        datasets = [t.get_dataset(num_epochs=1, **args) for t in tasks]
        ds = datasets[0]
        for other in datasets[1:]:
            ds = ds.concatenate(other)
        return ds.map(lambda ex: {k: ex[k] for k in keys})
    datasets, rates = [], []
    for name, rate in children:
        provider = seqio.get_mixture_or_task(name)
        if isinstance(provider, seqio.Task) and config.split not in provider.splits:
            continue  # seqio's rule for mixtures: a task without the split is left out
        extra = {"log_mixing_proportions": False} if isinstance(provider, seqio.Mixture) else {}
        ds = provider.get_dataset(num_epochs=None, **args, **extra)
        datasets.append(ds.map(lambda ex: {k: ex[k] for k in keys}))
        rates.append(rate)
    if not datasets:
        raise ValueError(f"no {kind} task among {[n for n, _ in children]} has a {config.split!r} split")
    if len(datasets) == 1:
        return datasets[0]
    return tf.data.Dataset.sample_from_datasets(datasets, rates, seed=seed, stop_on_empty_dataset=True)


def _flag_unk(unk_id: int | None, max_fraction: float):
    """Marks an example whose transcript / text has more than `max_fraction` UNK pieces as bad (its `error`)."""
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if unk_id is None:
            return ex
        tokens = ex["text"]
        n = tf.size(tokens)
        unk = tf.reduce_sum(tf.cast(tf.equal(tokens, unk_id), tf.int32))
        over = tf.logical_and(tf.strings.length(ex["error"]) == 0,
                              tf.cast(unk, tf.float32) > max_fraction * tf.cast(tf.maximum(n, 1), tf.float32))
        message = tf.strings.join([ex["id"], ": ", tf.strings.as_string(unk), " of ", tf.strings.as_string(n),
                                   " pieces are UNK (characters outside the SentencePiece vocabulary; "
                                   f"StreamConfig.max_unk_fraction = {max_fraction})"])
        return {**ex, "error": tf.where(over, message, ex["error"])}
    return fn


def _raise_error(message: bytes) -> bool:
    raise DataError(message.decode("utf-8", "replace"))


def _check_or_pass(on_error: str):
    """Raises DataError at a bad example under "raise"; passes it on (to be counted and dropped) under "skip".

    Both policies build the same ops (the policy is a constant inside them), so the input pipeline has the same
    structure and a data-iterator state saved under one policy restores under the other."""
    def fn(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        bad = tf.logical_and(tf.strings.length(ex["error"]) > 0, tf.constant(on_error == "raise"))
        ok = tf.cond(bad, lambda: tf.numpy_function(_raise_error, [ex["error"]], tf.bool, stateful=True),
                     lambda: tf.constant(True))
        with tf.control_dependencies([ok]):
            return {k: tf.identity(v) for k, v in ex.items()}
    return fn


def _kind_rows(kind: str, examples: tf.data.Dataset, task_names: Sequence[str], config: StreamConfig,
               finite: bool, live: packing.LiveCounts) -> tf.data.Dataset:
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(list(task_names)), tf.range(len(task_names))), -1)
    examples = examples.map(lambda ex: {**ex, "task": tf.cast(table.lookup(ex["task"]), tf.int32)})
    if kind in ("text", "paired"):
        examples = examples.map(_flag_unk(mixtures.vocabulary_for(config.mixture).unk_id, config.max_unk_fraction))
    examples = examples.map(_check_or_pass(config.on_error))

    def count_bad(ex):
        with tf.control_dependencies([live.count_if("skipped", tf.strings.length(ex["error"]) > 0, ex["task"])]):
            return {k: tf.identity(v) for k, v in ex.items()}

    examples = examples.map(count_bad)
    if kind == "paired":
        return packing.pair_rows(examples, frames=config.paired_frames, tokens=config.paired_tokens,
                          source_tokens=config.paired_source_tokens, num_tasks=len(task_names), flush=finite,
                          live=live)
    value_key = "speech" if kind == "speech" else "text"
    examples = examples.map(lambda ex: {"value": ex[value_key], "task": ex["task"], "error": ex["error"],
                                        "id": ex["id"], "flush": tf.constant(False)})
    if kind == "speech":
        rows = packing.pack(examples, length=config.speech_frames, tail=[schema.NUM_MEL_BINS], dtype=tf.float32,
                     align=schema.SPEECH_ALIGN, bins=config.pack_bins, num_tasks=len(task_names), flush=finite)
        return rows.map(lambda r: {"features": r.pop("value"), **{k: v for k, v in r.items() if k != "positions"}})
    rows = packing.pack(examples, length=config.text_tokens, tail=[], dtype=tf.int32, align=1, bins=config.pack_bins,
                 num_tasks=len(task_names), flush=finite)
    return rows.map(lambda r: {"tokens": r.pop("value"), **r})


# ------------------------------------------------------------------------------------------------ the stream
def without_autograph(build):
    """Builds a tf.data pipeline with AutoGraph off for every function it traces (ours and seqio's).

    tf.data runs AutoGraph's source-to-source conversion on each map/filter/scan function and everything it calls:
    about 500 conversions for the smoke run's mixture, 6 of the 10 s it took to build the stream (2 loaded cores).
    The pipeline's functions are plain TF ops with no Python control flow on tensors, so the conversion buys nothing;
    a function that needed it fails at build time with TF's "using a tf.Tensor as a Python bool" error.
    """
    @functools.wraps(build)
    def wrapped(*args, **kwargs):
        from tensorflow.python.autograph.core import ag_ctx  # no public switch for a whole pipeline
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            return build(*args, **kwargs)
    return wrapped


@without_autograph
def _build(config: StreamConfig, shard_index: int, num_shards: int, finite: bool) -> OneStream:
    if config.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {config.on_error!r}")
    if config.speech_frames % schema.SPEECH_ALIGN:
        raise ValueError(f"speech_frames={config.speech_frames} must be a multiple of {schema.SPEECH_ALIGN}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    mixtures.all_tasks(config.mixture)  # validates the shared schema up front
    children = mixtures.kind_children(config.mixture)
    global_rows = mixtures.kind_batch_sizes(config.mixture, config.batch_size, num_shards)
    shard = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
    per_kind, host_rows, task_names, rates, live = {}, {}, {}, {}, {}
    for i, kind in enumerate(global_rows):
        tasks = mixtures.kind_tasks(children[kind])
        if finite:
            tasks = [t for t in tasks if config.split in t.splits]
            if not tasks:
                continue  # seqio's rule: tasks without the split are left out; so is a kind without any
        task_names[kind] = [t.name for t in tasks]
        total = sum(r for _, r in children[kind])
        rates[kind] = {t.name: sum(r / total * _rate_within(name, t) for name, r in children[kind])
                       for t in tasks}
        examples = _kind_examples(kind, children[kind], config, shard, finite, seed=config.seed * 7919 + i)
        live[kind] = packing.LiveCounts(task_names[kind])
        rows = _kind_rows(kind, examples, task_names[kind], config, finite, live[kind])
        host_rows[kind] = global_rows[kind] // num_shards
        per_kind[kind] = rows.batch(host_rows[kind], drop_remainder=not finite)
    if not per_kind:
        raise ValueError(f"no task of mixture {config.mixture!r} has a {config.split!r} split")
    if finite:
        dataset = _pad_finite(per_kind, host_rows)
    else:
        dataset = tf.data.Dataset.zip(per_kind)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    dataset = dataset.with_options(options).prefetch(2)
    described = dataclasses.asdict(config)
    if not config.paired_source_tokens:
        del described["paired_source_tokens"]  # streams saved before the field existed still resume
    fingerprint = json.dumps({"config": described, "shard": [shard_index, num_shards],
                              "finite": finite, "tasks": task_names}, sort_keys=True)
    return OneStream(dataset, config=config, kind_batch_sizes={k: global_rows[k] for k in per_kind},
                     host_batch_sizes=host_rows, task_names=task_names, fingerprint=fingerprint, rates=rates,
                     live=live)


def _rate_within(child: str, task: seqio.Task) -> float:
    """Share of `task` among the examples of `child` (1 or 0 for a task, seqio's rate for a mixture)."""
    if child in seqio.TaskRegistry.names():
        return float(child == task.name)
    mix = seqio.get_mixture_or_task(child)
    return mix.get_rate(task) / mix.total_rate if task in mix.tasks else 0.0


def _pad_finite(per_kind: Mapping[str, tf.data.Dataset], host_rows: Mapping[str, int]) -> tf.data.Dataset:
    """Zips finite per-kind batches; a kind that ran out (or a short last batch) gets all-padding rows."""
    padded = {}
    for kind, ds in per_kind.items():
        rows = host_rows[kind]
        spec = ds.element_spec
        fill = {k: tf.constant("" if s.dtype == tf.string else 0, s.dtype) for k, s in spec.items()}

        def pad(batch, rows=rows, fill=fill):
            n = tf.shape(batch["segment_ids"])[0]
            out = {k: tf.pad(v, [[0, rows - n]] + [[0, 0]] * (len(v.shape) - 1), constant_values=fill[k])
                   for k, v in batch.items()}
            out["_real"] = n > 0
            return out

        zeros = {k: tf.zeros([rows] + s.shape.as_list()[1:], s.dtype) for k, s in spec.items()}
        zeros["_real"] = tf.constant(False)
        padded[kind] = ds.map(pad).concatenate(tf.data.Dataset.from_tensors(zeros).repeat())
    zipped = tf.data.Dataset.zip(padded).take_while(
        lambda b: tf.reduce_any(tf.stack([b[k]["_real"] for k in b])))
    return zipped.map(lambda b: {k: {kk: vv for kk, vv in v.items() if kk != "_real"} for k, v in b.items()})


def make_stream(config: StreamConfig, *, shard_index: int = 0, num_shards: int = 1) -> OneStream:
    """The infinite pre-training stream of this host: per-host rows = global rows per kind / num_shards."""
    return _build(config, shard_index, num_shards, finite=False)


def eval_stream(config: StreamConfig, *, shard_index: int = 0, num_shards: int = 1) -> OneStream:
    """One unshuffled pass over `config.split` of every task (e.g. "validation"), same batch format.

    Rows of all-zero segment ids are padding (a kind that ran out, or the last partial batch). Kinds without a
    task having the split are left out of the batches (seqio's rule for mixtures).
    """
    return _build(dataclasses.replace(config, shuffle=False), shard_index, num_shards, finite=True)
