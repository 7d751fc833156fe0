"""seqio registrations for slam_jax: importing this package registers every task and mixture (no data is touched).

Modules: `mini` (bundled mini corpus), `librispeech` (TFDS / folders), `librilight` (folders / prepared records),
`text` (librispeech_lm / c4 via TFDS), `mixtures` (the nested one-stream mixtures over them).
"""
from tasks import librilight, librispeech, mini, mixtures, text  # noqa: F401  (registration side effects)
from tasks import scaled  # noqa: F401  (pod-run mixtures: gin/runs/slam_600m_*)
