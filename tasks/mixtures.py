"""The paper-scale one-stream mixtures: one seqio Mixture per kind, nested in a top-level Mixture whose rates set the
rows of each kind in every global batch (`slam_jax.data.converter`).

Rates follow mSLAM's per-step mix (2048 speech / 8192 text / 256 paired sequences; SLAM did not report one):
  slam_libri     speech: Libri-Light 60k   text: LibriSpeech LM   paired: LibriSpeech 960 h
  slam_libri_c4  same with C4 English as text
  w2v_bert_libri speech only (Libri-Light 60k), for the w2v-BERT baseline
Change a mix by registering another mixture; a kind mixture may list several tasks with rates.
"""
import seqio

MSLAM_RATES = {"speech": 2048, "text": 8192, "paired": 256}

_MIXTURES = {
    "libri_speech_mix": [("librilight_large", 1.0)],
    "libri_text_mix": [("librispeech_lm", 1.0)],
    "c4_text_mix": [("c4_en", 1.0)],
    "libri_paired_mix": [("librispeech_paired", 1.0)],
    "slam_libri": [("libri_speech_mix", MSLAM_RATES["speech"]), ("libri_text_mix", MSLAM_RATES["text"]),
                   ("libri_paired_mix", MSLAM_RATES["paired"])],
    "slam_libri_c4": [("libri_speech_mix", MSLAM_RATES["speech"]), ("c4_text_mix", MSLAM_RATES["text"]),
                      ("libri_paired_mix", MSLAM_RATES["paired"])],
    "w2v_bert_libri": [("libri_speech_mix", 1.0)],
}


def register() -> None:
    """(Re-)registers the mixtures; after the tasks they name (a seqio Mixture holds the task objects)."""
    for name, tasks in _MIXTURES.items():
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, tasks)
