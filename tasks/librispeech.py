"""LibriSpeech 960 h: TFDS `librispeech` (default) and, when $SLAM_LIBRISPEECH_DIR is set, the same corpus read from
a folder in LibriSpeech layout (local or gs://) or from `slam-prepare` records ($SLAM_LIBRISPEECH_PREPARED).

Tasks: librispeech_speech (speech), librispeech_paired (paired); splits train (960 h), validation (dev-clean),
dev_other, test, test_other. TFDS tasks never download: build the dataset with `tfds build librispeech` first
(`--data_dir` or $TFDS_DATA_DIR). Text uses `sources.default_vocabulary()` ($SLAM_SPM_MODEL).
"""
import os

from slam_jax.data import sources

sources.add_tfds_librispeech_task("librispeech_speech", kind="speech")
sources.add_tfds_librispeech_task("librispeech_paired", kind="paired")

FOLDER_SPLITS = {
    "train": "train-960",  # a directory holding (links to) train-clean-100, train-clean-360, train-other-500
    "validation": "dev-clean",
    "dev_other": "dev-other",
    "test": "test-clean",
    "test_other": "test-other",
}

if os.environ.get("SLAM_LIBRISPEECH_DIR"):
    _root = os.environ["SLAM_LIBRISPEECH_DIR"]
    sources.add_librispeech_folder_task("librispeech_folder_speech", _root, kind="speech", splits=FOLDER_SPLITS)
    sources.add_librispeech_folder_task("librispeech_folder_paired", _root, kind="paired", splits=FOLDER_SPLITS)

if os.environ.get("SLAM_LIBRISPEECH_PREPARED"):
    _root = os.environ["SLAM_LIBRISPEECH_PREPARED"]
    sources.add_prepared_task("librispeech_prepared_speech", _root, kind="speech", splits=tuple(FOLDER_SPLITS))
    sources.add_prepared_task("librispeech_prepared_paired", _root, kind="paired", splits=tuple(FOLDER_SPLITS))

# The 100 h fine-tuning set (train-clean-100), same dev / test splits.
sources.add_tfds_librispeech_task(
    "librispeech_100h_paired", kind="paired",
    splits={**sources.LIBRISPEECH_TFDS_SPLITS, "train": "train_clean100"})
