#!/usr/bin/env python
"""Generates the toy-scale reproduction corpus (a few hours of synthetic speech + a text corpus) into `--out`.

Needs espeak-ng at generation time only (`apt-get install -y espeak-ng`; made with eSpeak NG 1.51). The corpus is
not committed: it is regenerated, deterministically given `--seed`, by

  python scripts/make_toy_corpus.py --out /data/toy_corpus [--hours 3] [--seed 20211020]
  export SLAM_TOY_CORPUS=/data/toy_corpus     # registers the toy_* seqio tasks (tasks/toy.py)

It reuses `make_mini_corpus.py`'s grammar, synthesis and LibriSpeech writer, at a larger scale and with many more
voices. Layout (LibriSpeech: upper-case transcripts, no punctuation except apostrophes):

  train/labelled/<speaker>/<chapter>/...   transcribed train utterances: the paired pre-training data (TLM, STM) and
                                           the CTC fine-tuning set (as LibriSpeech is both in the paper)
  train/unlabelled/<speaker>/<chapter>/... the rest of train; speech pre-training reads all of train/ (both folders),
                                           the transcripts there are never read by a toy task
  dev/..., test/...                        held-out sentences spoken by held-out voices (one voice pool each)
  text.txt                                 text-only corpus, `--text_factor` x the train utterances, no dev/test line
  spm.model, spm.vocab                     SentencePiece unigram, <= 512 pieces (the count is in toy_corpus.json:
                                           bind ModelConfig.vocab_size to it), PAD=0 EOS=1 UNK=2
  toy_corpus.json                          the generator's arguments, counts and measured durations
  README.md                                provenance, licence and statistics

Voices: every eSpeak NG English accent (formant synthesis, no MBROLA) combined with every voice variant below, each
combination one speaker; train, dev and test draw from disjoint sets of combinations. Sentences: distinct sentences
of the mini corpus' grammar; train, dev and test sentences are disjoint; each is spoken once, by a voice taken in a
shuffled rotation over its split's voices, at a speaking rate drawn per utterance.
`--hours` sets the number of train utterances through a planning mean of `PLANNED_MEAN_S` per utterance; the
README and toy_corpus.json report the measured total.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mini_corpus as mini  # noqa: E402  (a sibling script, not a package)

SEED = mini.SEED
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-029",
           "en-us-nyc"]
VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "klatt4"]
VOICES = [accent + (f"+{variant}" if variant else "") for accent in ACCENTS for variant in VARIANTS]
FIRST_SPEAKER = 2001         # speaker id of VOICES[0]; the mini corpus uses 1001-1010
SPEED_WPM = (140, 270)       # espeak -s range, wider than the mini corpus' 180-235
DURATION_S = (1.0, 4.5)      # fits the paired rows of gin/experiments/toy_*.gin (480 frames, 4.8 s)
PLANNED_MEAN_S = 2.1         # measured mean utterance of this generator (for --hours -> utterances)
UNLABELLED_CHAPTERS = 5000   # chapter offset of train/unlabelled, so a speaker's two train folders never collide


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to synthesize. Utterances are (speaker id, espeak-ng voice, sentence) in writing order."""

    voices: dict[str, list[tuple[int, str]]]                 # split -> (speaker, voice)
    utterances: dict[str, list[tuple[int, str, str]]]        # "train/labelled", "train/unlabelled", "dev", "test"
    text: list[str]                                          # text.txt lines (transcript convention)


def train_utterances(hours: float) -> int:
    """The number of train utterances that make about `hours` of speech."""
    if hours <= 0:
        raise ValueError(f"--hours must be positive, got {hours}")
    return max(1, round(hours * 3600 / PLANNED_MEAN_S))


def distinct_sentences(rng: np.random.Generator, count: int, exclude: set[str]) -> list[str]:
    """`count` grammar sentences whose transcripts are distinct and not in `exclude`, in drawing order."""
    out: dict[str, str] = {}
    misses = 0
    while len(out) < count:
        sentence = mini.grammar_sentence(rng)
        line = mini.transcript(sentence)
        if line in exclude or line in out:
            misses += 1
            if misses > 50 * count + 10_000:
                raise ValueError(f"the grammar cannot supply {count} distinct sentences outside {len(exclude)} "
                                 "excluded ones; ask for fewer hours or a smaller --text_factor")
            continue
        out[line] = sentence
    return list(out.values())


