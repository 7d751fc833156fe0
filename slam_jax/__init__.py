"""slam_jax: JAX/Flax NNX reproduction of SLAM, joint speech-text pre-training of one Conformer encoder."""

__version__ = "0.1.0"
