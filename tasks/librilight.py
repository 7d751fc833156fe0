"""Libri-Light unlabeled speech (folders of FLAC + JSON metadata; local or gs://).

Root: `DataConfig.librilight_dir` (default ~/slam_data/librilight) holding `small/`, `medium/`, `large/`
(unlab-600 / 6k / 60k). Tasks `librilight_small`, `librilight_medium`, `librilight_large` (split "train") decode whole
recordings and cut them into 32 s chunks; for speed run `slam-prepare --layout librilight` once and point
`DataConfig.librilight_prepared` at its output to also register `librilight_prepared` (splits as prepared).
"""
import os

from slam_jax.data import sources

DEFAULT_ROOT = os.path.expanduser("~/slam_data/librilight")


def register(data) -> None:
    root = data.librilight_dir or DEFAULT_ROOT
    for subset in ("small", "medium", "large"):
        sources.add_librilight_task(f"librilight_{subset}", root, splits={"train": subset})
    if data.librilight_prepared:
        sources.add_prepared_task("librilight_prepared", data.librilight_prepared, kind="speech", splits=("train",))