def rotate(voices: list[tuple[int, str]], sentences: list[str], rng: np.random.Generator
           ) -> list[tuple[int, str, str]]:
    """Each sentence spoken by one voice, voices taken in a rotation reshuffled every round (balanced counts)."""
    plan, order = [], []
    for sentence in sentences:
        if not order:
            order = [voices[i] for i in rng.permutation(len(voices))]
        speaker, voice = order.pop()
        plan.append((speaker, voice, sentence))
    return plan


def make_plan(*, hours: float, dev_utterances: int, test_utterances: int, labelled_fraction: float,
              text_factor: float, dev_voices: int, test_voices: int, seed: int) -> Plan:
    """The whole corpus plan, a pure function of its arguments (no espeak needed)."""
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"--labelled_fraction must be in (0, 1], got {labelled_fraction}")
    if dev_voices < 1 or test_voices < 1 or dev_voices + test_voices >= len(VOICES):
        raise ValueError(f"--dev_voices and --test_voices must be >= 1 and leave train voices out of {len(VOICES)}")
    if dev_utterances < 1 or test_utterances < 1 or text_factor <= 0:
        raise ValueError("--dev_utterances, --test_utterances and --text_factor must be positive")
    rng = np.random.default_rng(seed)
    speakers = [(FIRST_SPEAKER + i, voice) for i, voice in enumerate(VOICES)]
    shuffled = [speakers[i] for i in rng.permutation(len(speakers))]
    voices = {"dev": sorted(shuffled[:dev_voices]), "test": sorted(shuffled[dev_voices:dev_voices + test_voices]),
              "train": sorted(shuffled[dev_voices + test_voices:])}
    n_train = train_utterances(hours)
    dev = distinct_sentences(rng, dev_utterances, set())
    test = distinct_sentences(rng, test_utterances, {mini.transcript(s) for s in dev})
    held_out = {mini.transcript(s) for s in dev + test}
    train = rotate(voices["train"], distinct_sentences(rng, n_train, held_out), rng)
    labelled = set(rng.permutation(n_train)[:max(1, round(labelled_fraction * n_train))].tolist())
    text = [mini.transcript(s) for s in distinct_sentences(rng, max(1, round(text_factor * n_train)), held_out)]
    return Plan(voices=voices,
                utterances={"train/labelled": [u for i, u in enumerate(train) if i in labelled],
                            "train/unlabelled": [u for i, u in enumerate(train) if i not in labelled],
                            "dev": rotate(voices["dev"], dev, rng), "test": rotate(voices["test"], test, rng)},
                text=text)


def spm_pieces(path: str) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=path).get_piece_size()


