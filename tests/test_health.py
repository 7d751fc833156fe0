"""Health metrics against numpy references on constructed inputs, and the collapse warnings."""
import jax.numpy as jnp
import numpy as np

from slam_jax import health


def _participation_ratio(x):
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
    return eig.sum() ** 2 / (eig ** 2).sum()


def test_effective_rank_matches_eigenvalues_and_ignores_padding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 40, 16)) * np.linspace(0.2, 2.0, 16)
    valid = np.ones((3, 40), bool)
    valid[1, 25:] = False
    padded = np.where(valid[..., None], x, 1e3)  # padding must not count
    got = float(health.effective_rank(jnp.asarray(padded), jnp.asarray(valid)))
    np.testing.assert_allclose(got, _participation_ratio(x[valid]), rtol=1e-4)


def test_effective_rank_of_rank_one_and_isotropic_features():
    rng = np.random.default_rng(1)
    line = rng.normal(size=(500, 1)) * rng.normal(size=(1, 32)) + rng.normal(size=(1, 32))
    valid = jnp.ones((500,), bool)
    np.testing.assert_allclose(float(health.effective_rank(jnp.asarray(line), valid)), 1.0, rtol=1e-4)
    iso = float(health.effective_rank(jnp.asarray(rng.normal(size=(4000, 32))), valid.repeat(8)))
    assert 29 < iso <= 32


def test_mean_pairwise_cosine_matches_brute_force():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 9, 5)) + 0.5
    valid = np.ones((2, 9), bool)
    valid[0, 6:] = False
    rows = x[valid]
    u = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
    sim = u @ u.T
    n = len(rows)
    want = (sim.sum() - n) / (n * (n - 1))
    np.testing.assert_allclose(float(health.mean_pairwise_cosine(jnp.asarray(x), jnp.asarray(valid))), want,
                               rtol=1e-5)
    same = jnp.ones((10, 4))
    np.testing.assert_allclose(float(health.mean_pairwise_cosine(same, jnp.ones(10, bool))), 1.0, rtol=1e-6)


def test_code_perplexity_of_uniform_and_constant_codes():
    v = 16
    ids = jnp.arange(64).reshape(4, 16, 1) % v
    valid = jnp.ones((4, 16), bool)
    np.testing.assert_allclose(float(health.code_perplexity(ids, valid, v)[0]), v, rtol=1e-4)
    np.testing.assert_allclose(float(health.code_perplexity(jnp.zeros_like(ids), valid, v)[0]), 1.0, rtol=1e-4)


def test_quantizer_health_on_constructed_probabilities():
    rng = np.random.default_rng(3)
    b, t, g, v = 2, 12, 2, 8
    logits = rng.normal(size=(b, t, g, v)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    argmax = probs.argmax(-1)
    valid = np.ones((b, t), bool)
    valid[1, 8:] = False
    m = health.quantizer_health(jnp.asarray(probs, jnp.float32), jnp.asarray(argmax), jnp.asarray(valid))
    np.testing.assert_allclose(float(m["sampled_is_argmax"]), 1.0)  # a sample that is always the argmax: rate 1
    np.testing.assert_allclose(float(m["max_code_prob"]), probs.max(-1)[valid].mean(), rtol=1e-5)
    p_bar = probs[valid].mean(0)
    np.testing.assert_allclose(float(m["prob_perplexity"]), np.exp(-(p_bar * np.log(p_bar)).sum(-1)).sum(),
                               rtol=1e-4)
    for k in range(g):
        counts = np.bincount(argmax[..., k][valid], minlength=v) / valid.sum()
        nz = counts[counts > 0]
        np.testing.assert_allclose(float(m[f"code_perplexity/g{k}"]), np.exp(-(nz * np.log(nz)).sum()), rtol=1e-4)
    # Sampled codes that never equal the argmax: rate 0.
    other = (argmax + 1) % v
    m = health.quantizer_health(jnp.asarray(probs, jnp.float32), jnp.asarray(other), jnp.asarray(valid))
    assert float(m["sampled_is_argmax"]) == 0.0


def test_codebook_cosine():
    rng = np.random.default_rng(4)
    spread = rng.normal(size=(1, 200, 64))
    assert abs(float(health.codebook_cosine(jnp.asarray(spread)))) < 0.02
    same = np.ones((2, 10, 8))
    np.testing.assert_allclose(float(health.codebook_cosine(jnp.asarray(same))), 1.0, rtol=1e-6)


def test_warnings_fire_on_collapse_and_noise_and_stay_quiet_when_healthy():
    healthy = {"speech/top_rank": 25.0, "speech/sampled_is_argmax": 0.9, "speech/code_perplexity": 80.0,
               "eval/speech/top_rank": 1.0}
    assert health.warnings(healthy, 500, codebook_entries=128) == {}
    sick = {"speech/top_rank": 1.6, "speech/sampled_is_argmax": 0.27, "speech/code_perplexity": 1.5}
    found = health.warnings(sick, 500, codebook_entries=128)
    assert sorted(found) == sorted(sick)
    assert "collapse" in found["speech/top_rank"] and "1.60" in found["speech/top_rank"]
    assert "Gumbel noise" in found["speech/sampled_is_argmax"] and "27%" in found["speech/sampled_is_argmax"]
    assert list(health.warnings({"speech/code_perplexity": 1.2}, 500, codebook_entries=32)) == \
        ["speech/code_perplexity"]  # one code in use is collapse for any codebook size
    assert health.warnings(sick, 10, codebook_entries=128) == {}  # before after_step
