"""Small shared builders for tests: a tiny model config and synthetic batches in the data contract's format."""
from __future__ import annotations

import numpy as np
from flax import nnx

from slam_jax.model import ModelConfig, SlamModel

TINY = ModelConfig(d_model=32, num_heads=4, ffn_dim=64, conv_kernel=5, speech_layers=2, shared_layers=2,
                   vocab_size=50, subsampling_channels=4, group_norm_groups=4, codebook_size=16, code_dim=16,
                   remat="none")


def speech_rows(rng: np.random.Generator, batch: int, frames: int, lengths: list[list[int]] | None = None):
    """Packed speech rows: `lengths[row]` lists utterance lengths (multiples of 4 frames, packed from frame 0)."""
    features = np.zeros((batch, frames, 80), np.float32)
    seg = np.zeros((batch, frames), np.int32)
    lengths = lengths or [[frames] for _ in range(batch)]
    for b, row in enumerate(lengths):
        pos = 0
        for i, n in enumerate(row):
            features[b, pos:pos + n] = rng.normal(size=(n, 80))
            seg[b, pos:pos + n] = i + 1
            pos += n
    return {"features": features, "segment_ids": seg}


def text_rows(rng: np.random.Generator, batch: int, length: int, vocab: int):
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    seg = np.ones((batch, length), np.int32)
    pos = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def paired_rows(rng: np.random.Generator, batch: int, frames: int, length: int, vocab: int):
    speech = speech_rows(rng, batch, frames)
    tokens = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
    tseg = np.ones((batch, length), np.int32)
    return {"features": speech["features"], "segment_ids": speech["segment_ids"], "tokens": tokens,
            "token_segment_ids": tseg}


def full_batch(seed: int = 0, vocab: int = 50, batch: int = 2, frames: int = 64, length: int = 12):
    rng = np.random.default_rng(seed)
    return {"speech": speech_rows(rng, batch, frames), "text": text_rows(rng, batch, length, vocab),
            "paired": paired_rows(rng, batch, frames, length, vocab)}


def build_model(cfg: ModelConfig, seed: int = 0) -> SlamModel:
    """The model with unsharded parameters (the trainer creates sharded ones under jit)."""
    with nnx.use_eager_sharding(False):
        return SlamModel(cfg, rngs=nnx.Rngs(params=seed))
