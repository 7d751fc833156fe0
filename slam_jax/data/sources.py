"""Data sources and seqio task factories: every corpus becomes a seqio Task of one *kind* with one shared schema.

Every task of every kind produces the same output features (seqio Mixtures require identical output features across
their tasks, see `check_compatible`), with the absent modality empty:

```
"speech": float32 [frames, 80]   normalized log-mel (features.log_mel); [0, 80] for text tasks
"text":   int32   [tokens]       SentencePiece ids, EOS-terminated; [0] for speech tasks
"source_text": int32 [tokens]    a speech-translation pair's source-language transcript (ids of the source
                                 vocabulary, EOS-terminated; for the auxiliary CTC of `slam_jax.finetune.translate`);
                                 [0] for every other task
"task":   string  []             name of the task that produced the example (for rate statistics)
"id":     string  []             where the example comes from (audio path, TFDS id, "file:line")
"error":  string  []             "" for a good example, else "<file>: <problem>" (the converter raises or skips)
```

A bad example (corrupt audio, wrong sample rate, empty transcript, ...) is not dropped by the task: it travels through
the pipeline with `error` set so that the converter can raise or skip-and-count it (`StreamConfig.on_error`).

Registration touches no data: sources list files, open TFDS builders and load vocabularies only when a dataset is
requested. Paths may be local or `gs://` (all file access goes through `tf.io.gfile` / TF file readers).
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Iterable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from slam_jax.data import listing
from slam_jax.data import preprocessors as prep
from slam_jax.data import schema

SPEECH, TEXT, SOURCE_TEXT, TASK, ID, ERROR = "speech", "text", "source_text", "task", "id", "error"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
MINI_CORPUS = os.path.join(ASSETS, "mini_corpus")

# Shuffle buffers after preprocessing hold decoded features (1024 x 80 floats = 320 kB per utterance) and are part of
# the saved iterator state, so audio tasks keep them small; folder sources already shuffle the whole file list.
AUDIO_SHUFFLE_BUFFER = 16
TFDS_AUDIO_SHUFFLE_BUFFER = 128
TEXT_SHUFFLE_BUFFER = 1024

_KIND_OF: dict[str, str] = {}


# ----------------------------------------------------------------------------------------------------- kinds
def register_kind(name: str, kind: str) -> None:
    """Records that the task `name` yields examples of `kind` (speech / text / paired)."""
    if kind not in schema.KINDS:
        raise ValueError(f"kind of task {name!r} must be one of {schema.KINDS}, got {kind!r}")
    _KIND_OF[name] = kind


def kind_of(name: str) -> str:
    """The kind of a registered task, or of a mixture whose tasks all share one kind."""
    if name in _KIND_OF:
        return _KIND_OF[name]
    if name in seqio.MixtureRegistry.names():
        kinds = {kind_of(t.name) for t in seqio.get_mixture_or_task(name).tasks}
        if len(kinds) != 1:
            raise ValueError(f"mixture {name!r} mixes kinds {sorted(kinds)}; a kind mixture holds one kind only")
        return kinds.pop()
    raise ValueError(
        f"{name!r} has no registered kind: register tasks with the factories in slam_jax.data.sources "
        f"(or call register_kind({name!r}, 'speech'|'text'|'paired') after seqio.TaskRegistry.add)")


# ------------------------------------------------------------------------------------------------ features
_default_spm_model: Optional[str] = None


def set_default_vocabulary(spm_model: Optional[str]) -> None:
    """Makes `spm_model` (None: the bundled mini-corpus model) the vocabulary of the tasks registered without one from
    now on. `tasks.register(data)` sets it to `DataConfig.spm_model` before it registers the tasks, and the commands
    call that before they import the `--module_import` modules, so a user's tasks mix with ours."""
    global _default_spm_model
    _default_spm_model = spm_model


def default_vocabulary() -> seqio.SentencePieceVocabulary:
    """The run's text vocabulary (`set_default_vocabulary`), else the bundled mini-corpus model (vocab 512).

    Loaded lazily by seqio, so building it touches no file. PAD=0, EOS=1, UNK=2 (seqio's convention).
    """
    return seqio.SentencePieceVocabulary(_default_spm_model or os.path.join(MINI_CORPUS, "spm.model"))


