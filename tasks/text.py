"""Unlabeled text from TFDS: the LibriSpeech LM corpus (`librispeech_lm`, 803M tokens) and C4 English.

Never downloads: build with `tfds build librispeech_lm` / `tfds build c4/en` first. Text uses
`sources.default_vocabulary()` (`DataConfig.spm_model`); TFDS data from `DataConfig.tfds_data_dir`.
"""
from slam_jax.data import sources



def register(data) -> None:
    sources.add_tfds_text_task("librispeech_lm", tfds_name="librispeech_lm:0.1.0", splits={"train": "train"},
                               tfds_data_dir=data.tfds_data_dir)
    sources.add_tfds_text_task("c4_en", tfds_name="c4/en:3.1.0", splits={"train": "train", "validation": "validation"},
                               tfds_data_dir=data.tfds_data_dir)
