"""GLUE (Wang et al. 2019) from TFDS `glue` as seqio tasks, and the batches the text classifier trains on.

Each example becomes the text path's input: the SentencePiece ids of its sentence, or of its two sentences each
followed by EOS (`s1 EOS s2 EOS`: the encoder has no segment embedding, EOS marks the boundary; our choice), and a
float label (the class id, or STS-B's similarity in [0, 5]). Inputs longer than `StreamConfig.text_tokens` are cut
at that length (BERT's convention for GLUE); cut examples are counted in the stream statistics ("truncated").

`normalize=True` rewrites the text in the LibriSpeech convention first (upper case, letters, digits and apostrophes,
single spaces), for encoders whose vocabulary was trained on LibriSpeech-style text (the mini corpus, LibriLM).

TFDS data is read only if the user prepared it (`tfds build glue/<config>` into $TFDS_DATA_DIR or `data_dir`);
nothing is downloaded: a missing dataset raises FileNotFoundError naming the dataset, the directory and the command.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from slam_jax.data import converter, packing, schema

from slam_jax.data import stream as stream_lib

TFDS_VERSION = "2.0.0"
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: TFDS config, its text fields, number of classes (1 = regression) and seqio -> TFDS splits."""

    config: str
    text_keys: tuple[str, ...]
    num_classes: int
    splits: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train", "validation": "validation"})


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", ("sentence",), 2),
    "sst2": GlueTask("sst2", ("sentence",), 2),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2),
    "qqp": GlueTask("qqp", ("question1", "question2"), 2),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1),
    "mnli": GlueTask("mnli", ("premise", "hypothesis"), 3,
                     {"train": "train", "validation": "validation_matched",
                      "validation_mismatched": "validation_mismatched"}),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2),
    "wnli": GlueTask("wnli", ("sentence1", "sentence2"), 2),
}

_GLUE_OF: dict[str, str] = {}  # seqio task name -> GLUE task key


def glue_task_of(name: str) -> str:
    """The GLUE task key ('sst2', ...) of a seqio task registered with `add_glue_task`."""
    if name not in _GLUE_OF:
        raise ValueError(f"{name!r} is not a GLUE task registered with slam_jax.data.glue.add_glue_task "
                         f"(registered: {sorted(_GLUE_OF)}); did you `import tasks`?")
    return _GLUE_OF[name]


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """{"text": int32 [tokens] (EOS added by the preprocessor), "label": float32 [], "id": string []}."""
    meta = seqio.PassThroughVocabulary(size=0)
    return {"text": seqio.Feature(vocabulary, add_eos=False),
            "label": seqio.Feature(meta, add_eos=False, dtype=tf.float32, rank=0),
            "id": seqio.Feature(meta, add_eos=False, dtype=tf.string, rank=0)}


def librispeech_style(text: tf.Tensor) -> tf.Tensor:
    """Upper case, only letters / digits / apostrophes, single spaces (the mini corpus' and LibriLM's convention)."""
    text = tf.strings.upper(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"[^\p{L}\p{N}']+", " ")
    return tf.strings.strip(tf.strings.regex_replace(text, " +", " "))


