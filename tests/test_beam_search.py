"""Beam search: beam 1 equals greedy decoding; exhaustive beams return the best-scoring sequence (brute force)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from slam_jax.decoding.beam_search import beam_search, length_penalty
from slam_jax.layers.decoder import DecoderConfig, TransformerDecoder

EOS, START = 1, 0


HISTORY_BONUS = 2.0


def table_logits(table, pos, last, seen):
    """table[position, last token] ([max_length, vocab, vocab]) plus a bonus for token (sum of tokens fed) % vocab:
    the cache carries that sum, so the logits are right only if the search reorders cache rows with their beams."""
    vocab = table.shape[-1]
    return table[pos, last] + HISTORY_BONUS * jax.nn.one_hot(seen % vocab, vocab)


def table_decoder(table: np.ndarray):
    table = jnp.asarray(table, jnp.float32)

    def step_fn(tokens, cache):
        seen = cache["seen"] + tokens
        return table_logits(table, cache["pos"], tokens, seen), {"pos": cache["pos"] + 1, "seen": seen}

    return step_fn


def table_cache(batch):
    return {"pos": jnp.zeros((batch,), jnp.int32), "seen": jnp.zeros((batch,), jnp.int32)}


def greedy(step_fn, cache, batch, max_length):
    """Reference greedy decoding: argmax until EOS, in a Python loop; returns (tokens [B, max_length], log-prob)."""
    tokens = np.zeros((batch, max_length), np.int32)
    logp = np.zeros(batch)
    done = np.zeros(batch, bool)
    last = jnp.full((batch,), START, jnp.int32)
    for t in range(max_length):
        logits, cache = step_fn(last, cache)
        lp = np.asarray(jax.nn.log_softmax(logits, -1))
        best = lp.argmax(-1)
        tokens[:, t] = np.where(done, 0, best)
        logp += np.where(done, 0.0, lp[np.arange(batch), best])
        done |= best == EOS
        last = jnp.asarray(best, jnp.int32)
    return tokens, logp


def brute_force(table: np.ndarray, max_length: int, alpha: float):
    """Every EOS-terminated sequence of at most max_length tokens with its length-penalized score, best first."""
    vocab = table.shape[-1]
    others = [v for v in range(vocab) if v != EOS]
    out = []
    for n in range(1, max_length + 1):
        for prefix in itertools.product(others, repeat=n - 1):
            seq = list(prefix) + [EOS]
            last, seen, total = START, START, 0.0
            for pos, tok in enumerate(seq):
                logits = np.asarray(table_logits(jnp.asarray(table), pos, last, seen))
                total += float(jax.nn.log_softmax(logits)[tok])
                last = tok
                seen += tok
            out.append((total / float(length_penalty(n, alpha)), seq))
    return sorted(out, key=lambda x: -x[0])


def test_beam_one_equals_greedy_on_a_transformer_decoder():
    cfg = DecoderConfig(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, vocab_size=12, dropout=0.0)
    with nnx.use_eager_sharding(False):
        decoder = TransformerDecoder(cfg, 16, rngs=nnx.Rngs(params=3))
    memory = jax.random.normal(jax.random.key(0), (4, 5, 16))
    mask = jnp.asarray(np.arange(5)[None] < np.array([[5], [3], [1], [4]]))
    max_length = 10

    def step_fn(tokens, cache):
        """The decoder with an EOS bonus growing with the position, so that greedy decoding ends in time (beam
        search prefers finished hypotheses; greedy would return an unfinished one)."""
        logits, new = decoder.decode_step(tokens, cache)
        return logits.at[:, EOS].add(0.6 * cache["index"].astype(jnp.float32)), new

    cache = decoder.init_cache(memory, mask, max_length)
    search = jax.jit(lambda c: beam_search(step_fn, c, batch_size=4, beam_size=1, max_length=max_length,
                                           eos_id=EOS, alpha=0.0))
    tokens, scores = search(cache)
    ref_tokens, ref_logp = greedy(step_fn, cache, 4, max_length)
    assert (ref_tokens == EOS).any(1).all() and len({int(np.argmax(r == EOS)) for r in ref_tokens}) > 1
    np.testing.assert_array_equal(np.asarray(tokens[:, 0]), ref_tokens)
    np.testing.assert_allclose(np.asarray(scores[:, 0]), ref_logp, atol=1e-4)


def test_beam_one_equals_greedy_on_a_table():
    rng = np.random.default_rng(0)
    table = rng.normal(scale=2.0, size=(6, 5, 5))
    tokens, scores = beam_search(table_decoder(table), table_cache(2), batch_size=2, beam_size=1, max_length=6,
                                 eos_id=EOS, alpha=0.0)
    ref_tokens, ref_logp = greedy(table_decoder(table), table_cache(2), 2, 6)
    np.testing.assert_array_equal(np.asarray(tokens[:, 0]), ref_tokens)
    np.testing.assert_allclose(np.asarray(scores[:, 0]), ref_logp, atol=1e-5)


def test_exhaustive_beam_returns_the_best_sequences():
    """With beam_size >= every extension of every live prefix, beam search is exact: compare with brute-force
    enumeration, on a decoder where greedy decoding is not optimal (so the test needs the search, not the argmax)."""
    max_length, vocab, beam = 3, 4, 36  # live prefixes at the last step: 3^2 = 9, extensions 9 x 4 = 36
    for seed in range(50):
        table = np.random.default_rng(seed).normal(scale=2.0, size=(max_length, vocab, vocab))
        greedy_tokens, _ = greedy(table_decoder(table), table_cache(1), 1, max_length)
        best = brute_force(table, max_length, alpha=0.6)
        if list(greedy_tokens[0][:len(best[0][1])]) != best[0][1]:
            break
    else:
        raise AssertionError("no table among 50 seeds where greedy decoding is suboptimal")
    tokens, scores = jax.jit(lambda c: beam_search(table_decoder(table), c, batch_size=1, beam_size=beam,
                                                   max_length=max_length, eos_id=EOS, alpha=0.6))(table_cache(1))
    tokens, scores = np.asarray(tokens[0]), np.asarray(scores[0])
    for j in range(5):  # the five best, in order, with their scores
        score, seq = best[j]
        assert list(tokens[j][:len(seq)]) == seq and not tokens[j][len(seq):].any(), (j, tokens[j], seq)
        np.testing.assert_allclose(scores[j], score, rtol=1e-5)


def test_small_beam_beats_greedy_on_a_garden_path():
    """Step 1: token 2 (p=0.6) or 3 (p=0.4); after 2 every continuation is unlikely, after 3 EOS is certain."""
    vocab, max_length = 8, 3
    table = np.full((max_length, vocab, vocab), -30.0)
    table[0, START, 2], table[0, START, 3] = np.log(0.6), np.log(0.4)
    table[1, 2, 2:] = 0.0           # uniform over six tokens: each p = 1/6
    table[1, 3, EOS] = 0.0
    table[2, :, EOS] = 0.0
    step_fn = table_decoder(table)
    greedy_tokens, _ = greedy(step_fn, table_cache(1), 1, max_length)
    assert list(greedy_tokens[0][:2]) == [2, 2]
    tokens, scores = beam_search(step_fn, table_cache(1), batch_size=1, beam_size=2, max_length=max_length,
                                 eos_id=EOS, alpha=0.0)
    assert list(np.asarray(tokens[0, 0])) == [3, EOS, 0]
    np.testing.assert_allclose(float(scores[0, 0]), np.log(0.4), atol=1e-5)
