"""Libri-Light unlabeled speech (folders of FLAC + JSON metadata; local or gs://).

Root: $SLAM_LIBRILIGHT_DIR (default ~/slam_data/librilight) holding `small/`, `medium/`, `large/`
(unlab-600 / 6k / 60k). Tasks `librilight_small`, `librilight_medium`, `librilight_large` (split "train") decode whole
recordings and cut them into 32 s chunks; for speed run `slam-prepare --layout librilight` once and point
$SLAM_LIBRILIGHT_PREPARED at its output to also register `librilight_prepared` (splits as prepared).
"""
import os

from slam_jax.data import sources

ROOT = os.environ.get("SLAM_LIBRILIGHT_DIR", os.path.expanduser("~/slam_data/librilight"))

for _subset in ("small", "medium", "large"):
    sources.add_librilight_task(f"librilight_{_subset}", ROOT, splits={"train": _subset})

if os.environ.get("SLAM_LIBRILIGHT_PREPARED"):
    sources.add_prepared_task("librilight_prepared", os.environ["SLAM_LIBRILIGHT_PREPARED"], kind="speech",
                              splits=("train",))
