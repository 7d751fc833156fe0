"""Layer numerics: fast depthwise conv == native conv, head-major attention == jax.nn.dot_product_attention,
masked GroupNorm == per-segment reference, and the encoder's outputs on real frames are invariant to padding and
to packing (attention, conv, GroupNorm masked)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import TINY, build_model, speech_rows
from slam_jax.layers.attention import SelfAttention
from slam_jax.layers.conformer import depthwise_conv1d, segment_group_norm

TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, seed=0)


def test_shift_depthwise_conv_matches_native_values_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 37, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(5, 16)), jnp.float32)
    seg = np.ones((3, 37), np.int32)
    seg[1, 30:] = 0  # padding
    seg = jnp.asarray(seg)

    def f(impl):
        return lambda x, k: jnp.sum(jnp.sin(depthwise_conv1d(x, k, seg, impl)) * (seg > 0)[..., None])

    np.testing.assert_allclose(depthwise_conv1d(x, kernel, seg, "shift") * (seg > 0)[..., None],
                               depthwise_conv1d(x, kernel, seg, "native") * (seg > 0)[..., None], atol=TOL)
    for a, b in zip(jax.grad(f("shift"), (0, 1))(x, kernel), jax.grad(f("native"), (0, 1))(x, kernel)):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_head_major_attention_matches_dot_product_attention(dtype):
    """Both attention paths hold the same parameters and agree in values and gradients, packing and padding
    included (bf16: same rounding points, so only summation order differs)."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 23, 32)), jnp.float32)
    seg = np.ones((3, 23), np.int32)
    seg[1, 17:] = 0  # padding
    seg[2, 9:] = 2  # two packed examples
    seg[2, 20:] = 0
    seg = jnp.asarray(seg)
    with nnx.use_eager_sharding(False):
        layer = SelfAttention(32, 4, dtype=dtype, rngs=nnx.Rngs(0))
    graph, params = nnx.split(layer)

    def loss(impl):
        def f(params, x):
            m = nnx.merge(graph, params)
            m.implementation = impl
            y = m(x, seg).astype(jnp.float32) * (seg > 0)[..., None]
            return jnp.sum(jnp.sin(y) * x), y
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    (_, y_ref), g_ref = loss("xla")(params, x)
    (_, y), g = loss("head_major")(params, x)
    tol = TOL if dtype == jnp.float32 else 4e-3  # bf16: half an ulp of the largest entry
    for a, b in zip(jax.tree.leaves((y, g)), jax.tree.leaves((y_ref, g_ref))):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.abs(b).max()))
    assert float(jnp.abs(y_ref).max()) > 0.1  # not a trivially zero comparison


def test_segment_group_norm_matches_per_segment_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 20, 8)).astype(np.float32) * 3 + 1
    seg = np.zeros((2, 20), np.int32)
    seg[0, :7], seg[0, 7:16] = 1, 2
    seg[1, :20] = 1
    scale, bias = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    out = np.asarray(segment_group_norm(jnp.asarray(x), jnp.asarray(seg), scale, bias, 4, 1e-3))
    for b in range(2):
        for s in (1, 2):
            idx = seg[b] == s
            if not idx.any():
                continue
            xs = x[b, idx].reshape(-1, 4, 2)
            mean = xs.mean(axis=(0, 2), keepdims=True)
            var = xs.var(axis=(0, 2), keepdims=True)
            ref = ((xs - mean) / np.sqrt(var + 1e-3)).reshape(-1, 8) * scale + bias
            np.testing.assert_allclose(out[b, idx], ref, atol=1e-4)
    assert np.all(out[0, 16:] == 0)


def _speech_outputs(model, features, seg):
    z, s = model.encoder.speech_features(jnp.asarray(features), jnp.asarray(seg))
    c = model.encoder.speech_encoder(z, s)
    h = model.encoder.shared(c, s)
    return np.asarray(c), np.asarray(h), np.asarray(s)


def test_speech_outputs_invariant_to_padding(model):
    rng = np.random.default_rng(2)
    short = speech_rows(rng, 1, 44)
    padded = {k: np.concatenate([v, np.zeros((1, 36) + v.shape[2:], v.dtype)], 1) for k, v in short.items()}
    c1, h1, _ = _speech_outputs(model, short["features"], short["segment_ids"])
    c2, h2, _ = _speech_outputs(model, padded["features"], padded["segment_ids"])
    n = c1.shape[1]
    np.testing.assert_allclose(c1, c2[:, :n], atol=TOL)
    np.testing.assert_allclose(h1, h2[:, :n], atol=TOL)
    assert np.all(c2[:, n:] == 0)


