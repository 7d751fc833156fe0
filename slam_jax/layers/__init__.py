"""Flax NNX layers of the SLAM encoder. Layers know nothing of objectives or data."""
