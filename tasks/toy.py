"""The toy-scale reproduction corpus (`scripts/make_toy_corpus.py`), registered from the folder named by
`DataConfig.toy_corpus` (default $SLAM_TOY_CORPUS); without it nothing is registered (the corpus is generated,
never bundled).

Tasks (splits "train", "validation" -> dev/, "test" -> test/):
  toy_speech        speech  all of train/ (labelled and unlabelled utterances), dev/, test/ (transcripts ignored)
  toy_paired        paired  train/labelled/ (the transcribed subset: TLM / STM pre-training, CTC fine-tuning),
                            dev/, test/
  toy_text          text    text.txt (train only)
  toy_transcripts   text    the transcripts of dev/ and test/ (held-out text for evaluation; no train split)
Mixtures: one per kind (`toy_speech_mix`, `toy_text_mix`, `toy_paired_mix`; a task without the requested split is
left out, so toy_text_mix reads text.txt in training and the held-out transcripts in evaluation) and the nested
`toy_text_only` (text: the BERT baseline; nested, so the text mixture's split rule applies), `toy_unpaired`
(speech + text: SLAM stage 1, w2v-conformer + bert) and `toy_slam` (speech + text + paired: SLAM stage 2 with TLM /
STM). Their rates are `ROWS`, the rows of each kind per batch of `sum(ROWS[kind])` rows
(our choice: the mini corpus' 2 : 1 : 1), so every variant sees the same speech rows per step.
"""
import os

import seqio

from slam_jax.data import sources

ENV = "SLAM_TOY_CORPUS"
ROWS = {"speech": 8, "text": 4, "paired": 4}
SPLITS = {"train": "train", "validation": "dev", "test": "test"}
MIXTURES = {
    "toy_speech_mix": [("toy_speech", 1.0)],
    "toy_text_mix": [("toy_text", 1.0), ("toy_transcripts", 1.0)],
    "toy_paired_mix": [("toy_paired", 1.0)],
    "toy_text_only": [("toy_text_mix", ROWS["text"])],
    "toy_unpaired": [("toy_speech_mix", ROWS["speech"]), ("toy_text_mix", ROWS["text"])],
    "toy_slam": [("toy_speech_mix", ROWS["speech"]), ("toy_text_mix", ROWS["text"]),
                 ("toy_paired_mix", ROWS["paired"])],
}
KINDS = {"toy_speech_mix": ("speech",), "toy_text_mix": ("text",), "toy_paired_mix": ("paired",),
         "toy_text_only": ("text",), "toy_unpaired": ("speech", "text"), "toy_slam": ("speech", "text", "paired")}


def batch_size(mixture: str, scale: int = 1) -> int:
    """Global rows per batch that give `scale * ROWS[kind]` rows of each kind `mixture` holds."""
    return scale * sum(ROWS[kind] for kind in KINDS[mixture])


def register(root: str) -> None:
    """Registers the toy tasks and mixtures over the corpus folder `root` (local or gs://; touches no file)."""
    vocab = seqio.SentencePieceVocabulary(os.path.join(root, "spm.model"))
    sources.add_librispeech_folder_task("toy_speech", root, kind="speech", splits=SPLITS, vocabulary=vocab)
    sources.add_librispeech_folder_task("toy_paired", root, kind="paired", vocabulary=vocab,
                                        splits={**SPLITS, "train": "train/labelled"})
    sources.add_librispeech_folder_task("toy_transcripts", root, kind="text", vocabulary=vocab,
                                        splits={"validation": "dev", "test": "test"})
    sources.add_text_files_task("toy_text", {"train": os.path.join(root, "text.txt")}, vocabulary=vocab)
    for name, tasks in MIXTURES.items():
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, tasks)

