"""Transformer decoder: incremental decoding with the KV cache equals full teacher-forced decoding; causality."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from slam_jax.layers.decoder import DecoderConfig, TransformerDecoder

CFG = DecoderConfig(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, vocab_size=40, dropout=0.0)


def _setup(seed=0, batch=3, frames=7, length=6, memory_dim=24):
    rng = np.random.default_rng(seed)
    with nnx.use_eager_sharding(False):
        decoder = TransformerDecoder(CFG, memory_dim, rngs=nnx.Rngs(params=seed))
    memory = jnp.asarray(rng.normal(size=(batch, frames, memory_dim)), jnp.float32)
    lengths = np.array([frames, 4, 2])[:batch]
    memory_mask = jnp.asarray(np.arange(frames)[None] < lengths[:, None])
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, size=(batch, length)), jnp.int32)
    return decoder, memory, memory_mask, tokens


def test_incremental_decoding_equals_full_decoding():
    decoder, memory, memory_mask, tokens = _setup()
    full = decoder(tokens, memory, memory_mask)
    cache = decoder.init_cache(memory, memory_mask, max_length=tokens.shape[1] + 2)
    step = jax.jit(lambda t, c: decoder.decode_step(t, c))
    steps = []
    for t in range(tokens.shape[1]):
        logits, cache = step(tokens[:, t], cache)
        steps.append(logits)
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), atol=2e-5, rtol=2e-5)
    assert np.all(np.asarray(cache["index"]) == tokens.shape[1])


def test_causal_and_padding_masks():
    decoder, memory, memory_mask, tokens = _setup(seed=1)
    base = np.asarray(decoder(tokens, memory, memory_mask))
    # Changing a later token leaves earlier positions' logits unchanged and changes its own position's.
    changed = tokens.at[:, 3].set((tokens[:, 3] + 1) % CFG.vocab_size)
    out = np.asarray(decoder(changed, memory, memory_mask))
    np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-6)
    assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-4
    # Padded memory frames are invisible: changing them changes nothing.
    noisy = jnp.where(memory_mask[..., None], memory, 100.0)
    np.testing.assert_allclose(np.asarray(decoder(tokens, noisy, memory_mask)), base, atol=1e-5)


def test_dropout_only_with_a_key():
    cfg = DecoderConfig(num_layers=1, d_model=16, num_heads=2, ffn_dim=32, vocab_size=20, dropout=0.5)
    with nnx.use_eager_sharding(False):
        decoder = TransformerDecoder(cfg, 8, rngs=nnx.Rngs(params=0))
    memory = jnp.ones((2, 3, 8))
    mask = jnp.ones((2, 3), bool)
    tokens = jnp.zeros((2, 4), jnp.int32)
    a, b = decoder(tokens, memory, mask), decoder(tokens, memory, mask)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = decoder(tokens, memory, mask, key=jax.random.key(0))
    assert np.abs(np.asarray(c) - np.asarray(a)).max() > 1e-3


def test_config_checks_heads():
    with pytest.raises(ValueError, match="num_heads"):
        DecoderConfig(d_model=30, num_heads=4)
