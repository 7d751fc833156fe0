"""GLUE tasks over TFDS `glue` (`slam_jax.data.glue`); registering touches no data.

  glue_<task>        raw text, for task in cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli
                     (mnli: validation = matched, plus the split validation_mismatched)
  glue_<task>_libri  the same text in the LibriSpeech convention (upper case, no punctuation), for encoders whose
                     vocabulary was trained on LibriSpeech-style text (the bundled mini corpus, LibriLM)
Vocabulary: `sources.default_vocabulary()` (`DataConfig.spm_model`, else the mini corpus model) -- the encoder's.
TFDS data is read from `DataConfig.tfds_data_dir` (else $TFDS_DATA_DIR or ~/tensorflow_datasets) after
`tfds build glue/<task>`; nothing is downloaded.
"""
from slam_jax.data import glue, sources


def register(data) -> None:
    vocabulary = sources.default_vocabulary()
    for key in glue.GLUE_TASKS:
        glue.add_glue_task(f"glue_{key}", key, vocabulary=vocabulary, tfds_data_dir=data.tfds_data_dir)
        glue.add_glue_task(f"glue_{key}_libri", key, vocabulary=vocabulary, normalize=True,
                           tfds_data_dir=data.tfds_data_dir)
