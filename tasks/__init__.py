"""seqio registrations for slam_jax: `register(data)` registers every task and mixture for the data paths of a
`DataConfig` (no data is touched); importing the package registers them for `DataConfig()` (gin-bound values, else
the environment variables of `slam_jax.config.DATA_ENV`). The commands call `register` again after gin parsing.

Modules: `mini` (bundled mini corpus), `librispeech` (TFDS / folders), `librilight` (folders / prepared records),
`text` (librispeech_lm / c4 via TFDS), `mixtures` (the nested one-stream mixtures over them), `scaled` (the pod runs'
mixtures), `toy` (the generated toy-reproduction corpus of `DataConfig.toy_corpus`; nothing without it), `covost`
(speech translation: the bundled mini En->De set, CoVoST 2 when its folders are set), `glue` (TFDS `glue`).
"""
from slam_jax.config import DataConfig
from slam_jax.data import sources
from tasks import covost, glue, librilight, librispeech, mini, mixtures, scaled, text, toy


def register(data: DataConfig) -> None:
    """Registers (or re-registers) every task and mixture for `data`'s paths; `data.spm_model` becomes the default
    text vocabulary (`sources.default_vocabulary`)."""
    sources.set_default_vocabulary(data.spm_model)
    mini.register()
    librispeech.register(data)
    librilight.register(data)
    text.register(data)
    mixtures.register()
    scaled.register()
    if data.toy_corpus:
        toy.register(data.toy_corpus)
    covost.register(data)
    glue.register(data)


register(DataConfig())
