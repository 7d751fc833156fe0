#!/usr/bin/env python
"""Regenerates the bundled mini corpus `slam_jax/assets/mini_corpus/` from scratch, deterministically.

Needs espeak-ng at generation time only (`apt-get install -y espeak-ng`; tested with eSpeak NG 1.51); the committed
files are plain FLAC / text / SentencePiece and need nothing of it at run time.

  python scripts/make_mini_corpus.py [--out slam_jax/assets/mini_corpus]

What it makes (LibriSpeech layout, upper-case transcripts without punctuation except apostrophes):
  train/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt
  dev/...                    same layout; held-out sentences spoken by held-out voices
  text.txt                   text-only pre-training lines (see `text_lines`)
  spm.model, spm.vocab       SentencePiece unigram, 512 pieces, PAD=0 EOS=1 UNK=2, no BOS (seqio / T5 ids)
  README.md                  provenance, licence and statistics

Sentences: `scripts/mini_corpus_sentences.txt` (written for the project, CC0). Audio: each train sentence is spoken
by two different train voices, each dev sentence by both dev voices; speaking rate drawn per utterance; espeak's
22.05 kHz output is resampled to 16 kHz (`scipy.signal.resample_poly`), leading/trailing silence trimmed to 0.1 s,
peak-normalized to a level drawn in [0.1, 0.25], and stored as 16-bit mono FLAC.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
from scipy import signal

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SENTENCES = os.path.join(HERE, "mini_corpus_sentences.txt")
DEFAULT_OUT = os.path.join(REPO, "slam_jax", "assets", "mini_corpus")
DEV_MARKER = "# held-out sentences for the dev split"

SAMPLE_RATE = 16000
SEED = 20211020  # SLAM's arXiv date
# (speaker id, espeak-ng voice+variant). LibriSpeech speaker ids are plain integers; ours are made up.
TRAIN_VOICES = [(1001, "en-us"), (1002, "en-gb"), (1003, "en-us+f3"), (1004, "en-gb+m3"),
                (1005, "en-gb-scotland+f2"), (1006, "en-029+m7"), (1007, "en-gb-x-rp+f4"), (1008, "en-us-nyc+m5")]
DEV_VOICES = [(1009, "en-gb-x-gbclan+f1"), (1010, "en-us+m2")]
VOICES_PER_TRAIN_SENTENCE = 2
SPEED_WPM = (180, 235)       # espeak -s range (words per minute)
DURATION_S = (1.5, 3.0)      # an utterance outside this range is re-synthesized at an adjusted speed
MARGIN_S = 0.1               # silence kept before/after speech
PEAK = (0.1, 0.25)       # peak level, a fraction of full scale (quieter audio makes smaller FLAC files)
UTTS_PER_CHAPTER = 30
TEXT_LINES = 3000
VOCAB_SIZE = 512


# ------------------------------------------------------------------------------------------------ sentences
def transcript(sentence: str) -> str:
    """'The nurse checked the patient's chart.' -> "THE NURSE CHECKED THE PATIENT'S CHART" (LibriSpeech style)."""
    words = re.sub(r"[^A-Za-z' ]+", " ", sentence).upper().split()
    if not words:
        raise ValueError(f"{SENTENCES}: sentence {sentence!r} has no words")
    return " ".join(words)


def read_sentences(path: str = SENTENCES) -> tuple[list[str], list[str]]:
    """-> (train sentences, dev sentences) as written (with punctuation, for espeak's prosody)."""
    train, dev, current = [], [], None
    current = train
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(DEV_MARKER):
                current = dev
            elif line and not line.startswith("#"):
                current.append(line)
    if not train or not dev:
        raise ValueError(f"{path}: needs train sentences, then a line starting {DEV_MARKER!r}, then dev sentences")
    seen = collections.Counter(transcript(s) for s in train + dev)
    dupes = [s for s, n in seen.items() if n > 1]
    if dupes:
        raise ValueError(f"{path}: duplicate sentences {dupes}")
    return train, dev


# ------------------------------------------------------------------------------------------------ text.txt
# A small grammar over vocabulary written for this project (CC0): it recombines the kind of words the spoken
# sentences use into new sentences for text-only pre-training.
_PEOPLE = ["the farmer", "the baker", "my sister", "my brother", "the teacher", "the sailor", "the old man",
           "a young girl", "the children", "our neighbour", "the doctor", "the cook", "the painter", "the fisherman",
           "the pilot", "the nurse", "grandfather", "the students", "the captain", "the carpenter", "the waiter",
           "the guard", "the singer", "a tired worker", "the tailor", "my aunt", "the boys", "the girls"]
_ANIMALS = ["the dog", "a black cat", "the horse", "the sheep", "a small bird", "the fox", "the puppy", "the goats",
            "the ducks", "an old owl", "the kitten", "a brown cow", "the frog", "the chickens", "a young deer"]
