#!/usr/bin/env python
"""Regenerates the mini English->German speech-translation set `slam_jax/assets/mini_corpus/st_de/`, deterministically.

  python scripts/make_mini_st_de.py

Input: `scripts/mini_st_de_translations.tsv` (every mini-corpus sentence with a German translation written for the
project, CC0) and the mini corpus' LibriSpeech-layout transcripts. Output, in CoVoST 2's layout so the CoVoST task
factory (`slam_jax.data.covost`) reads it with the mini corpus folder as the clips folder:
  covost_v2.en_de.{train,dev,dev_new_voices}.tsv       header `path sentence translation client_id`; path is relative
                                                       to slam_jax/assets/mini_corpus (e.g. train/1001/10011/...flac)
  new_voices/<speaker>/<chapter>/*.flac                the dev_new_voices audio: NEW_VOICE_SENTENCES training
                                                       sentences, each spoken by both NEW_VOICES (voices heard in
                                                       neither train nor dev; needs espeak-ng, as the mini corpus)
  spm.model, spm.vocab     SentencePiece unigram over the German translations, PAD=0 EOS=1 UNK=2, no BOS
  README.md                provenance, licence and statistics
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_mini_corpus import DEFAULT_OUT as MINI_CORPUS, transcript, write_split  # noqa: E402

TRANSLATIONS = os.path.join(HERE, "mini_st_de_translations.tsv")
DEFAULT_OUT = os.path.join(MINI_CORPUS, "st_de")
SPLITS = {"train": "train", "dev": "dev"}  # CoVoST split name -> mini corpus folder
NEW_VOICES_SPLIT = "dev_new_voices"          # training sentences spoken by unheard voices
NEW_VOICES = [(1011, "en-gb-x-gbcwmd+m4"), (1012, "en-us+f5")]
NEW_VOICE_SENTENCES = 32                    # as many as dev, so the two dev BLEUs average over the same count
NEW_VOICES_SEED = 20211021
VOCAB_SIZE = 256


def read_translations(path: str = TRANSLATIONS) -> dict[str, str]:
    """{upper-case English transcript: German translation}."""
    out = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            english, sep, german = line.partition("\t")
            if not sep or not german.strip():
                raise ValueError(f"{path}:{lineno}: expected <English>\\t<German>")
            key = transcript(english)
            if key in out:
                raise ValueError(f"{path}:{lineno}: duplicate sentence {english!r}")
            out[key] = german.strip()
    return out


def _rows_of_folder(corpus: str, dirpath: str, files: list[str], translations: dict[str, str]
                    ) -> list[tuple[str, str, str, str]]:
    rows = []
    for f in files:
        if not f.endswith(".trans.txt"):
            continue
        with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
            for line in fh:
                utt, _, text = line.strip().partition(" ")
                if text not in translations:
                    raise ValueError(f"{os.path.join(dirpath, f)}: no German translation for {text!r} in "
                                     f"{TRANSLATIONS}")
                path = os.path.relpath(os.path.join(dirpath, utt + ".flac"), corpus)
                rows.append((path, text, translations[text], utt.split("-")[0]))
    return rows


def split_rows(corpus: str, folder: str, translations: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(path relative to the corpus, transcript, German, speaker) for every utterance of `corpus/folder`."""
    rows = [row for dirpath, _, files in sorted(os.walk(os.path.join(corpus, folder)))
            for row in _rows_of_folder(corpus, dirpath, sorted(files), translations)]
    if not rows:
        raise FileNotFoundError(f"{os.path.join(corpus, folder)}: no transcripts (regenerate the mini corpus first)")
    return rows


def new_voice_rows(corpus: str, out: str, train_rows: list[tuple[str, str, str, str]],
                   translations: dict[str, str], espeak: str) -> list[tuple[str, str, str, str]]:
    """Synthesizes NEW_VOICE_SENTENCES training sentences (drawn with NEW_VOICES_SEED) with each of NEW_VOICES under
    `out/new_voices/` -> their rows (path relative to `corpus`, transcript, German, speaker)."""
    import numpy as np

    sentences = sorted({r[1] for r in train_rows})
    rng = np.random.default_rng(NEW_VOICES_SEED)
    chosen = [sentences[i] for i in sorted(rng.choice(len(sentences), NEW_VOICE_SENTENCES, replace=False))]
    plan = [(speaker, voice, sentence) for sentence in chosen for speaker, voice in NEW_VOICES]
    write_split(out, "new_voices", plan, rng, espeak)
    return [row for dirpath, _, files in sorted(os.walk(os.path.join(out, "new_voices")))
            for row in _rows_of_folder(corpus, dirpath, sorted(files), translations)]


