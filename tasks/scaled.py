"""Mixtures for the pod runs (`gin/runs/slam_600m_*`), beside the paper-scale ones of `tasks/mixtures.py`.

Stage 1 of SLAM (w2v-BERT + SpanBERT) trains on unpaired data only; reading the paired kind of `slam_libri` would
decode 256 LibriSpeech utterances per step that no objective uses. These mixtures keep mSLAM's speech / text rates
(2048 / 8192 rows per step) and leave the paired kind out:
  slam_libri_unpaired     speech: Libri-Light 60k   text: LibriSpeech LM
  slam_libri_c4_unpaired  speech: Libri-Light 60k   text: C4 English
"""
import seqio

from tasks import mixtures

_MIXTURES = {
    "slam_libri_unpaired": [("libri_speech_mix", mixtures.MSLAM_RATES["speech"]),
                            ("libri_text_mix", mixtures.MSLAM_RATES["text"])],
    "slam_libri_c4_unpaired": [("libri_speech_mix", mixtures.MSLAM_RATES["speech"]),
                               ("c4_text_mix", mixtures.MSLAM_RATES["text"])],
}


def register() -> None:
    """(Re-)registers the mixtures; after the tasks they name (a seqio Mixture holds the task objects)."""
    for name, tasks in _MIXTURES.items():
        seqio.MixtureRegistry.remove(name)
        seqio.MixtureRegistry.add(name, tasks)
