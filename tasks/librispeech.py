"""LibriSpeech 960 h: TFDS `librispeech` (default) and, when `DataConfig.librispeech_dir` is set, the same corpus read
from a folder in LibriSpeech layout (local or gs://) or from `slam-prepare` records (`DataConfig.librispeech_prepared`).

Tasks: librispeech_speech (speech), librispeech_paired (paired); splits train (960 h), validation (dev-clean),
dev_other, test, test_other. TFDS tasks never download: build the dataset with `tfds build librispeech` first
(`DataConfig.tfds_data_dir`). Text uses `sources.default_vocabulary()` (`DataConfig.spm_model`).
"""
from slam_jax.data import sources

FOLDER_SPLITS = {
    "train": "train-960",  # a directory holding (links to) train-clean-100, train-clean-360, train-other-500
    "validation": "dev-clean",
    "dev_other": "dev-other",
    "test": "test-clean",
    "test_other": "test-other",
}


def register(data) -> None:
    tfds_dir = data.tfds_data_dir
    sources.add_tfds_librispeech_task("librispeech_speech", kind="speech", tfds_data_dir=tfds_dir)
    sources.add_tfds_librispeech_task("librispeech_paired", kind="paired", tfds_data_dir=tfds_dir)
    # The 100 h fine-tuning set (train-clean-100), same dev / test splits.
    sources.add_tfds_librispeech_task("librispeech_100h_paired", kind="paired", tfds_data_dir=tfds_dir,
                                      splits={**sources.LIBRISPEECH_TFDS_SPLITS, "train": "train_clean100"})
    if data.librispeech_dir:
        for kind in ("speech", "paired"):
            sources.add_librispeech_folder_task(f"librispeech_folder_{kind}", data.librispeech_dir, kind=kind,
                                                splits=FOLDER_SPLITS)
    if data.librispeech_prepared:
        for kind in ("speech", "paired"):
            sources.add_prepared_task(f"librispeech_prepared_{kind}", data.librispeech_prepared, kind=kind,
                                      splits=tuple(FOLDER_SPLITS))
