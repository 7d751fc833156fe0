"""GLUE fine-tuning through the encoder's text path: text embedding + the shared layers, pooled, linear head.

```
ids [B, L] -> Embedding + PE + LayerNorm ("text encoder") -> M shared Conformer layers -> pool -> Linear -> logits
```
SLAM §4 evaluates text understanding on GLUE with the text-only path; the pooling and head are not reported (our
choices, `ClassifierConfig`): mean over the sentence's tokens (default) or the output at a prepended [CLS] (the
learned vector STM pre-trains on paired rows), dropout 0.1 on the pooled vector, one linear layer. Classification
tasks train with softmax cross-entropy, STS-B (regression, 1 output) with squared error. Scores: the task's GLUE
metric(s) (`slam_jax.evaluation.glue_metrics`).

Data: a GLUE seqio task registered with `slam_jax.data.glue` (`StreamConfig.mixture = 'glue_sst2'`, ...), rows of
`StreamConfig.text_tokens` tokens, one example per row.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from slam_jax.data import glue
from slam_jax.evaluation import glue_metrics
from slam_jax.evaluation.evaler import Evaler, gather
from slam_jax.finetune.base import FinetuneTask, write_predictions
from slam_jax.layers import common
from slam_jax.model import ModelConfig, SlamEncoder
from slam_jax.objectives.common import masked_mean

Array = jax.Array
POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The GLUE head (gin: `ClassifierConfig.*`). pooling: 'mean' (ours) or 'cls'; head_dropout (ours: 0.1)."""

    pooling: str = "mean"
    head_dropout: float = 0.1

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"ClassifierConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")


class TextClassifier(nnx.Module):
    """The SLAM encoder's text path, pooled, and a linear head with `num_outputs` outputs (1 = regression)."""

    def __init__(self, cfg: ModelConfig, num_outputs: int, head: ClassifierConfig, *, rngs: nnx.Rngs):
        self.cfg, self.pooling, self.dropout = cfg, head.pooling, head.head_dropout
        self.encoder = SlamEncoder(cfg, rngs=rngs)
        self.head = common.dense(cfg.d_model, num_outputs, ("embed", None), dtype=jnp.float32, rngs=rngs)

    def __call__(self, tokens: Array, segment_ids: Array, positions: Array, *, key: Array | None = None) -> Array:
        """tokens / segment_ids / positions int [B, L] (one example per row) -> float32 [B, num_outputs]."""
        enc = self.encoder
        k_enc, k_head = common.split_key(key, 2)
        e = enc.embed_text(tokens, segment_ids, positions)
        if self.pooling == "cls":  # as in paired rows: [CLS] then the text, one local segment
            b = tokens.shape[0]
            cls = jnp.broadcast_to(enc.cls[...].astype(e.dtype), (b, 1, e.shape[-1]))
            seg = jnp.concatenate([jnp.ones((b, 1), jnp.int32), (segment_ids > 0).astype(jnp.int32)], 1)
            pooled = enc.shared(jnp.concatenate([cls, e], 1), seg, seg, key=k_enc)[:, 0]
        else:
            h = enc.shared(e, segment_ids, key=k_enc)
            valid = common.valid_mask(segment_ids)
            pooled = (h.astype(jnp.float32) * valid).sum(1) / jnp.maximum(valid.sum(1), 1.0)
        pooled = common.dropout(pooled.astype(jnp.float32), self.dropout, k_head)
        return self.head(pooled)


class GlueTask(FinetuneTask):
    """Fine-tuning on one GLUE task (`StreamConfig.mixture`, a task of `tasks/glue.py`), scored by its GLUE metric."""

    name = "glue"
    loss_names = ("glue/loss",)
    decode_config_class = ClassifierConfig

    def __init__(self, model_cfg, finetune_cfg, stream_cfg, decode_cfg: ClassifierConfig | None = None):
        super().__init__(model_cfg, finetune_cfg, stream_cfg, decode_cfg)
        self.glue_key = glue.glue_task_of(stream_cfg.mixture)
        self.num_outputs = glue.GLUE_TASKS[self.glue_key].num_classes
        self.regression = self.glue_key in glue_metrics.REGRESSION_TASKS

    def build_model(self, rngs: nnx.Rngs) -> TextClassifier:
        return TextClassifier(self.model_cfg, self.num_outputs, self.decode_cfg, rngs=rngs)

    def losses(self, model: TextClassifier, batch: dict, step: Array, key: Array, train: bool):
        sub = batch["text"]
        out = model(sub["tokens"], sub["segment_ids"], sub["positions"], key=key if train else None)
        rows = (sub["segment_ids"] > 0).any(1)
        labels = sub["labels"]
        if self.regression:
            loss, count = masked_mean(jnp.square(out[:, 0] - labels), rows)
            return loss, {"loss": loss, "glue/loss": loss, "glue/examples": count}
        ids = labels.astype(jnp.int32)
        loss, count = masked_mean(optax.softmax_cross_entropy_with_integer_labels(out, ids), rows)
        accuracy, _ = masked_mean(jnp.argmax(out, -1) == ids, rows)
        return loss, {"loss": loss, "glue/loss": loss, "glue/accuracy": accuracy, "glue/examples": count}

    def train_stream(self, shard_index: int, num_shards: int) -> glue.GlueStream:
        return glue.make_stream(self.stream_cfg, shard_index=shard_index, num_shards=num_shards)

    def evaluate(self, trainer, params: Any, split: str, step: int, out_dir: str | None, *, strict: bool = False
                 ) -> dict[str, float]:
        """The GLUE metric(s) of `split` (x 100) over every example (text rows truncate, nothing is dropped:
        `strict` has nothing to check); writes `out_dir/eval/<mixture>_<split>_step<N>.tsv`
        (id, label, prediction) and `.json` when `out_dir` is given. Predictions are gathered from every host."""
        def predict(model: TextClassifier, batch: dict) -> dict[str, Array]:
            sub = batch["text"]
            out = model(sub["tokens"], sub["segment_ids"], sub["positions"])
            return {"prediction": out[:, 0] if self.regression else jnp.argmax(out, -1).astype(jnp.float32)}

        cfg = dataclasses.replace(self.stream_cfg, split=split, shuffle=False)
        stream = glue.make_stream(cfg, shard_index=jax.process_index(), num_shards=jax.process_count(), finite=True)
        preds, labels, real, ids = [], [], [], []
        for batch in Evaler(trainer, params, predict, kind="text").batches(stream, padding_batches=True):
            preds.append(batch.outputs["prediction"])
            labels.append(batch.local["text"]["labels"])
            real.append(np.isin(np.arange(len(batch.ids)), batch.rows))
            ids += batch.ids
        preds, labels, real = (np.concatenate(x) for x in (preds, labels, real))
        every = [gather(x) for x in (preds, labels, real)]
        keep = every[2].astype(bool)
        scores = glue_metrics.glue_scores(self.glue_key, every[0][keep], every[1][keep])
        scores["examples"] = float(real.sum())
        print(f"{split} step {step}: GLUE {self.glue_key} " + " ".join(f"{k}={v:.2f}" for k, v in scores.items()),
              flush=True)
        if out_dir:
            rows = [(i, f"{label:g}", f"{pred:g}") for i, label, pred in zip(ids, labels.tolist(), preds.tolist()) if i]
            write_predictions(out_dir, cfg.mixture, split, step, ("id", "label", "prediction"), rows,
                              {**scores, "head": dataclasses.asdict(self.decode_cfg)})
        return scores