def readme(stats: dict[str, list[float]], plan: Plan, args: argparse.Namespace, pieces: int) -> str:
    rows = "\n".join(
        f"| {split} | {len({u[0] for u in plan.utterances[split]})} | {len(d)} | {sum(d) / 3600:.3f} | "
        f"{min(d):.2f} / {np.mean(d):.2f} / {max(d):.2f} |" for split, d in stats.items())
    voices = "\n".join(f"- {split}: " + ", ".join(f"{s} `{v}`" for s, v in plan.voices[split])
                       for split in ("train", "dev", "test"))
    return f"""# toy corpus

Synthetic English speech + text for slam_jax's toy-scale reproduction (`experiments/toy_reproduction.py`),
generated by `python scripts/make_toy_corpus.py --out DIR --hours {args.hours} --seed {args.seed}
--labelled_fraction {args.labelled_fraction} --text_factor {args.text_factor} --dev_utterances {args.dev_utterances}
--test_utterances {args.test_utterances} --dev_voices {args.dev_voices} --test_voices {args.test_voices}`
(eSpeak NG at generation time only). Register it with `export SLAM_TOY_CORPUS=DIR` (tasks/toy.py).

| split | speakers | utterances | hours | duration min / mean / max (s) |
|---|---|---|---|---|
{rows}

- LibriSpeech layout, 16 kHz mono 16-bit FLAC; transcripts upper case without punctuation except apostrophes.
- `train/labelled` is the paired / fine-tuning set ({args.labelled_fraction:g} of train's utterances, drawn at
  random); speech pre-training reads all of `train/`.
- Sentences: distinct sentences of the hand-written grammar in `scripts/make_mini_corpus.py`; train, dev and test
  sentences are disjoint, each spoken once. Voices (speaker id = voice): eSpeak NG accent + variant combinations;
  train, dev and test voices are disjoint. Speaking rate drawn per utterance from {SPEED_WPM[0]}-{SPEED_WPM[1]}
  words/min (adjusted to keep {DURATION_S[0]}-{DURATION_S[1]} s); resampling, trimming and levels as in the mini
  corpus.
- `text.txt`: {len(plan.text)} distinct grammar sentences, none of them a dev or test transcript (some may equal a
  train transcript).
- `spm.model` / `spm.vocab`: SentencePiece unigram, {pieces} pieces (at most {mini.VOCAB_SIZE}; the grammar's
  few hundred words cannot fill more), trained on the train transcripts plus `text.txt`; PAD=0, EOS=1,
  UNK=2, no BOS; identity normalization but for U+FEFF, which is removed (`slam_jax.data.vocab.NORMALIZATION_RULES`).
  Models need `ModelConfig.vocab_size = {pieces}` (the sweep binds it).

{voices}

## Source and licence

The grammar was written for this project by its contributors (CC0 1.0); the audio was synthesized from it with
eSpeak NG's formant voices (GPL-3.0 software; the GPL does not extend to a program's output in general). The
contributors dedicate the generated audio, text and SentencePiece files to the public domain under CC0 1.0.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--hours", type=float, default=3.0, help="approximate hours of train speech")
    parser.add_argument("--labelled_fraction", type=float, default=0.1,
                        help="fraction of train utterances that are transcribed (paired / fine-tuning data)")
    parser.add_argument("--text_factor", type=float, default=5.0, help="text.txt lines per train utterance")
    parser.add_argument("--dev_utterances", type=int, default=300)
    parser.add_argument("--test_utterances", type=int, default=300)
    parser.add_argument("--dev_voices", type=int, default=12)
    parser.add_argument("--test_voices", type=int, default=12)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable")
    args = parser.parse_args(argv)
    espeak = shutil.which(args.espeak)
    if espeak is None:
        sys.exit(f"{args.espeak}: not found; install it with `apt-get install -y espeak-ng`")
    if os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"{args.out}: exists and is not empty; remove it or choose another --out")
    plan = make_plan(hours=args.hours, dev_utterances=args.dev_utterances, test_utterances=args.test_utterances,
                     labelled_fraction=args.labelled_fraction, text_factor=args.text_factor,
                     dev_voices=args.dev_voices, test_voices=args.test_voices, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng([args.seed, 1])  # audio draws: independent of the plan's stream
    stats = {}
    for split, utterances in plan.utterances.items():
        offset = UNLABELLED_CHAPTERS if split == "train/unlabelled" else 0
        stats[split] = mini.write_split(args.out, split, utterances, rng, espeak, chapter_offset=offset,
                                        speed_wpm=SPEED_WPM, duration_s=DURATION_S)
        print(f"{split}: {len(utterances)} utterances, {sum(stats[split]) / 3600:.3f} h", flush=True)
    with open(os.path.join(args.out, "text.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in plan.text)
    train_lines = [mini.transcript(s) for split in ("train/labelled", "train/unlabelled")
                   for _, _, s in plan.utterances[split]]
    mini.train_spm(args.out, train_lines + plan.text, hard_vocab_limit=False)
    pieces = spm_pieces(os.path.join(args.out, "spm.model"))
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(readme(stats, plan, args, pieces))
    manifest = {"args": {k: v for k, v in vars(args).items() if k != "espeak"},
                "voices": {k: [v for _, v in vs] for k, vs in plan.voices.items()},
                "splits": {k: {"utterances": len(d), "hours": sum(d) / 3600} for k, d in stats.items()},
                "text_lines": len(plan.text), "spm_pieces": pieces}
    with open(os.path.join(args.out, "toy_corpus.json"), "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"{args.out}: {size / 1e6:.1f} MB, {len(plan.text)} text lines")


if __name__ == "__main__":
    main()
