"""slam_jax: JAX/Flax NNX reproduction of SLAM, joint speech-text pre-training of one Conformer encoder."""
import contextlib
import os
import sys

__version__ = "0.1.0"


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null: TensorFlow's C++ start-up lines (oneDNN, CUDA stubs, cuInit) are written
    before absl logging is initialized, so TF_CPP_MIN_LOG_LEVEL does not reach them. Python exceptions raised inside
    are printed after the descriptor is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow (the input pipeline's runtime) once, without its start-up noise, and keeps it off
    accelerators so it never takes their memory: JAX owns the GPUs/TPUs, tf.data runs on the host CPU.

    TF_CPP_MIN_LOG_LEVEL=0 or 1 in the environment (asking for TensorFlow's logs) leaves the start-up output alone.
    """
    verbose = os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("0", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with contextlib.nullcontext() if verbose else _native_stderr_silenced():
        try:
            import tensorflow as tf
        except ImportError:  # the model, slam-bench and slam-aot run without the input pipeline's runtime
            return
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TF already initialized its devices (imported before slam_jax): nothing to do
            pass


_import_tensorflow_quietly()