_THINGS = ["the boat", "a wooden box", "the red car", "the old bridge", "a blue cup", "the heavy door",
           "the kettle", "a yellow kite", "the ladder", "the lantern", "a silver coin", "the letter", "the map",
           "a basket of apples", "the bicycle", "the candle", "a loaf of bread", "the fence", "the window",
           "a green coat", "the radio", "the clock", "the blanket", "a pile of leaves", "the fishing net"]
_T_VERBS = ["carried", "painted", "found", "fixed", "opened", "washed", "dropped", "watched", "moved", "cleaned",
            "sold", "bought", "lost", "pushed", "pulled", "counted", "mended", "hid", "checked", "wrapped"]
_I_VERBS = ["slept", "waited", "laughed", "sang", "walked", "rested", "shouted", "listened", "worked", "smiled",
            "wandered", "stayed"]
_ANIMAL_VERBS = ["slept", "barked", "ran", "jumped", "rested", "waited", "hid", "played", "called", "wandered"]
_PLACES = ["by the river", "near the old mill", "in the garden", "on the hill", "behind the barn", "at the market",
           "under the tall tree", "beside the lake", "in the kitchen", "on the beach", "near the station",
           "in the quiet village", "at the edge of the forest", "by the harbour", "in the empty street",
           "across the field", "inside the shed", "on the bridge"]
_TIMES = ["before dawn", "after lunch", "in the evening", "at midnight", "on Monday", "every morning",
          "during the storm", "last summer", "in early spring", "after the rain", "at sunset", "on Sunday",
          "late at night", "in the winter"]
_ADJS = ["cold", "warm", "quiet", "bright", "dark", "heavy", "small", "tall", "old", "new", "wet", "dry",
         "strange", "gentle", "loud", "empty", "full", "clean", "broken", "green"]
_NOUNS_BE = ["the river", "the room", "the sky", "the road", "the lake", "the street", "the soup", "the water",
             "the house", "the forest", "the night", "the wind", "the shop", "the garden"]
_WEATHER = ["rain fell", "snow fell", "the wind blew", "thunder rolled", "the sun shone", "fog drifted",
            "a storm passed", "the bells rang"]


def grammar_sentence(rng: np.random.Generator) -> str:
    """One sentence of the grammar above (lower case, no punctuation), drawn with `rng`."""
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    form = int(rng.integers(7))
    maybe = lambda xs, p=0.5: (" " + pick(xs)) if rng.random() < p else ""  # noqa: E731
    if form == 0:
        return f"{pick(_PEOPLE)} {pick(_T_VERBS)} {pick(_THINGS)}{maybe(_PLACES)}{maybe(_TIMES, 0.3)}"
    if form == 1:
        return f"{pick(_PEOPLE)} {pick(_I_VERBS)} {pick(_PLACES)}{maybe(_TIMES)}"
    if form == 2:
        return f"{pick(_ANIMALS)} {pick(_ANIMAL_VERBS)} {pick(_PLACES)}{maybe(_TIMES, 0.4)}"
    if form == 3:
        return f"{pick(_TIMES)} {pick(_PEOPLE)} {pick(_T_VERBS)} {pick(_THINGS)}"
    if form == 4:
        return f"{pick(_NOUNS_BE)} was {pick(_ADJS)} and {pick(_ADJS)}{maybe(_TIMES, 0.4)}"
    if form == 5:
        return f"{pick(_WEATHER)} {pick(_PLACES)} {pick(_TIMES)}"
    return (f"{pick(_PEOPLE)} {pick(_T_VERBS)} {pick(_THINGS)} and {pick(_PEOPLE)} "
            f"{pick(_I_VERBS)} {pick(_PLACES)}")


def text_lines(train: list[str], dev: list[str], rng: np.random.Generator, count: int = TEXT_LINES) -> list[str]:
    """The train transcripts plus `count` distinct grammar sentences, shuffled; never a dev transcript."""
    dev_set = {transcript(s) for s in dev}
    lines = {transcript(s) for s in train}
    generated: set[str] = set()
    while len(generated) < count:
        line = transcript(grammar_sentence(rng))
        if line not in dev_set and line not in lines:
            generated.add(line)
    out = sorted(lines | generated)
    rng.shuffle(out)
    return out


