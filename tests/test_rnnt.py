"""The RNN-T loss against brute force and a numpy forward-backward; its gradients; the decoders against each other
and against an exhaustive search."""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from slam_jax.decoding import rnnt as rnnt_decoding
from slam_jax.layers.transducer import JointNetwork, PredictionNetwork
from slam_jax.objectives import rnnt


@pytest.fixture(autouse=True)
def _no_mesh():
    """Modules built outside a mesh (their parameters carry logical axis names for the trainer's mesh)."""
    with nnx.use_eager_sharding(False):
        yield



def brute_force(lp: np.ndarray, y: np.ndarray) -> float:
    """log p(y|x) summed over every alignment of one utterance: lp [T, U + 1, V]."""
    frames, u_len = lp.shape[0], len(y)
    paths = []
    for emits in itertools.combinations(range(frames + u_len - 1), u_len):
        t = u = 0
        score = 0.0
        for k in range(frames + u_len - 1):
            if k in emits:
                score += lp[t, u, y[u]]
                u += 1
            else:
                score += lp[t, u, 0]
                t += 1
        paths.append(score + lp[frames - 1, u_len, 0])
    return float(np.logaddexp.reduce(paths))


def forward_backward(blank: np.ndarray, emit: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """One utterance's lattices [T, U + 1] / [T, U] -> (log-likelihood, d ll / d blank, d ll / d emit)."""
    frames, width = blank.shape
    alpha = np.full((frames, width), -np.inf)
    beta = np.full((frames, width), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(frames):
        for u in range(width):
            if t > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t - 1, u] + blank[t - 1, u])
            if u > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t, u - 1] + emit[t, u - 1])
    for t in reversed(range(frames)):
        for u in reversed(range(width)):
            if t == frames - 1 and u == width - 1:
                beta[t, u] = blank[t, u]
                continue
            if t < frames - 1:
                beta[t, u] = np.logaddexp(beta[t, u], blank[t, u] + beta[t + 1, u])
            if u < width - 1:
                beta[t, u] = np.logaddexp(beta[t, u], emit[t, u] + beta[t, u + 1])
    ll = alpha[frames - 1, width - 1] + blank[frames - 1, width - 1]
    assert np.isclose(ll, beta[0, 0])
    g_blank = np.zeros_like(blank)
    g_emit = np.zeros_like(emit)
    for t in range(frames):
        for u in range(width):
            after = beta[t + 1, u] if t < frames - 1 else (0.0 if u == width - 1 else -np.inf)
            g_blank[t, u] = np.exp(alpha[t, u] + blank[t, u] + after - ll)
            if u < width - 1:
                g_emit[t, u] = np.exp(alpha[t, u] + emit[t, u] + beta[t, u + 1] - ll)
    return ll, g_blank, g_emit


@pytest.mark.parametrize("frames,u_len,vocab", [(1, 0, 2), (1, 3, 3), (2, 1, 2), (3, 2, 3), (4, 4, 3), (4, 1, 3)])
def test_loss_equals_brute_force_enumeration(frames, u_len, vocab):
    rng = np.random.default_rng(frames * 10 + u_len)
    logits = rng.normal(size=(2, frames, u_len + 1, vocab)) * 2
    labels = rng.integers(1, vocab, size=(2, u_len))
    blank, emit = rnnt.lattice_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), 0)
    got = rnnt.transducer_log_likelihood(blank, emit, jnp.full((2,), frames), jnp.full((2,), u_len))
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), -1))
    want = [brute_force(lp[b], labels[b]) for b in range(2)]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-6)


