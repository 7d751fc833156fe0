"""The bundled mini corpus (`slam_jax/assets/mini_corpus`, LibriSpeech layout, SentencePiece vocab 512).

Tasks (splits "train" -> train/, "validation" -> dev/):
  mini_speech       speech  the utterances' audio (transcripts ignored)
  mini_paired       paired  audio + transcript
  mini_text         text    text.txt (train only)
  mini_transcripts  text    the transcripts of train/ and dev/ as plain text
Mixtures: one per kind (`mini_speech_mix`, `mini_text_mix`, `mini_paired_mix`) and the nested top-level
`mini_slam` (speech 0.5 / text 0.25 / paired 0.25 of the rows of every batch).
"""
import os

import seqio

from slam_jax.data import sources

ROOT = sources.MINI_CORPUS
SPLITS = {"train": "train", "validation": "dev"}
MIXTURES = {
    "mini_speech_mix": [("mini_speech", 1.0)],
    "mini_text_mix": [("mini_text", 0.7), ("mini_transcripts", 0.3)],
    "mini_paired_mix": [("mini_paired", 1.0)],
    "mini_slam": [("mini_speech_mix", 0.5), ("mini_text_mix", 0.25), ("mini_paired_mix", 0.25)],
}


def vocabulary() -> seqio.SentencePieceVocabulary:
    """The mini corpus' SentencePiece model (512 pieces, PAD=0 EOS=1 UNK=2); loaded lazily."""
    return seqio.SentencePieceVocabulary(os.path.join(ROOT, "spm.model"))


def register() -> None:
    vocab = vocabulary()
    sources.add_librispeech_folder_task("mini_speech", ROOT, kind="speech", splits=SPLITS, vocabulary=vocab)
    sources.add_librispeech_folder_task("mini_paired", ROOT, kind="paired", splits=SPLITS, vocabulary=vocab)
    sources.add_librispeech_folder_task("mini_transcripts", ROOT, kind="text", splits=SPLITS, vocabulary=vocab)
    sources.add_text_files_task("mini_text", {"train": os.path.join(ROOT, "text.txt")}, vocabulary=vocab)
    for name, tasks in MIXTURES.items():
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, tasks)
