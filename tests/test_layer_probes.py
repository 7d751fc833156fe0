"""Frozen-feature probes on constructed features: they recover what is there and stay at chance when nothing is."""
import numpy as np

from slam_jax.evaluation import layer_probes

WORDS = ["CAT", "DOG", "BIRD", "FISH", "TREE", "STONE", "RIVER", "CLOUD"]


def _utterances(rng, n, table, noise=0.3):
    """Each character held for 2-3 frames, a frame = the character's row of `table` (+ noise), a blank-like row
    between characters: a linearly decodable case."""
    dim = table.shape[1]
    feats, texts = [], []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS, size=3))
        frames = []
        for ch in text:
            frames += [table[layer_probes.encode_chars(ch)[0]]] * int(rng.integers(2, 4))
            frames += [table[0]]  # a blank-like frame between characters keeps repeats apart
        x = np.asarray(frames) + noise * rng.normal(size=(len(frames), dim))
        feats.append(x.astype(np.float32))
        texts.append(text)
    return feats, texts


def test_chars_round_trip():
    assert layer_probes.decode_chars(layer_probes.encode_chars("it's a Cat!")) == "IT'S A CAT"


def test_stack_frames_aligns_with_the_subsampling():
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    out = layer_probes.stack_frames(x)
    assert out.shape == (3, 8)
    np.testing.assert_array_equal(out[0], x[:4].ravel())
    np.testing.assert_array_equal(out[2, 4:], 0)


def test_ctc_probe_recovers_a_separable_case_and_fails_on_shuffled_transcripts():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(layer_probes.CHARS) + 1, 40))
    train_x, train_t = _utterances(rng, 96, table)
    eval_x, eval_t = _utterances(rng, 24, table)
    good = layer_probes.ctc_probe(train_x, train_t, eval_x, eval_t, steps=300, upsample=1)
    assert good.cer < 0.1 and not good.degenerate
    shuffled = list(rng.permutation(train_t))
    bad = layer_probes.ctc_probe(train_x, shuffled, eval_x, eval_t, steps=300, upsample=1)
    assert bad.cer > 0.5


def test_degenerate_output_is_flagged():
    rng = np.random.default_rng(1)
    train_x, train_t = _utterances(rng, 32, rng.normal(size=(len(layer_probes.CHARS) + 1, 40)))
    const = [np.ones_like(x) for x in train_x]  # every frame the same: nothing to read
    result = layer_probes.ctc_probe(const, train_t, const[:8], train_t[:8], steps=100, upsample=1)
    assert result.degenerate and result.distinct_fraction <= 1 / 8


def test_speaker_probe_separable_and_shuffled():
    rng = np.random.default_rng(2)
    speakers = np.repeat([f"s{i}" for i in range(6)], 10)
    centres = {s: rng.normal(size=16) * 3 for s in set(speakers)}
    x = np.stack([centres[s] + rng.normal(size=16) for s in speakers])
    good = layer_probes.speaker_probe(x, speakers)
    assert good["accuracy"] == 1.0 and good["chance"] == 1 / 6
    noise = rng.normal(size=x.shape)
    chance = np.mean([layer_probes.speaker_probe(noise, list(rng.permutation(speakers)))["accuracy"]
                      for _ in range(5)])
    assert chance < 0.4


def test_speaker_probe_without_two_speakers_is_not_measurable():
    x = np.random.default_rng(0).normal(size=(5, 4))
    # One speaker with four utterances and one with a single utterance: nothing to tell apart.
    result = layer_probes.speaker_probe(x, ["a", "a", "a", "a", "b"])
    assert result == {"accuracy": None, "chance": None, "speakers": 1}