def test_packed_speech_equals_separate(model):
    rng = np.random.default_rng(3)
    packed = speech_rows(rng, 1, 96, lengths=[[40, 32]])  # two utterances then 24 frames of padding
    f = packed["features"]
    a = {"features": f[:, :40], "segment_ids": np.ones((1, 40), np.int32)}
    b = {"features": f[:, 40:72], "segment_ids": np.ones((1, 32), np.int32)}
    cp, hp, _ = _speech_outputs(model, packed["features"], packed["segment_ids"])
    ca, ha, _ = _speech_outputs(model, a["features"], a["segment_ids"])
    cb, hb, _ = _speech_outputs(model, b["features"], b["segment_ids"])
    np.testing.assert_allclose(cp[:, :10], ca, atol=TOL)
    np.testing.assert_allclose(cp[:, 10:18], cb, atol=TOL)
    np.testing.assert_allclose(hp[:, :10], ha, atol=TOL)
    np.testing.assert_allclose(hp[:, 10:18], hb, atol=TOL)


def _text_outputs(model, tokens, seg, pos):
    e = model.encoder.embed_text(jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(pos))
    return np.asarray(model.encoder.shared(e, jnp.asarray(seg)))


def test_text_padding_and_packing_invariance(model):
    rng = np.random.default_rng(4)
    t1, t2 = rng.integers(3, 50, 9), rng.integers(3, 50, 6)
    alone1 = _text_outputs(model, t1[None], np.ones((1, 9), np.int32), np.arange(9)[None])
    alone2 = _text_outputs(model, t2[None], np.ones((1, 6), np.int32), np.arange(6)[None])
    tokens = np.zeros((1, 20), np.int32)
    tokens[0, :9], tokens[0, 9:15] = t1, t2
    seg = np.array([[1] * 9 + [2] * 6 + [0] * 5], np.int32)
    pos = np.array([list(range(9)) + list(range(6)) + [0] * 5], np.int32)
    packed = _text_outputs(model, tokens, seg, pos)
    np.testing.assert_allclose(packed[:, :9], alone1, atol=TOL)
    np.testing.assert_allclose(packed[:, 9:15], alone2, atol=TOL)


def test_paired_outputs_invariant_to_padding(model):
    rng = np.random.default_rng(5)
    speech = speech_rows(rng, 1, 40)
    tokens = rng.integers(3, 50, (1, 7)).astype(np.int32)

    def run(extra_frames, extra_tokens):
        f = np.concatenate([speech["features"], np.zeros((1, extra_frames, 80), np.float32)], 1)
        s = np.concatenate([speech["segment_ids"], np.zeros((1, extra_frames), np.int32)], 1)
        t = np.concatenate([tokens, np.zeros((1, extra_tokens), np.int32)], 1)
        ts = (t > 0).astype(np.int32)
        enc = model.encoder
        z, sub = enc.speech_features(jnp.asarray(f), jnp.asarray(s))
        c = enc.speech_encoder(z, sub)
        e = enc.embed_text(jnp.asarray(t), jnp.asarray(ts), jnp.asarray(np.arange(t.shape[1])[None]))
        return enc.encode_paired(c, sub, e, jnp.asarray(ts))

    a, b = run(0, 0), run(24, 5)
    np.testing.assert_allclose(a.cls, b.cls, atol=TOL)
    np.testing.assert_allclose(a.text, b.text[:, :7], atol=TOL)
    np.testing.assert_allclose(a.speech, b.speech[:, :10], atol=TOL)


def test_quantizer_codebook_init_options():
    from slam_jax.layers.quantizer import GumbelQuantizer, QuantizerConfig
    with nnx.use_eager_sharding(False):
        books = {init: np.asarray(GumbelQuantizer(8, QuantizerConfig(codebook_size=64, code_dim=32,
                                                                    codebook_init=init), rngs=nnx.Rngs(0)).codebook[...])
                 for init in ("uniform", "normal")}
    assert books["uniform"].min() >= 0 and books["normal"].min() < 0
    cos = lambda b: np.mean([(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(b[0][:-1], b[0][1:])])
    assert cos(books["uniform"]) > 0.6 and abs(cos(books["normal"])) < 0.2
    with pytest.raises(ValueError, match="codebook_init"):
        QuantizerConfig(codebook_init="zeros")
