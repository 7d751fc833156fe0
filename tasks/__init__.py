"""seqio registrations for slam_jax: importing this package registers every task and mixture (no data is touched).

Modules: `mini` (bundled mini corpus), `librispeech` (TFDS / folders), `librilight` (folders / prepared records),
`text` (librispeech_lm / c4 via TFDS), `mixtures` (the nested one-stream mixtures over them), `toy` (the generated
toy-reproduction corpus named by $SLAM_TOY_CORPUS; nothing without it), `covost` (speech translation: the bundled
mini En->De set, CoVoST 2 from $SLAM_COVOST_DIR), `glue` (TFDS `glue`).
"""
from tasks import librilight, librispeech, mini, mixtures, text  # noqa: F401  (registration side effects)
from tasks import scaled  # noqa: F401  (pod-run mixtures: gin/runs/slam_600m_*)
from tasks import toy  # noqa: F401  (registers only when $SLAM_TOY_CORPUS is set)
from tasks import covost  # noqa: F401  (mini_st_de; CoVoST 2 only when its folders are set)
from tasks import glue  # noqa: F401  (TFDS glue; read only when a run asks for it)
