"""CoVoST 2 speech translation (Wang et al. 2020) as seqio tasks: Common Voice English clips -> target-language text.

What the user downloads (nothing is fetched at run time):
- the CoVoST 2 TSVs, split with the release's `get_covost_splits.py`: `<covost_dir>/covost_v2.en_<xx>.<split>.tsv`
  for split in train / dev / test, one header line then tab-separated rows `path  sentence  translation  client_id`
  (path: the clip's file name; sentence: the English transcript; translation: the target text). Fields are never
  quoted (quotes are part of the text, so rows are split on tabs only, as fairseq reads them);
- the Common Voice (version 4) English clips folder, `<clips_dir>/<path>` (MP3, mostly 48 kHz).

Each example: the clip decoded through soundfile/libsndfile (MP3 needs libsndfile >= 1.1), averaged to mono,
resampled to 16 kHz (`scipy.signal.resample_poly`, polyphase Kaiser FIR) and turned into log-mel; "text" is the
tokenized translation (or the transcript with `target="transcript"`), and "source_text" the English transcript in
the source vocabulary (for the auxiliary source CTC of speech-translation fine-tuning; `StreamConfig.
paired_source_tokens` puts it in the batch). Tasks are of kind "paired", so the one-stream converter batches them like
ASR pairs (`tokens` = target ids).

Bad input never disappears silently: a row with the wrong number of fields, an empty path or an empty target, and a
clip that is missing or cannot be decoded travel as errors "<tsv>:<line>: <problem>" / "<clip>: <problem>", which
the converter raises or (StreamConfig.on_error='skip') skips and counts. A missing TSV or a header without the
required columns raises FileNotFoundError / ValueError naming the file when the dataset is built.
"""
from __future__ import annotations

import posixpath
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from slam_jax.data import listing
from slam_jax.data import preprocessors as prep
from slam_jax.data import sources

REQUIRED_COLUMNS = ("path", "sentence", "translation")
TARGETS = {"translation": "translation", "transcript": "sentence"}
SPLITS = {"train": "train", "validation": "dev", "test": "test"}


def tsv_path(covost_dir: str, source_lang: str, target_lang: str, split: str) -> str:
    """`<covost_dir>/covost_v2.<source>_<target>.<split>.tsv` (the names `get_covost_splits.py` writes)."""
    return posixpath.join(covost_dir, f"covost_v2.{source_lang}_{target_lang}.{split}.tsv")


def list_covost(tsv: str, clips_dir: str) -> list[dict[str, str]]:
    """Reads one CoVoST 2 TSV -> records {"id", "audio_path", "transcript", "translation", "error"} in file order.

    The id is the clip path (unique in CoVoST), or "<tsv>:<line>" for a row without one.
    """
    if not tf.io.gfile.exists(tsv):
        raise FileNotFoundError(f"{tsv}: CoVoST 2 TSV not found (run the release's get_covost_splits.py and point "
                                "the task at the folder holding its output)")
    with tf.io.gfile.GFile(tsv, "r") as fh:
        lines = fh.read().split("\n")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{tsv}:1: header {header} lacks the CoVoST 2 columns {missing}")
    col = {name: header.index(name) for name in REQUIRED_COLUMNS}
    records = []
    for lineno, line in enumerate(lines[1:], 2):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        where = f"{tsv}:{lineno}"
        record = {"id": where, "audio_path": "", "transcript": "", "translation": "", "error": ""}
        if len(fields) != len(header):
            record["error"] = f"{where}: expected {len(header)} tab-separated fields, got {len(fields)}"
            records.append(record)
            continue
        path, sentence, translation = (fields[col[c]].strip() for c in REQUIRED_COLUMNS)
        record.update(transcript=sentence, translation=translation)
        if not path:
            record["error"] = f"{where}: empty clip path"
        else:
            record["audio_path"] = posixpath.join(clips_dir, path)
            record["id"] = record["audio_path"]
            if not translation:
                record["error"] = f"{where}: empty translation for {path}"
            elif not sentence:
                record["error"] = f"{where}: empty transcript for {path}"
        records.append(record)
    if not records:
        raise ValueError(f"{tsv}: no rows after the header")
    return records


def add_covost_task(name: str, *, covost_dir: str, clips_dir: str, target_lang: str, source_lang: str = "en",
                    splits: Mapping[str, str] = SPLITS, target: str = "translation",
                    vocabulary: Optional[seqio.Vocabulary] = None,
                    source_vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
    """A paired seqio task over CoVoST 2 `<source>_<target>` (see the module docstring); touches no file.

    Args:
      covost_dir: the folder of the split TSVs (local or gs://). clips_dir: the Common Voice clips folder.
      splits: seqio split name -> CoVoST split ("train", "dev", "test").
      target: "translation" (speech translation) or "transcript" (the English transcript: ASR on CoVoST audio).
      vocabulary: the target-side SentencePiece vocabulary (SLAM §4: 8192 multilingual subwords).
      source_vocabulary: the vocabulary of "source_text" (translation targets only); default: the pre-training text
        vocabulary (`sources.default_vocabulary()`, i.e. `DataConfig.spm_model`), which the encoder already knows.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    split_to_tsv = {k: tsv_path(covost_dir, source_lang, target_lang, v) for k, v in dict(splits).items()}
    source = listing.ListingSource(lambda tsv: list_covost(tsv, clips_dir), split_to_tsv)
    key = "translation" if target == "translation" else "transcript"
    steps = [prep.read_audio(allow_multichannel=True, resample=True),
             *sources._waveform_preprocessors("paired", transcript_key=key)]
    if target == "translation":
        steps += [prep.rename("transcript", sources.SOURCE_TEXT), prep.tokenize_source_text]
    return sources._add(name, "paired", source, steps, vocabulary, sources.AUDIO_SHUFFLE_BUFFER,
                        source_vocabulary=source_vocabulary)