def output_features(vocabulary: Optional[seqio.Vocabulary] = None,
                    source_vocabulary: Optional[seqio.Vocabulary] = None) -> dict[str, seqio.Feature]:
    """The one output-feature schema shared by every task (see module docstring). The source vocabulary defaults to
    `default_vocabulary()` (the pre-training text vocabulary) for every task, so tasks mix whether or not they carry
    source transcripts."""
    meta = seqio.PassThroughVocabulary(size=0)
    return {
        SPEECH: seqio.Feature(meta, add_eos=False, required=False, dtype=tf.float32, rank=2),
        TEXT: seqio.Feature(vocabulary or default_vocabulary(), add_eos=True, required=False),
        SOURCE_TEXT: seqio.Feature(source_vocabulary or default_vocabulary(), add_eos=True, required=False),
        TASK: seqio.Feature(meta, add_eos=False, dtype=tf.string, rank=0),
        ID: seqio.Feature(meta, add_eos=False, dtype=tf.string, rank=0),
        ERROR: seqio.Feature(meta, add_eos=False, dtype=tf.string, rank=0),
    }


def check_compatible(tasks: Sequence[seqio.Task]) -> None:
    """Raises ValueError naming the task and feature when tasks do not share one output-feature schema.

    seqio samples a Mixture with `tf.data.Dataset.sample_from_datasets`, which needs every task to yield the same
    feature names with the same dtype and rank; seqio additionally requires one vocabulary per feature. Register
    every task through this module's factories (same `vocabulary`) so they share `output_features()`.
    """
    ref = tasks[0]
    for task in tasks[1:]:
        a, b = ref.output_features, task.output_features
        if set(a) != set(b):
            raise ValueError(
                f"task {task.name!r} has output features {sorted(b)} but {ref.name!r} has {sorted(a)}: seqio mixes "
                "only tasks with identical output features; register both with slam_jax.data.sources factories")
        for key in a:
            fa, fb = a[key], b[key]
            for attr in ("dtype", "rank", "vocabulary"):
                if getattr(fa, attr) != getattr(fb, attr):
                    raise ValueError(
                        f"feature {key!r}: task {task.name!r} has {attr}={getattr(fb, attr)!r} but {ref.name!r} has "
                        f"{getattr(fa, attr)!r}; seqio mixes only tasks whose features agree in dtype, rank and "
                        "vocabulary (pass the same vocabulary to every factory)")


# ------------------------------------------------------------------------------------------------ factories
def _add(name: str, kind: str, source: seqio.DataSource, preprocessors: list, vocabulary, shuffle_buffer: int,
         source_vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    preprocessors = preprocessors + [prep.finalize(name, kind)]
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                                  output_features=output_features(vocabulary, source_vocabulary),
                                  shuffle_buffer_size=shuffle_buffer)
    register_kind(name, kind)
    return task


def _audio_preprocessors(kind: str, *, transcript_key: str = "transcript", allow_multichannel: bool = False,
                         chunk_seconds: Optional[float] = None) -> list:
    steps: list = [prep.read_audio(allow_multichannel=allow_multichannel)]
    if chunk_seconds:
        steps.append(prep.chunk_waveform(chunk_seconds))
    return steps + _waveform_preprocessors(kind, transcript_key)


def _waveform_preprocessors(kind: str, transcript_key: str) -> list:
    if kind == "speech":
        return [prep.crop_waveform, prep.log_mel]
    if kind == "paired":
        return [prep.log_mel, prep.rename(transcript_key, TEXT), prep.require_text("empty transcript"),
                prep.tokenize_text]
    raise ValueError(f"audio tasks are of kind 'speech' or 'paired', got {kind!r}")