def train_spm(out: str, lines: list[str]) -> None:
    """SentencePiece unigram `out/spm.model` (+ .vocab), VOCAB_SIZE pieces (`vocab.train_sentencepiece`)."""
    from slam_jax.data import vocab
    vocab.train_sentencepiece(lines, os.path.join(out, "spm"), VOCAB_SIZE)


def readme(counts: dict[str, tuple[int, int]], max_tokens: int) -> str:
    rows = "\n".join(f"| {split} | {n_utt} | {n_sent} |" for split, (n_utt, n_sent) in counts.items())
    return f"""# mini English->German speech translation set

German translations of the mini corpus' sentences, laid out like CoVoST 2 so that the CoVoST task factory
(`slam_jax.data.covost`) reads it, with this corpus folder as the Common Voice clips folder. Registered as the seqio
task `mini_st_de` (`tasks/covost.py`). Regenerate with `python scripts/make_mini_st_de.py` (also after
`scripts/make_mini_corpus.py`, which replaces the whole corpus folder, this one included).

| split | utterances | distinct sentences |
|---|---|---|
{rows}

- `covost_v2.en_de.<split>.tsv`: header `path sentence translation client_id`; `path` is relative to
  `slam_jax/assets/mini_corpus` (the FLAC files of the mini corpus' train/ and dev/, and
  this folder's new_voices/), `sentence` the mini corpus
  transcript (upper case, LibriSpeech convention), `translation` the German sentence (mixed case, punctuated), and
  `client_id` the speaker id. Dev shares neither sentences nor voices with train: 203 sentences teach a model
  the vocabulary, not translation of new sentences.
- `dev_new_voices` (seqio split `validation_new_voices`): {NEW_VOICE_SENTENCES} *training* sentences, each spoken by
  two voices heard in neither train nor dev ({', '.join(f'{s} `{v}`' for s, v in NEW_VOICES)}), synthesized like the
  mini corpus (`new_voices/`, eSpeak NG). It measures what this set can teach: translating speech of known
  sentences by unknown speakers, i.e. that the model listens rather than reproduces training audio.
- `spm.model` / `spm.vocab`: SentencePiece unigram model, {VOCAB_SIZE} pieces, trained on all German translations
  (train and dev, like the mini corpus' English model, so no dev character is unknown); ids PAD=0, EOS=1, UNK=2,
  no BOS (seqio / T5 convention); identity normalization but for U+FEFF, which is removed
  (`slam_jax.data.vocab.NORMALIZATION_RULES`). The longest translation is {max_tokens} pieces plus EOS.

## Source and licence

The German translations (`scripts/mini_st_de_translations.tsv`) were written for this project by its contributors
and are dedicated to the public domain under CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/), as are the
TSV and SentencePiece files made from them. The audio is the mini corpus' (see `../README.md`); `new_voices/` was
synthesized the same way (eSpeak NG formant voices) and is dedicated to the public domain under CC0 1.0 as well.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=MINI_CORPUS, help="the mini corpus folder")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (replaced)")
    parser.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable (the dev_new_voices audio)")
    args = parser.parse_args(argv)
    espeak = shutil.which(args.espeak)
    if espeak is None:
        sys.exit(f"{args.espeak}: not found; install it with `apt-get install -y espeak-ng`")
    translations = read_translations()
    rows = {split: split_rows(args.corpus, folder, translations) for split, folder in SPLITS.items()}
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    rows[NEW_VOICES_SPLIT] = new_voice_rows(args.corpus, args.out, rows["train"], translations, espeak)
    for split, split_rows_ in rows.items():
        with open(os.path.join(args.out, f"covost_v2.en_de.{split}.tsv"), "w", encoding="utf-8") as fh:
            fh.write("path\tsentence\ttranslation\tclient_id\n")
            fh.writelines("\t".join(r) + "\n" for r in split_rows_)
    # All translations, dev included (as the mini corpus' English model): only the vocabulary sees dev, so no dev
    # character is UNK (a train-only model lacked a capital 'C').
    train_spm(args.out, sorted({r[2] for split_rows_ in rows.values() for r in split_rows_}))
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.out, "spm.model"))
    max_tokens = max(len(sp.encode(r[2])) for split_rows_ in rows.values() for r in split_rows_)
    counts = {s: (len(r), len({x[1] for x in r})) for s, r in rows.items()}
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(readme(counts, max_tokens))
    for split, (n, k) in counts.items():
        print(f"{split}: {n} utterances, {k} sentences")
    print(f"longest translation: {max_tokens} pieces + EOS")


if __name__ == "__main__":
    main()