def _tokenize(name: str, glue: GlueTask, normalize: bool):
    def preprocessor(ds: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
        vocab = output_features["text"].vocabulary

        def fn(ex):
            parts = []
            for key in glue.text_keys:
                text = librispeech_style(ex[key]) if normalize else ex[key]
                parts += [tf.cast(vocab.encode_tf(text), tf.int32), tf.constant([vocab.eos_id], tf.int32)]
            return {"text": tf.concat(parts, 0), "label": tf.cast(ex["label"], tf.float32),
                    "id": tf.strings.join([name, ":", tf.strings.as_string(ex["idx"])])}

        return ds.map(fn, num_parallel_calls=AUTOTUNE)
    return preprocessor


def add_glue_task(name: str, glue_key: str, *, vocabulary: seqio.Vocabulary, normalize: bool = False,
                  tfds_data_dir: Optional[str] = None) -> seqio.Task:
    """Registers seqio task `name` over TFDS `glue/<config>` (read only, never downloads); touches no data."""
    if glue_key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {glue_key!r}; expected one of {sorted(GLUE_TASKS)}")
    glue = GLUE_TASKS[glue_key]
    source = seqio.TfdsDataSource(f"glue/{glue.config}:{TFDS_VERSION}", tfds_data_dir=tfds_data_dir,
                                  splits=dict(glue.splits), read_only=True)
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(name, source=source, preprocessors=[_tokenize(name, glue, normalize)],
                                  output_features=output_features(vocabulary), shuffle_buffer_size=4096)
    _GLUE_OF[name] = glue_key
    return task


# ------------------------------------------------------------------------------------------------ batches
def _rows(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    """Examples -> text rows {"tokens", "segment_ids", "positions" [length], "labels" [], "_truncated",
    "_message", "_id"} (one example per row, padded)."""
    def fn(ex):
        n_all = tf.shape(ex["text"])[0]
        tokens = ex["text"][:length]
        n = tf.shape(tokens)[0]
        pad = [[0, length - n]]
        return {"tokens": tf.ensure_shape(tf.pad(tokens, pad), [length]),
                "segment_ids": tf.ensure_shape(tf.pad(tf.ones([n], tf.int32), pad), [length]),
                "positions": tf.ensure_shape(tf.pad(tf.range(n, dtype=tf.int32), pad), [length]),
                "labels": ex["label"], "_truncated": tf.cast(n_all > length, tf.int32),
                "_message": tf.constant(""), "_id": ex["id"]}
    return ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)


def _dataset(task: seqio.Task, split: str, seed: int, shard: Optional[seqio.ShardInfo], finite: bool,
             shuffle: bool) -> tf.data.Dataset:
    try:
        return task.get_dataset(sequence_length=None, split=split, shuffle=shuffle and not finite, seed=seed,
                                shard_info=shard, num_epochs=1 if finite else None, try_in_mem_cache=False,
                                trim_output_features=False)
    except AssertionError as e:  # TFDS: "Dataset glue: could not find data in <dir>. ..."
        source = task.source
        raise FileNotFoundError(
            f"seqio task {task.name!r}: TFDS dataset {source.tfds_dataset.name!r} is not prepared in "
            f"{source.tfds_dataset.data_dir or '$TFDS_DATA_DIR (default ~/tensorflow_datasets)'}; build it first "
            f"(`tfds build {source.tfds_dataset.name.split(':')[0]} --data_dir=DIR`), nothing is downloaded at run "
            f"time ({e})") from None


@converter.without_autograph
def make_stream(config: schema.StreamConfig, *, shard_index: int = 0, num_shards: int = 1,
                finite: bool = False) -> stream_lib.OneStream:
    """Batches of one GLUE seqio task (`config.mixture`) as the converter's "text" kind plus "labels":

    {"text": {"tokens", "segment_ids", "positions": int32 [B, text_tokens], "labels": float32 [B]}} with
    B = batch_size / num_shards rows of this host; infinite and shuffled, or (`finite`) one pass over
    `config.split` whose last batch is padded with all-zero rows. Checkpointable like the pre-training stream.
    """
    name = config.mixture
    glue_task_of(name)
    if config.batch_size % num_shards:
        raise ValueError(f"StreamConfig.batch_size {config.batch_size} does not split over {num_shards} hosts")
    rows = config.batch_size // num_shards
    task = seqio.get_mixture_or_task(name)
    shard = seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None
    ds = _rows(_dataset(task, config.split, config.seed, shard, finite, config.shuffle), config.text_tokens)
    if finite:
        ds = ds.batch(rows)
        spec = ds.element_spec

        def pad(batch):
            n = tf.shape(batch["segment_ids"])[0]
            return {k: tf.pad(v, [[0, rows - n]] + [[0, 0]] * (len(spec[k].shape) - 1),
                              constant_values="" if v.dtype == tf.string else tf.zeros([], v.dtype))
                    for k, v in batch.items()}
        ds = ds.map(pad)
    else:
        ds = ds.batch(rows, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE  # as converter
    ds = ds.map(lambda b: {"text": b}).with_options(options).prefetch(2)
    fingerprint = json.dumps({"config": dataclasses.asdict(config), "shard": [shard_index, num_shards],
                              "finite": finite, "glue": name}, sort_keys=True)
    return GlueStream(ds, config=config, kind_batch_sizes={"text": config.batch_size},
                      host_batch_sizes={"text": rows}, task_names={"text": [name]}, fingerprint=fingerprint,
                      rates={"text": {name: 1.0}}, live={"text": packing.LiveCounts([name])})


class GlueStream(stream_lib.OneStream):
    """The converter's checkpointable stream, counting the examples cut at `text_tokens` ("truncated")."""

    def _empty_stats(self):
        return {**super()._empty_stats(), "truncated": 0}

    def __next__(self):
        batch = super().__next__()
        self._stats["truncated"] += int(batch["text"].pop("_truncated").sum())
        return batch
