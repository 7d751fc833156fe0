"""Builders of small on-disk corpora for the data tests (LibriSpeech layout, with optional bad inputs)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import soundfile as sf

from slam_jax.data import sources

MINI_SPM = os.path.join(sources.MINI_CORPUS, "spm.model")
WORDS = ("MAT", "BOAT", "HILL", "ROAD", "TABLE", "GARDEN", "RIVER", "WINDOW")


def write_utterance(chapter_dir: pathlib.Path, utt: str, seconds: float = 1.0, rate: int = 16000,
                    channels: int = 1, seed: int = 0) -> pathlib.Path:
    """Writes `<chapter_dir>/<utt>.flac` with a quiet sine + noise; returns its path."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path = chapter_dir / f"{utt}.flac"
    sf.write(str(path), data.astype(np.float32), rate)
    return path


def librispeech_folder(root: pathlib.Path, utterances: int = 4, split: str = "train",
                       seconds: float = 1.0) -> pathlib.Path:
    """`root/<split>/100/1/100-1-000k.flac` + `100-1.trans.txt`, all good; returns the chapter directory."""
    chapter = root / split / "100" / "1"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(utterances):
        utt = f"100-1-{k:04d}"
        write_utterance(chapter, utt, seconds=seconds, seed=k)
        lines.append(f"{utt} THE CAT SAT ON THE {WORDS[k % len(WORDS)]}")
    (chapter / "100-1.trans.txt").write_text("\n".join(lines) + "\n")
    return chapter
