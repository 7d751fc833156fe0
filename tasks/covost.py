"""Speech translation tasks (CoVoST 2 layout, `slam_jax.data.covost`); registering touches no data.

  mini_st_de           the bundled English->German set (`slam_jax/assets/mini_corpus/st_de`, CC0): the mini
                       corpus' audio with German translations; splits train, validation (dev: sentences and voices
                       unseen in train) and validation_new_voices (dev_new_voices: training sentences spoken by
                       unseen voices). Target vocabulary: its 256-piece German SentencePiece model.
  covost2_en_de, covost2_en_ca, covost2_en_ar, covost2_en_tr
                       CoVoST 2 En->X (SLAM §4's four pairs), registered when `DataConfig.covost_dir` (the folder of
                       the split TSVs `covost_v2.en_<xx>.<split>.tsv`) and `DataConfig.common_voice_dir` (the Common
                       Voice English folder holding `clips/`) are set; splits train / validation (dev) / test. Target
                       vocabulary: the SentencePiece model `DataConfig.covost_spm` (default `<covost_dir>/spm.model`;
                       `scripts/make_covost_spm.py` trains the paper's 8192-piece multilingual model).
"""
import os

import seqio

from slam_jax.data import covost, sources

MINI_ST_DE = os.path.join(sources.MINI_CORPUS, "st_de")
COVOST_PAIRS = ("de", "ca", "ar", "tr")


def register(data) -> None:
    """Registers `mini_st_de`, and the CoVoST 2 pairs when `data.covost_dir` and `data.common_voice_dir` are set."""
    covost.add_covost_task("mini_st_de", covost_dir=MINI_ST_DE, clips_dir=sources.MINI_CORPUS, target_lang="de",
                           splits={"train": "train", "validation": "dev",
                                   "validation_new_voices": "dev_new_voices"},
                           vocabulary=seqio.SentencePieceVocabulary(os.path.join(MINI_ST_DE, "spm.model")))
    if not (data.covost_dir and data.common_voice_dir):
        return
    vocabulary = seqio.SentencePieceVocabulary(data.covost_spm or os.path.join(data.covost_dir, "spm.model"))
    for lang in COVOST_PAIRS:
        covost.add_covost_task(f"covost2_en_{lang}", covost_dir=data.covost_dir,
                               clips_dir=os.path.join(data.common_voice_dir, "clips"), target_lang=lang,
                               vocabulary=vocabulary)
