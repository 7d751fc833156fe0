"""Frozen-feature probes of every encoder layer (SUPERB practice): what does each layer know, without fine-tuning?

The encoder stays frozen; its features of each layer (`SlamEncoder.speech_representations`: z, the N speech layers,
the M shared layers) and, as a baseline, the log-mel input (4 frames stacked, aligned with the 4x subsampling) are
extracted once, then a small model is trained on each:

- Character CTC: a linear layer (features standardized with the training set's statistics) over 26 letters, space
  and apostrophe + blank, trained with CTC on a small labelled subset (`train_seconds` of a paired split, about 10
  minutes) and scored by greedy decoding on another split: CER. Frames are repeated `upsample` times so that fast
  speech (more characters than 25 Hz frames) stays feasible for CTC (our choice; infeasible utterances are counted
  and left out). A probe that emits the same string for every utterance has learned nothing whatever its CER, so
  the degenerate-output check is reported beside it: distinct hypotheses, empty hypotheses, share of the most
  frequent character.
- Speaker identification: the utterance mean of each layer's frames, a logistic regression over the speakers of the
  evaluation split (held-out voices), trained on half of each speaker's utterances and scored on the other half.

A random-initialized encoder of the same configuration is the other baseline (`slam-eval --layer_probes --random_init`).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slam_jax.decoding import ctc as ctc_decoding

CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ '"  # the LibriSpeech transcript alphabet; CTC blank = 0, CHARS[i] = id i + 1


def encode_chars(text: str) -> list[int]:
    """Upper-cased transcript -> character ids (1..len(CHARS)); characters outside CHARS are dropped."""
    return [CHARS.index(ch) + 1 for ch in text.upper() if ch in CHARS]


def decode_chars(ids: Sequence[int]) -> str:
    return "".join(CHARS[i - 1] for i in ids if 0 < i <= len(CHARS))


def stack_frames(features: np.ndarray, factor: int = 4) -> np.ndarray:
    """Log-mel [T, 80] -> [ceil(T / factor), 80 * factor]: consecutive frames side by side (zero-padded)."""
    t, f = features.shape
    out = -(-t // factor)
    padded = np.zeros((out * factor, f), features.dtype)
    padded[:t] = features
    return padded.reshape(out, factor * f)


# ------------------------------------------------------------------------------------------------ extraction
@dataclasses.dataclass
class Utterances:
    """Frozen features of a split: `layers[name][i]` float32 [frames_i, dim] for utterance i."""

    ids: list[str]
    texts: list[str]
    speakers: list[str]
    layers: dict[str, list[np.ndarray]]

    @property
    def seconds(self) -> float:
        return sum(len(x) for x in self.layers["logmel"]) * 0.04  # 25 frames per second after subsampling


def layer_names(num_speech: int, num_shared: int) -> list[str]:
    """Names of `speech_representations`' layers: z, speech_1..N, shared_1..M."""
    return ["z"] + [f"speech_{i + 1}" for i in range(num_speech)] + [f"shared_{i + 1}" for i in range(num_shared)]