# ------------------------------------------------------------------------------------------------ audio
def synthesize(text: str, voice: str, speed: int, espeak: str) -> np.ndarray:
    """espeak-ng -> float32 [samples] at 16 kHz, silence trimmed to MARGIN_S on each side."""
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = os.path.join(tmp, "out.wav")
        subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", wav_path, "--", text], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wav, rate = sf.read(wav_path, dtype="float64")
    if wav.ndim != 1 or not len(wav):
        raise RuntimeError(f"espeak-ng produced no mono audio for voice {voice!r}: {text!r}")
    g = np.gcd(rate, SAMPLE_RATE)
    wav = signal.resample_poly(wav, SAMPLE_RATE // g, rate // g)
    loud = np.nonzero(np.abs(wav) > 0.02 * np.abs(wav).max())[0]
    margin = int(MARGIN_S * SAMPLE_RATE)
    return wav[max(0, loud[0] - margin):loud[-1] + margin]


def speak(text: str, voice: str, rng: np.random.Generator, espeak: str, *,
          speed_wpm: tuple[int, int] = SPEED_WPM, duration_s: tuple[float, float] = DURATION_S) -> np.ndarray:
    """An utterance of `text` at a speed drawn from `speed_wpm`, with a duration in `duration_s` (speed adjusted if
    needed) -> int16 [samples]."""
    speed = int(rng.integers(speed_wpm[0], speed_wpm[1] + 1))
    peak = rng.uniform(*PEAK)
    for _ in range(6):
        wav = synthesize(text, voice, speed, espeak)
        seconds = len(wav) / SAMPLE_RATE
        if duration_s[0] <= seconds <= duration_s[1]:
            break
        target = min(max(seconds, duration_s[0] * 1.02), duration_s[1] * 0.95)
        speed = int(np.clip(round(speed * seconds / target), 80, 450))
    else:
        raise RuntimeError(f"cannot fit {text!r} ({voice}) into {duration_s} s; last try {seconds:.2f} s")
    return np.round(wav / np.abs(wav).max() * peak * 32767).astype(np.int16)


def write_split(out: str, split: str, plan: list[tuple[int, str, str]], rng: np.random.Generator,
                espeak: str, *, chapter_offset: int = 0, **speak_options) -> list[float]:
    """plan: (speaker, voice, sentence) in order -> LibriSpeech folders under out/split; returns durations.

    A speaker's chapters are numbered `speaker * 10 + chapter_offset + 1, 2, ...` (an offset keeps two folders of
    one speaker apart); `speak_options` go to `speak`.
    """
    by_speaker: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
    for speaker, voice, sentence in plan:
        by_speaker[speaker].append((voice, sentence))
    durations = []
    for speaker in sorted(by_speaker):
        items = by_speaker[speaker]
        for start in range(0, len(items), UTTS_PER_CHAPTER):
            chapter = speaker * 10 + chapter_offset + start // UTTS_PER_CHAPTER + 1
            folder = os.path.join(out, split, str(speaker), str(chapter))
            os.makedirs(folder)
            lines = []
            for k, (voice, sentence) in enumerate(items[start:start + UTTS_PER_CHAPTER]):
                utt = f"{speaker}-{chapter}-{k:04d}"
                samples = speak(sentence, voice, rng, espeak, **speak_options)
                sf.write(os.path.join(folder, utt + ".flac"), samples, SAMPLE_RATE, format="FLAC",
                         subtype="PCM_16", compression_level=1.0)
                durations.append(len(samples) / SAMPLE_RATE)
                lines.append(f"{utt} {transcript(sentence)}\n")
            with open(os.path.join(folder, f"{speaker}-{chapter}.trans.txt"), "w", encoding="utf-8") as fh:
                fh.writelines(lines)
    return durations


def plans(train: list[str], dev: list[str], rng: np.random.Generator
          ) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    """Which voice speaks which sentence: every train sentence by VOICES_PER_TRAIN_SENTENCE distinct train voices
    (balanced: voices taken in rotating, shuffled order), every dev sentence by every dev voice."""
    train_plan = []
    order = list(range(len(TRAIN_VOICES)))
    cursor = len(order)
    for sentence in train:
        chosen: list[int] = []
        while len(chosen) < VOICES_PER_TRAIN_SENTENCE:
            if cursor == len(order):
                rng.shuffle(order)
                cursor = 0
            if order[cursor] not in chosen:
                chosen.append(order[cursor])
                cursor += 1
            else:  # swap a repeat with the next voice so the rotation stays balanced
                j = (cursor + 1) % len(order)
                order[cursor], order[j] = order[j], order[cursor]
        train_plan += [(TRAIN_VOICES[v][0], TRAIN_VOICES[v][1], sentence) for v in chosen]
    dev_plan = [(speaker, voice, sentence) for sentence in dev for speaker, voice in DEV_VOICES]
    return train_plan, dev_plan


# ------------------------------------------------------------------------------------------------ vocabulary
def train_spm(out: str, lines: list[str], *, hard_vocab_limit: bool = True) -> None:
    """SentencePiece unigram model `out/spm.model` (+ .vocab) over `lines` (`vocab.train_sentencepiece`: ids PAD=0
    EOS=1 UNK=2, no BOS, the project's normalization, byte-reproducible). VOCAB_SIZE pieces exactly, or with
    `hard_vocab_limit=False` at most that many (a corpus with few distinct words cannot fill it)."""
    from slam_jax.data import vocab
    vocab.train_sentencepiece(lines, os.path.join(out, "spm"), VOCAB_SIZE, hard_vocab_limit=hard_vocab_limit)


# ------------------------------------------------------------------------------------------------ README
def readme(stats: dict[str, list[float]], n_text: int, n_train_sent: int, n_dev_sent: int) -> str:
    rows = "\n".join(
        f"| {split} | {len(d)} | {sum(d) / 3600:.3f} | {min(d):.2f} / {np.mean(d):.2f} / {max(d):.2f} | "
        f"{', '.join(f'{s} `{v}`' for s, v in (TRAIN_VOICES if split == 'train' else DEV_VOICES))} |"
        for split, d in stats.items())
    return f"""# mini corpus

A tiny synthetic English speech + text corpus bundled with slam_jax for smoke tests, examples and CI (no download).
It is laid out like LibriSpeech, so the same reader serves it and real LibriSpeech folders.

Regenerate with `python scripts/make_mini_corpus.py` (needs `apt-get install -y espeak-ng` at generation time only;
made with eSpeak NG 1.51).

## Contents

| split | utterances | hours | duration min / mean / max (s) | speakers (id `espeak-ng voice`) |
|---|---|---|---|---|
{rows}

- `train/`, `dev/`: `<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` (16 kHz, mono, 16-bit FLAC) and
  `<speaker>-<chapter>.trans.txt` with lines `<utt id> <TRANSCRIPT>`.
- Transcripts are **upper case**, words separated by single spaces, no punctuation except apostrophes (as in
  LibriSpeech). Every text file here uses the same convention.
- {n_train_sent} train sentences, each spoken by two different train voices; {n_dev_sent} held-out dev sentences, each
  spoken by both dev voices. Dev shares neither sentences nor voices with train (like LibriSpeech's dev sets).
- Speaking rate drawn per utterance from {SPEED_WPM[0]}-{SPEED_WPM[1]} words/min (adjusted to keep
  {DURATION_S[0]}-{DURATION_S[1]} s); espeak's 22.05 kHz output resampled to 16 kHz with `scipy.signal.resample_poly`,
  silence trimmed to {MARGIN_S} s on each side, peak level drawn in {PEAK[0]}-{PEAK[1]} of full scale.
- `text.txt`: {n_text} lines for text-only pre-training = the train transcripts plus distinct sentences sampled from a
  small hand-written grammar in `scripts/make_mini_corpus.py` that recombines the corpus' kind of vocabulary
  (people, animals, things, verbs, places, times). No dev transcript appears in it.
- `spm.model` / `spm.vocab`: SentencePiece unigram model, {VOCAB_SIZE} pieces, trained on all transcripts (train and dev)
  plus `text.txt`; ids PAD=0, EOS=1, UNK=2, no BOS (the seqio / T5 convention); identity normalization (no
  NFKC) but for U+FEFF, which is removed (`slam_jax.data.vocab.NORMALIZATION_RULES`), so feed it text in this corpus'
  convention.

## Source and licence

The sentences (`scripts/mini_corpus_sentences.txt`) and the grammar were written for this project by its
contributors and are dedicated to the public domain under CC0 1.0
(https://creativecommons.org/publicdomain/zero/1.0/). The audio was synthesized from them with eSpeak NG's own
formant voices (no MBROLA voices); eSpeak NG is GPL-3.0 software, and the GPL does not extend to a program's output
in general (GNU GPL FAQ). The contributors dedicate the audio, `text.txt` and the SentencePiece files to the public
domain under CC0 1.0 as well.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (replaced)")
    parser.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable")
    args = parser.parse_args(argv)
    espeak = shutil.which(args.espeak)
    if espeak is None:
        sys.exit(f"{args.espeak}: not found; install it with `apt-get install -y espeak-ng`")
    train, dev = read_sentences()
    rng = np.random.default_rng(SEED)
    train_plan, dev_plan = plans(train, dev, rng)
    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    stats = {"train": write_split(args.out, "train", train_plan, rng, espeak),
             "dev": write_split(args.out, "dev", dev_plan, rng, espeak)}
    lines = text_lines(train, dev, rng)
    with open(os.path.join(args.out, "text.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)
    train_spm(args.out, [transcript(s) for s in train + dev] + lines)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(readme(stats, len(lines), len(train), len(dev)))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    for split, d in stats.items():
        print(f"{split}: {len(d)} utterances, {sum(d) / 3600:.3f} h, mean {np.mean(d):.2f} s")
    print(f"{args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
