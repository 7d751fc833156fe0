"""Retrieval recall of the alignment probes on constructed embeddings."""
import numpy as np
import pytest

from slam_jax.evaluation.probes import retrieval_recall


def _cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_recall_is_one_when_each_query_is_nearest_to_its_pair():
    rng = np.random.default_rng(0)
    speech = rng.normal(size=(50, 16))
    text = speech + 0.01 * rng.normal(size=speech.shape)     # each transcript embeds next to its utterance
    r = retrieval_recall(_cosine(speech, text))
    assert r == {"r1": 1.0, "r5": 1.0}


def test_recall_is_chance_on_shuffled_pairs():
    rng = np.random.default_rng(1)
    n, trials = 100, 20
    r1, r5 = [], []
    for _ in range(trials):
        speech = rng.normal(size=(n, 16))
        text = speech[rng.permutation(n)] + 0.01 * rng.normal(size=speech.shape)  # pairs broken
        r = retrieval_recall(_cosine(speech, text))
        r1.append(r["r1"])
        r5.append(r["r5"])
    assert np.mean(r1) == pytest.approx(1 / n, abs=0.01)
    assert np.mean(r5) == pytest.approx(5 / n, abs=0.02)


def test_items_of_the_same_group_count_as_correct():
    # Items 0 and 1 are the same sentence: query 0 retrieving item 1 is correct only with groups.
    sim = np.array([[0.1, 0.9, 0.0], [0.0, 1.0, 0.2], [0.3, 0.0, 0.5]])
    assert retrieval_recall(sim, ks=(1,)) == {"r1": pytest.approx(2 / 3)}
    assert retrieval_recall(sim, groups=np.array([0, 0, 1]), ks=(1,)) == {"r1": 1.0}
    with pytest.raises(ValueError, match="square"):
        retrieval_recall(np.zeros((2, 3)))
