"""Corpus listings and the seqio DataSources over them: a LibriSpeech-layout folder, a folder of audio files, and
text files of one sentence per line (`slam_jax.data.sources` turns each into a task). Listing touches no audio: it
walks folders (local or gs://, through `tf.io.gfile`) and returns one record per example."""
from __future__ import annotations

import os
import posixpath
from typing import Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg")


def _require_dir(path: str, what: str) -> None:
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"{path}: {what} directory does not exist")


def list_librispeech(split_dir: str, *, need_transcripts: bool, need_audio: bool = True) -> list[dict[str, str]]:
    """Lists a LibriSpeech-layout split `<split_dir>/<spk>/<chap>/<spk>-<chap>-<utt>.flac` + `<spk>-<chap>.trans.txt`.

    Returns records {"id", "audio_path", "transcript", "error"} sorted by id. Problems become per-record errors:
    a transcript line without audio, an audio file without a transcript line (when `need_transcripts`), an empty
    transcript. A missing split directory raises FileNotFoundError.
    """
    _require_dir(split_dir, "LibriSpeech split")
    records: dict[str, dict[str, str]] = {}
    for dirpath, _, files in tf.io.gfile.walk(split_dir):
        audio = {os.path.splitext(f)[0]: posixpath.join(dirpath, f) for f in files
                 if f.endswith(AUDIO_EXTENSIONS)}
        transcripts: dict[str, tuple[str, str]] = {}
        for f in files:
            if not f.endswith(".trans.txt"):
                continue
            path = posixpath.join(dirpath, f)
            with tf.io.gfile.GFile(path, "r") as fh:
                for lineno, line in enumerate(fh, 1):
                    line = line.rstrip("\n")
                    if not line.strip():
                        continue
                    utt, _, text = line.partition(" ")
                    transcripts[utt] = (text.strip(), f"{path}:{lineno}")
        for utt in sorted(set(audio) | set(transcripts)):
            text, where = transcripts.get(utt, ("", ""))
            path = audio.get(utt, "")
            error = ""
            if need_audio and not path:
                error = f"{where}: transcript line for {utt!r} has no audio file in {dirpath}"
            elif need_transcripts and not where:
                error = f"{path}: audio file has no transcript line in a *.trans.txt of {dirpath}"
            elif need_transcripts and not text:
                error = f"{where}: empty transcript for {utt!r}"
            records[utt] = {"id": path or where, "audio_path": path, "transcript": text, "error": error}
    if not records:
        raise FileNotFoundError(f"{split_dir}: no audio files or transcripts found (expected LibriSpeech layout)")
    return [records[k] for k in sorted(records)]


def list_audio_files(split_dir: str, *, require_json: bool = False) -> list[dict[str, str]]:
    """Lists every audio file under `split_dir` (any depth), e.g. Libri-Light `<spk>/<book>/<name>.flac`.

    With `require_json` (Libri-Light), an audio file whose `<name>.json` metadata is missing gets an error.
    """
    _require_dir(split_dir, "audio")
    records = []
    for dirpath, _, files in tf.io.gfile.walk(split_dir):
        names = set(files)
        for f in sorted(files):
            if not f.endswith(AUDIO_EXTENSIONS):
                continue
            path = posixpath.join(dirpath, f)
            error = ""
            if require_json and os.path.splitext(f)[0] + ".json" not in names:
                error = f"{path}: Libri-Light metadata file {os.path.splitext(f)[0]}.json is missing"
            records.append({"id": path, "audio_path": path, "transcript": "", "error": error})
    if not records:
        raise FileNotFoundError(f"{split_dir}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return sorted(records, key=lambda r: r["id"])


class ListingSource(seqio.DataSource):
    """A DataSource of string records {"id", "audio_path", "transcript", "error"} listed when a dataset is built.

    Sharding (`seqio.ShardInfo`) takes every `num_shards`-th record of the sorted list, so hosts see disjoint records
    whose union is the split. Shuffling shuffles the whole record list (cheap: strings) with a new order each epoch;
    audio is decoded afterwards by the task's preprocessors.
    """

    def __init__(self, list_fn: Callable[[str], list[dict[str, str]]], split_to_dir: Mapping[str, str]):
        self._list_fn = list_fn
        self._split_to_dir = dict(split_to_dir)
        super().__init__(splits=tuple(split_to_dir), caching_permitted=False)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [self._split_to_dir[split]]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        records = self._list_fn(self._split_to_dir[split])
        if shard_info is not None:
            records = records[shard_info.index::shard_info.num_shards]
        if not records:
            raise ValueError(f"{self._split_to_dir[split]}: shard {shard_info} of split {split!r} is empty")
        ds = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in records] for k in records[0]})
        if shuffle:
            ds = ds.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)
        return ds


class TextFilesSource(seqio.DataSource):
    """Lines of plain-text files (glob patterns per split) as records {"id": "file:line", "text", "error"}.

    Sharding is per file when there are at least as many files as shards (seqio falls back to every n-th line
    otherwise). Blank lines become errors ("empty line") so they are counted, never silently dropped.
    """

    def __init__(self, split_to_patterns: Mapping[str, str | Sequence[str]]):
        self._patterns = {k: [v] if isinstance(v, str) else list(v) for k, v in split_to_patterns.items()}
        super().__init__(splits=tuple(split_to_patterns), caching_permitted=False)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def list_shards(self, split: str) -> Sequence[str]:
        files = sorted(f for p in self._patterns[split] for f in tf.io.gfile.glob(p))
        if not files:
            raise FileNotFoundError(f"no text files match {self._patterns[split]} (split {split!r})")
        return files

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        files = list(self.list_shards(split))
        if shard_info is not None:
            files = files[shard_info.index::shard_info.num_shards]
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

        def read(path: tf.Tensor) -> tf.data.Dataset:
            def record(i: tf.Tensor, line: tf.Tensor) -> dict[str, tf.Tensor]:
                where = tf.strings.join([path, tf.strings.as_string(i + 1)], ":")
                blank = tf.equal(tf.strings.length(tf.strings.strip(line)), 0)
                error = tf.where(blank, tf.strings.join([where, ": empty line"]), "")
                return {"id": where, "text": line, "error": error}
            return tf.data.TextLineDataset(path).enumerate().map(record)

        return ds.interleave(read, cycle_length=min(len(files), 8), block_length=16,
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
