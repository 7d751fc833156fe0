"""One evaluation loop for pre-training and every fine-tuning task: lockstep batches, prediction, cross-host
reduction.

Pre-training's held-out evaluation averages the trainer's eval step (every objective's losses, accuracies and health
metrics) over the batches: `Evaler(trainer, params).mean_losses(stream, template, step)`. A fine-tuning task's
`evaluate` (and the alignment probes) builds its finite stream of a split, then

```python
evaler = Evaler(trainer, params, predict, kind="paired")      # predict: (model, batch) -> device outputs
for batch in evaler.batches(stream):                          # EvalBatch per host batch with a real row
    ...  # batch.outputs (NumPy), batch.local (the host batch), batch.rows (indices of real rows), batch.ids
totals = sum_over_processes(counts)      # additive statistics (error counts, BLEU n-grams), or
every = gather(predictions)              # every process' rows (GLUE's metrics; batches(..., padding_batches=True))
```

and writes its predictions with `finetune.base.write_predictions`. The metric is the task's (WER, BLEU, GLUE); the
loop, the padding batches that keep processes in lockstep, and the reductions are here once.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Iterator

import jax
import numpy as np


@dataclasses.dataclass
class EvalBatch:
    """One host batch of an evaluation: `local` (the batch, schema.py), `outputs` (the predict function's NumPy
    outputs, rows as `local`), `rows` (indices of the rows that hold an example) and `ids` (every row's example
    id, "" for padding rows)."""

    local: dict
    outputs: dict[str, np.ndarray]
    rows: np.ndarray
    ids: list[str]


def lockstep_batches(stream: Iterator[dict], template: dict, n_batches: int, *, partial_ok: bool = False
                     ) -> Iterator[dict]:
    """This process' host batches of a finite `stream`, in lockstep with the other processes.

    Every process must run the same number of (collective) eval steps: `n_batches` (`TrainConfig.eval_batches`)
    when set (required with several processes), else one pass over the stream. A process whose shard ran out yields
    all-padding batches shaped like `template` (a training batch); so does a kind the stream lacks. A metric of the
    whole split (WER, BLEU, ...: `partial_ok=False`) prints a warning when `n_batches` stops before this process'
    shard is exhausted, since its score then covers only part of the split.
    """
    from slam_jax import config
    if jax.process_count() > 1 and not n_batches:
        raise config.ConfigError("multi-process evaluation needs TrainConfig.eval_batches > 0")
    empty = jax.tree.map(np.zeros_like, template)
    i = 0
    while not n_batches or i < n_batches:
        local = next(stream, None)
        if local is None:
            if not n_batches:
                return
            local = empty
        yield {k: local.get(k, empty[k]) for k in template}
        i += 1
    rest = None if partial_ok else next(stream, None)
    if rest is not None and any((sub["segment_ids"] > 0).any() for sub in rest.values()):
        print(f"warning: TrainConfig.eval_batches = {n_batches} ended before process {jax.process_index()}'s shard "
              "of the split did, so the score covers part of the split; with N processes eval_batches must reach "
              "split size / (N x rows per process), and one process can use --eval_batches=0 (all of it)",
              flush=True)


class Evaler:
    """Evaluates `params` with the trainer's mesh and lockstep batching (`lockstep_batches`: every process runs the
    same number of collective steps, padding batches where its shard ran out): `batches` runs `predict` over a finite
    stream of one kind (`paired` for speech tasks, `text` for GLUE); `mean_losses` runs the pre-training eval step."""

    def __init__(self, trainer, params: Any, predict: Callable | None = None, *, kind: str | None = None):
        self.trainer, self.params, self.kind = trainer, params, kind
        self.run = trainer.predict_fn(predict) if predict is not None else None

    def lockstep(self, stream: Iterator[dict], template: dict, *, partial_ok: bool = False) -> Iterator[dict]:
        return lockstep_batches(stream, template, self.trainer.train_cfg.eval_batches, partial_ok=partial_ok)

    def mean_losses(self, stream: Iterator[dict], template: dict, step: int) -> dict[str, float]:
        """Pre-training: `eval/<metric>` means of the trainer's eval step over the batches where the metric's kind
        has data (`TrainConfig.eval_batches` of them, or the whole split); `template` is a training batch."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for local in self.lockstep(stream, template, partial_ok=True):
            metrics = self.trainer.eval_metrics(self.params, local, step)
            present = {kind: float(metrics.get(key, 0)) > 0 for kind, key in
                       (("speech", "speech/frames"), ("text", "text/tokens"), ("paired", "paired/pairs"))}
            for k, v in metrics.items():
                kind = k.split("/")[0]
                if present.get(kind, any(present.values())):
                    sums[k] = sums.get(k, 0.0) + float(v)
                    counts[k] = counts.get(k, 0) + 1
        return {f"eval/{k}": v / counts[k] for k, v in sums.items()}

    def batches(self, stream, *, padding_batches: bool = False) -> Iterator[EvalBatch]:
        """EvalBatch per host batch that holds at least one example; with `padding_batches` every batch, so that
        every process yields the same number of rows (for `gather`). All-padding batches run `predict` either way:
        it is a collective step. `stream`: a finite stream with `ids` (the current batch's example ids per kind); an
        empty shard is an error naming the split (`stream.config.split`). Batches hold this evaler's kind only."""
        if self.run is None or self.kind is None:
            raise TypeError("Evaler.batches needs a predict function and a kind: Evaler(trainer, params, predict, "
                            "kind='paired' | 'text')")
        split = stream.config.split
        first = next(stream, None)
        if first is None:
            raise ValueError(f"split {split!r} of {stream.config.mixture!r} is empty for process "
                             f"{jax.process_index()} of {jax.process_count()} (a split needs at least one example "
                             "per process)")
        if self.kind not in first:
            raise ValueError(f"split {split!r} of {stream.config.mixture!r} has no {self.kind} data: this "
                             f"evaluation reads {self.kind} rows (kinds there: {', '.join(sorted(first))})")
        template = {self.kind: jax.tree.map(np.zeros_like, first[self.kind])}
        for local in self.lockstep(itertools.chain([first], stream), template):
            sub = local[self.kind]
            real = (sub["segment_ids"] > 0).any(1)
            outputs = self.run(self.params, local)
            if not real.any() and not padding_batches:
                continue
            known = stream.ids.get(self.kind, [])
            ids = [known[i] if i < len(known) and real[i] else "" for i in range(len(real))]
            yield EvalBatch(local=local, outputs=outputs, rows=np.nonzero(real)[0], ids=ids)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
    """Additive statistics [n] summed over every process (itself with one process)."""
    values = np.asarray(values)
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(values)).reshape(-1, values.size).sum(0)


def gather(rows: np.ndarray) -> np.ndarray:
    """Every process' rows [n, ...], process after process (processes run the same number of equal-size eval
    batches, so every process holds the same number of rows)."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(rows)).reshape((-1,) + rows.shape[1:])