def extract(trainer, params: Any, stream, vocabulary, names: Sequence[str],
            max_seconds: float | None = None) -> Utterances:
    """Runs the frozen encoder over the paired rows of a finite `stream` (one process) until `max_seconds` of audio.

    `trainer`: a pre-training Trainer (its model is a SlamModel); `vocabulary`: decodes the transcript tokens.
    """
    def representations(model, batch):
        layers, _ = model.encoder.speech_representations(batch["paired"]["features"],
                                                         batch["paired"]["segment_ids"])
        return {"layers": jnp.moveaxis(layers, 0, 1).astype(jnp.float32)}  # [B, L, T', d]

    run = trainer.predict_fn(representations)
    out = Utterances(ids=[], texts=[], speakers=[], layers={name: [] for name in ["logmel", *names]})
    seconds = 0.0
    for local in stream:
        sub = local.get("paired")
        if sub is None:
            continue
        ids = stream.ids.get("paired", [])
        layers = run(params, {"paired": sub})["layers"]
        for row in range(sub["segment_ids"].shape[0]):
            frames = int((sub["segment_ids"][row] > 0).sum())
            if frames == 0:
                continue
            kept = -(-frames // 4)
            tokens = sub["tokens"][row][sub["token_segment_ids"][row] > 0]
            example = ids[row] if row < len(ids) else str(len(out.ids))
            out.ids.append(example)
            out.texts.append(vocabulary.decode([int(t) for t in tokens if t > 1]))
            out.speakers.append(example.split("-")[0])
            out.layers["logmel"].append(stack_frames(sub["features"][row, :frames]))
            for i, name in enumerate(names):
                out.layers[name].append(np.asarray(layers[row, i, :kept]))
            seconds += frames / 100.0
            if max_seconds is not None and seconds >= max_seconds:
                return out
    return out


# ------------------------------------------------------------------------------------------------ probes
def _pad(xs: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Utterances [T_i, D] -> (float32 [N, length, D], paddings float32 [N, length]: 1 = padding)."""
    out = np.zeros((len(xs), length, xs[0].shape[-1]), np.float32)
    pad = np.ones((len(xs), length), np.float32)
    for i, x in enumerate(xs):
        out[i, :len(x)] = x
        pad[i, :len(x)] = 0
    return out, pad


def _ctc_feasible(frames: int, labels: Sequence[int]) -> bool:
    repeats = sum(a == b for a, b in zip(labels, labels[1:]))
    return 0 < len(labels) and len(labels) + repeats <= frames


@dataclasses.dataclass
class CtcProbeResult:
    cer: float                 # corpus-level CER
    hypotheses: list[str]
    utterance_cer: list[float] # per evaluation utterance (for paired tests between encoders)
    distinct_fraction: float   # distinct hypotheses / utterances
    empty_fraction: float
    top_char_share: float      # share of the most frequent character among all emitted characters
    skipped_train: int         # training utterances CTC cannot align (too many characters for their frames)

    @property
    def degenerate(self) -> bool:
        """The same (or no) output for nearly every utterance: the probe learned nothing, whatever its CER."""
        return self.distinct_fraction < 0.1 or self.empty_fraction > 0.5


def ctc_probe(train_x: Sequence[np.ndarray], train_texts: Sequence[str], eval_x: Sequence[np.ndarray],
              eval_texts: Sequence[str], *, steps: int = 1000, batch_size: int = 32, learning_rate: float = 3e-3,
              upsample: int = 2, seed: int = 0) -> CtcProbeResult:
    """Trains a linear character-CTC head on frozen features and scores greedy decoding by CER (jiwer).

    Args: train_x / eval_x: per-utterance features [T_i, D]; *_texts: transcripts. Returns a CtcProbeResult.
    """
    import jiwer
    train_y = [encode_chars(t) for t in train_texts]
    keep = [i for i, (x, y) in enumerate(zip(train_x, train_y)) if _ctc_feasible(len(x) * upsample, y)]
    if not keep:
        raise ValueError("no training utterance is feasible for character CTC")
    xs = [np.repeat(train_x[i], upsample, 0) for i in keep]
    ys = [train_y[i] for i in keep]
    mean = np.concatenate(xs).mean(0)
    std = np.concatenate(xs).std(0) + 1e-5
    x, xpad = _pad([(a - mean) / std for a in xs], max(len(a) for a in xs))
    y = np.zeros((len(ys), max(len(a) for a in ys)), np.int32)
    ypad = np.ones(y.shape, np.float32)
    for i, a in enumerate(ys):
        y[i, :len(a)], ypad[i, :len(a)] = a, 0
    classes = len(CHARS) + 1
    params = {"w": jnp.zeros((x.shape[-1], classes)), "b": jnp.zeros((classes,))}
    tx = optax.adam(learning_rate)
    opt = tx.init(params)

    def loss_fn(p, xb, xp, yb, yp):
        logits = xb @ p["w"] + p["b"]
        return optax.ctc_loss(logits, xp, yb, yp, blank_id=0).mean()

    @jax.jit
    def update(p, o, xb, xp, yb, yp):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, xp, yb, yp)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(seed)
    b = min(batch_size, len(ys))
    for _ in range(steps):
        idx = rng.choice(len(ys), b, replace=False)
        params, opt, _ = update(params, opt, x[idx], xpad[idx], y[idx], ypad[idx])

    hyps = []
    w, bias = np.asarray(params["w"]), np.asarray(params["b"])
    for feats in eval_x:
        best = (((np.repeat(feats, upsample, 0) - mean) / std) @ w + bias).argmax(-1)
        hyps.append(decode_chars(ctc_decoding.greedy_decode(best, len(best))))
    refs = [decode_chars(encode_chars(t)) for t in eval_texts]
    chars = collections.Counter("".join(hyps))
    return CtcProbeResult(
        cer=float(jiwer.cer(refs, hyps)), hypotheses=hyps,
        utterance_cer=[float(jiwer.cer(r, h)) if r else float(bool(h)) for r, h in zip(refs, hyps)],
        distinct_fraction=len(set(hyps)) / len(hyps), empty_fraction=sum(not h for h in hyps) / len(hyps),
        top_char_share=max(chars.values()) / sum(chars.values()) if chars else 1.0,
        skipped_train=len(train_x) - len(keep))


def speaker_probe(x: np.ndarray, speakers: Sequence[str]) -> dict[str, float | None]:
    """Speaker identification from utterance vectors x [N, D]: logistic regression trained on every other utterance
    of each speaker and scored on the rest. Returns {"accuracy", "chance" (1 / speakers), "speakers"}; accuracy and
    chance are None (not measurable) with fewer than two speakers of two utterances each (e.g. a tiny dev split), so
    that the character-CTC probes of the same run still report."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    speakers = np.asarray(speakers)
    seen: dict[str, int] = collections.Counter()
    train = np.zeros(len(speakers), bool)
    for i, s in enumerate(speakers):
        train[i] = seen[s] % 2 == 0
        seen[s] += 1
    both = [s for s in seen if seen[s] >= 2]
    use = np.isin(speakers, both)
    if len(both) < 2:
        return {"accuracy": None, "chance": None, "speakers": len(both)}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x[use & train], speakers[use & train])
    accuracy = float((model.predict(x[use & ~train]) == speakers[use & ~train]).mean())
    return {"accuracy": accuracy, "chance": 1.0 / len(both), "speakers": len(both)}