def test_loss_and_gradient_equal_numpy_forward_backward_with_padding():
    rng = np.random.default_rng(0)
    batch, frames, u_max, vocab = 5, 12, 6, 7
    logits = rng.normal(size=(batch, frames, u_max + 1, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, size=(batch, u_max))
    t_len = np.array([12, 7, 1, 9, 4])
    u_len = np.array([6, 3, 2, 0, 6])
    # Padding holds garbage: it must not change anything.
    logits[1, 7:] = 50.0
    labels[1, 3:] = 0
    blank, emit = _plain_lattices(jnp.asarray(logits), jnp.asarray(labels))
    ll_fn = lambda b, e: rnnt.transducer_log_likelihood(b, e, jnp.asarray(t_len), jnp.asarray(u_len))
    got = ll_fn(blank, emit)
    g_blank, g_emit = jax.grad(lambda b, e: ll_fn(b, e).sum(), argnums=(0, 1))(blank, emit)
    for b in range(batch):
        T, U = t_len[b], u_len[b]
        ll, gb, ge = forward_backward(np.asarray(blank[b, :T, :U + 1], np.float64),
                                      np.asarray(emit[b, :T, :U], np.float64))
        np.testing.assert_allclose(float(got[b]), ll, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(g_blank[b, :T, :U + 1]), gb, atol=1e-5)
        np.testing.assert_allclose(np.asarray(g_emit[b, :T, :U]), ge, atol=1e-5)
        # Nothing outside the row's lattice gets a gradient.
        assert np.abs(np.asarray(g_blank[b])).sum() == pytest.approx(np.abs(gb).sum(), abs=1e-4)
        assert np.abs(np.asarray(g_emit[b])).sum() == pytest.approx(np.abs(ge).sum(), abs=1e-4)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(1, 4, size=(2, 3)))

    def loss(logits):   # padded rows: 5 / 3 frames, 3 / 2 labels
        lattices = rnnt.lattice_log_probs(logits, labels, 0)
        return -rnnt.transducer_log_likelihood(*lattices, jnp.asarray([5, 3]), jnp.asarray([3, 2])).sum()

    with jax.enable_x64(True):
        logits = jnp.asarray(rng.normal(size=(2, 5, 4, 4)), jnp.float64)
        check_grads(loss, (logits,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_fused_lattice_gradient_equals_plain_log_softmax():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 6, 5, 11)), jnp.float32)
    labels = jnp.asarray(rng.integers(1, 11, size=(3, 4)))
    weights = jnp.asarray(rng.normal(size=(3, 6, 5))), jnp.asarray(rng.normal(size=(3, 6, 4)))

    def fused(x):
        b, e = rnnt.lattice_log_probs(x, labels, 0)
        return (b * weights[0]).sum() + (e * weights[1]).sum()

    def plain(x):
        b, e = _plain_lattices(x, labels)
        return (b * weights[0]).sum() + (e * weights[1]).sum()

    np.testing.assert_allclose(fused(logits), plain(logits), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(plain)(logits), atol=1e-5)


def _plain_lattices(x, labels):
    """The lattices through an ordinary log_softmax and gathers (the reference for the fused VJP)."""
    lp = jax.nn.log_softmax(x, -1)
    return lp[..., 0], jnp.take_along_axis(lp[:, :, :-1], labels[:, None, :, None], -1)[..., 0]