def add_librispeech_folder_task(name: str, root: str, *, kind: str,
                                splits: Mapping[str, str] = (("train", "train"), ("validation", "dev")),
                                vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A task over a folder in LibriSpeech layout (`root/<split dir>/<spk>/<chap>/...`; local or gs://).

    kind "speech": audio only (transcripts optional); "paired": audio + transcript (every utterance needs both);
    "text": the transcripts only (no audio is read). `splits` maps seqio split names to sub-directories.
    """
    split_to_dir = {k: posixpath.join(root, v) for k, v in dict(splits).items()}
    if kind == "text":
        source = listing.ListingSource(
            lambda d: listing.list_librispeech(d, need_transcripts=True, need_audio=False), split_to_dir)
        return _add(name, kind, source, [prep.rename("transcript", TEXT), prep.require_text("empty transcript"),
                                         prep.tokenize_text], vocabulary, TEXT_SHUFFLE_BUFFER)
    source = listing.ListingSource(lambda d: listing.list_librispeech(d, need_transcripts=kind == "paired"),
                                   split_to_dir)
    return _add(name, kind, source, _audio_preprocessors(kind), vocabulary, AUDIO_SHUFFLE_BUFFER)


def add_audio_folder_task(name: str, root: str, *, splits: Mapping[str, str] = (("train", "."),),
                          chunk_seconds: Optional[float] = None, require_json: bool = False,
                          vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A speech task over every audio file under `root/<split dir>` (any depth).

    `chunk_seconds` cuts each decoded file into consecutive chunks of at most that length (each chunk one example,
    random-cropped later to the stream's frame budget) -- use it for long recordings such as Libri-Light's.
    """
    split_to_dir = {k: posixpath.join(root, v) for k, v in dict(splits).items()}
    source = listing.ListingSource(lambda d: listing.list_audio_files(d, require_json=require_json), split_to_dir)
    return _add(name, "speech", source, _audio_preprocessors("speech", chunk_seconds=chunk_seconds), vocabulary,
                AUDIO_SHUFFLE_BUFFER)


def add_librilight_task(name: str, root: str, *, splits: Mapping[str, str] = (("train", "."),),
                        chunk_seconds: float = 32.0, vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """Libri-Light unlabeled speech: `root/<split>/<speaker>/<book>/<name>.flac` + `<name>.json` (required)."""
    return add_audio_folder_task(name, root, splits=splits, chunk_seconds=chunk_seconds, require_json=True,
                                 vocabulary=vocabulary)


def add_text_files_task(name: str, split_to_patterns: Mapping[str, str | Sequence[str]], *,
                        vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A text task over plain-text files, one sentence per line (glob patterns, local or gs://)."""
    return _add(name, "text", listing.TextFilesSource(split_to_patterns), [prep.tokenize_text], vocabulary,
                TEXT_SHUFFLE_BUFFER)


LIBRISPEECH_TFDS_SPLITS = {
    "train": "train_clean100+train_clean360+train_other500",
    "validation": "dev_clean",
    "dev_other": "dev_other",
    "test": "test_clean",
    "test_other": "test_other",
}


def add_tfds_librispeech_task(name: str, *, kind: str, tfds_name: str = "librispeech:2.1.1",
                              tfds_data_dir: Optional[str] = None,
                              splits: Mapping[str, str] = LIBRISPEECH_TFDS_SPLITS,
                              vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """TFDS `librispeech` (int16 samples at 16 kHz + "text"), kind "speech" or "paired". Never downloads."""
    source = seqio.TfdsDataSource(tfds_name, tfds_data_dir=tfds_data_dir, splits=dict(splits), read_only=True)
    steps = [prep.tfds_audio, *_waveform_preprocessors(kind, transcript_key="text")]
    return _add(name, kind, source, steps, vocabulary, TFDS_AUDIO_SHUFFLE_BUFFER)


def add_tfds_text_task(name: str, *, tfds_name: str, text_key: str = "text", tfds_data_dir: Optional[str] = None,
                       splits: Optional[Mapping[str, str]] = None,
                       vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A text task over a TFDS text dataset (`librispeech_lm`, `c4/en`, ...). Never downloads."""
    source = seqio.TfdsDataSource(tfds_name, tfds_data_dir=tfds_data_dir, splits=dict(splits) if splits else None,
                                  read_only=True)
    return _add(name, "text", source, [prep.tfds_text(text_key), prep.require_text("empty text"),
                                       prep.tokenize_text], vocabulary, TEXT_SHUFFLE_BUFFER)


PREPARED_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "audio": tf.io.FixedLenFeature([], tf.string),        # little-endian int16 PCM, 16 kHz mono
    "transcript": tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def add_prepared_task(name: str, root: str, *, kind: str, splits: Iterable[str] = ("train", "validation"),
                      vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A task over `slam-prepare` output: `root/<split>/<split>.tfrecord-XXXXX-of-YYYYY` (decoded int16 PCM).

    Reading is pure TF (no Python decoding), shuffles files and shards per file (seqio facilities).
    """
    patterns = {s: posixpath.join(root, s, f"{s}.tfrecord-*") for s in splits}
    source = seqio.TFExampleDataSource(patterns, PREPARED_FEATURES, cycle_length=4, block_length=8)
    steps = [prep.pcm16_audio, prep.no_error]
    if kind == "text":
        return _add(name, kind, source, [prep.rename("transcript", TEXT), prep.no_error,
                                         prep.require_text("empty transcript"), prep.tokenize_text],
                    vocabulary, TEXT_SHUFFLE_BUFFER)
    return _add(name, kind, source, steps + _waveform_preprocessors(kind, "transcript"), vocabulary,
                AUDIO_SHUFFLE_BUFFER)


def read_manifest(root: str) -> dict:
    """The JSON manifest `slam-prepare` writes next to its records (counts, skipped files)."""
    path = posixpath.join(root, "manifest.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no slam-prepare manifest (run `slam-prepare` first)")
    with tf.io.gfile.GFile(path, "r") as fh:
        return json.load(fh)