def test_chunked_joint_equals_one_chunk_in_value_and_gradient():
    rngs = nnx.Rngs(0)
    joint = JointNetwork(8, 6, 10, 13, rngs=rngs)
    rng = np.random.default_rng(3)
    enc = jnp.asarray(rng.normal(size=(2, 7, 8)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    labels = jnp.asarray(rng.integers(1, 13, size=(2, 3)))
    frames = jnp.asarray([[True] * 7, [True] * 5 + [False] * 2])
    valid = jnp.asarray([[True] * 3, [True, True, False]])

    def loss(joint, enc, chunk):
        lattices = rnnt.chunked_lattice_log_probs(joint.lattice, joint.project_encoder(enc),
                                                  joint.project_predictor(pred), labels, 0, chunk)
        return rnnt.rnnt_loss(*lattices, frames, valid)[0]

    grad = nnx.grad(loss, argnums=(0, 1))
    whole, (g_joint, g_enc) = loss(joint, enc, 0), grad(joint, enc, 0)
    for chunk in (3, 7):
        np.testing.assert_allclose(loss(joint, enc, chunk), whole, rtol=1e-6)
        c_joint, c_enc = grad(joint, enc, chunk)
        np.testing.assert_allclose(c_enc, g_enc, atol=1e-6)
        for a, b in zip(jax.tree.leaves(nnx.state(c_joint)), jax.tree.leaves(nnx.state(g_joint))):
            np.testing.assert_allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------------------------------------ decoding
class TinyTransducer(nnx.Module):
    def __init__(self, vocab: int, seed: int):
        rngs = nnx.Rngs(seed)
        self.predictor = PredictionNetwork(vocab, 6, 8, 2, rngs=rngs)
        self.joint = JointNetwork(5, 8, 12, vocab, rngs=rngs)

    def callables(self):
        def predict(tokens, state):
            out, state = self.predictor.step(tokens, state)
            return self.joint.project_predictor(out), state
        return self.joint, predict


def _decode(model, enc, lengths, beam):
    joint, predict = model.callables()
    encoder = model.joint.project_encoder(enc)
    if beam is None:
        return rnnt_decoding.greedy_search(joint, predict, model.predictor.initial_state(enc.shape[:1]), encoder,
                                           lengths, max_symbols=1)
    return rnnt_decoding.modified_beam_search(joint, predict, model.predictor.initial_state((enc.shape[0], beam)),
                                              encoder, lengths, beam_size=beam)


def test_greedy_equals_beam_search_with_beam_one():
    model = TinyTransducer(vocab=9, seed=0)
    rng = np.random.default_rng(4)
    enc = jnp.asarray(rng.normal(size=(4, 10, 5)) * 3, jnp.float32)
    lengths = jnp.asarray([10, 6, 1, 8])
    greedy, beam = _decode(model, enc, lengths, None), _decode(model, enc, lengths, 1)
    assert int(greedy.lengths.sum()) > 0   # the model emits labels: the comparison is not trivially empty
    np.testing.assert_array_equal(greedy.lengths, beam.lengths)
    for b in range(4):
        np.testing.assert_array_equal(greedy.tokens[b, :greedy.lengths[b]], beam.tokens[b, :beam.lengths[b]])
    np.testing.assert_allclose(greedy.scores, beam.scores, rtol=1e-5)


def _exhaustive(model, enc_row, frames, vocab):
    """Every choice of (blank or one label) per frame, their probabilities summed per label sequence."""
    joint, predict = model.callables()
    encoder = model.joint.project_encoder(enc_row[None])[0]
    totals: dict[tuple, float] = {}
    for choices in itertools.product(range(vocab), repeat=frames):
        state = model.predictor.initial_state((1,))
        pred, state = predict(jnp.zeros((1,), jnp.int32), state)
        score, seq = 0.0, []
        for t, c in enumerate(choices):
            logp = jax.nn.log_softmax(joint(encoder[t][None], pred), -1)[0]
            score += float(logp[c])
            if c != 0:
                seq.append(c)
                pred, state = predict(jnp.asarray([c], jnp.int32), state)
        key = tuple(seq)
        totals[key] = float(np.logaddexp(totals.get(key, -np.inf), score))
    best = max(totals, key=totals.get)
    return best, totals[best]


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_finds_the_exhaustive_best_sequence(seed):
    vocab, frames = 3, 4
    model = TinyTransducer(vocab=vocab, seed=seed)
    enc = jnp.asarray(np.random.default_rng(seed).normal(size=(1, frames, 5)) * 2, jnp.float32)
    best, score = _exhaustive(model, enc[0], frames, vocab)
    # A beam that holds every prefix (1 + 2 + 4 + 8 + 16 = 31 for 2 labels and 4 frames) makes the search exact.
    hyp = _decode(model, enc, jnp.asarray([frames]), 32)
    assert tuple(np.asarray(hyp.tokens[0, :hyp.lengths[0]]).tolist()) == best
    np.testing.assert_allclose(float(hyp.scores[0]), score, rtol=1e-5)


def test_greedy_caps_symbols_per_frame():
    vocab = 5
    model = TinyTransducer(vocab=vocab, seed=0)
    # A joint whose argmax is never the blank: each frame emits exactly max_symbols labels.
    joint = lambda e, p: jnp.zeros(jnp.broadcast_shapes(e.shape[:-1], p.shape[:-1]) + (vocab,)).at[..., 2].set(5.0)
    _, predict = model.callables()
    enc = jnp.zeros((2, 4, 12))
    for cap in (1, 3):
        hyp = rnnt_decoding.greedy_search(joint, predict, model.predictor.initial_state((2,)), enc,
                                          jnp.asarray([4, 2]), max_symbols=cap)
        np.testing.assert_array_equal(hyp.lengths, [4 * cap, 2 * cap])
        assert (np.asarray(hyp.tokens[0, :4 * cap]) == 2).all()


# ------------------------------------------------------------------------------------------ the task, end to end
def test_rnnt_finetune_evaluates_greedy_and_beam_into_separate_files(tmp_path):
    from train_utils import FINETUNE_SMALL, _run, last_json, read_metrics
    args = [f"--model_dir={tmp_path}", *FINETUNE_SMALL, "--gin_file=finetune/mini_rnnt.gin",
            "--gin.TransducerConfig.predictor_units=16", "--gin.TransducerConfig.predictor_embed_dim=16",
            "--gin.TransducerConfig.joint_dim=16", "--gin.TransducerConfig.loss_time_chunk=16"]
    _run("slam_jax.cli.finetune", [*args, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.eval_every=2"], True, 900)
    records = read_metrics(tmp_path)
    losses = [r["asr/rnnt_loss"] for r in records if "asr/rnnt_loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0
    evals = [r for r in records if "eval/wer" in r]
    assert [r["step"] for r in evals] == [2] and evals[0]["eval/utterances"] == 64
    greedy = next((tmp_path / "eval").glob("*_validation_step2.tsv")).read_text().splitlines()
    assert greedy[0] == "id\treference\thypothesis" and len(greedy) == 65
    beam = last_json(_run("slam_jax.cli.eval", [f"--model_dir={tmp_path}",
                                                      "--gin.TransducerConfig.beam_size=2"], True, 900).stdout)
    assert beam["task"] == "asr_rnnt" and beam["utterances"] == 64 and np.isfinite(beam["wer"])
    assert next((tmp_path / "eval").glob("*_validation_step2_beam_size2.json"))


def test_result_file_names_carry_decoding_settings_only():
    from slam_jax.finetune.asr_rnnt import TransducerConfig
    from slam_jax.finetune.base import decode_tag
    assert decode_tag(TransducerConfig(predictor_units=16, joint_dim=16)) == ""
    assert decode_tag(TransducerConfig(predictor_units=16, beam_size=4)) == "_beam_size4"


def test_slam_data_vocab_trains_word_pieces_with_the_project_ids(tmp_path, capsys, monkeypatch):
    import sentencepiece as spm
    from slam_jax.cli import data as data_cli
    from slam_jax.data import sources
    mini = os.path.join(sources.MINI_CORPUS, "train")
    assert data_cli.main(["vocab", f"--text_file={mini}", "--vocab_size=128", f"--output_prefix={tmp_path}/v128"]) == 0
    assert "128 pieces" in capsys.readouterr().out
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "v128.model"))
    assert sp.get_piece_size() == 128 and (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    text = "THE SAILOR TIED A STRONG KNOT"
    assert sp.decode(sp.encode(text)) == text
    # Identity normalization but for U+FEFF, in a non-empty charsmap (vocab.NORMALIZATION_RULES), as the bundled models.
    assert sp.encode("\ufeff" + text) == sp.encode(text) and sp.encode(text.lower()) != sp.encode(text)
    from sentencepiece import sentencepiece_model_pb2
    for path in (tmp_path / "v128.model", os.path.join(sources.MINI_CORPUS, "spm.model"),
                 os.path.join(sources.MINI_CORPUS, "st_de", "spm.model")):
        proto = sentencepiece_model_pb2.ModelProto.FromString(open(path, "rb").read())
        assert proto.normalizer_spec.precompiled_charsmap, path
    assert data_cli.main(["vocab", f"--text_file={tmp_path}/nothing", f"--output_prefix={tmp_path}/x"]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    # Relative paths are the working directory's (the trainer works in a temp folder of its own).
    monkeypatch.chdir(tmp_path)
    assert data_cli.main(["vocab", f"--text_file={os.path.relpath(mini, tmp_path)}", "--vocab_size=64",
                          "--output_prefix=rel/v64"]) == 0
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "rel" / "v64.model")).get_piece_size() == 64
