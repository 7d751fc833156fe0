"""One evaluation loop for every fine-tuning task: lockstep batches, prediction, cross-host reduction.

A task's `evaluate` builds its finite stream of a split, then

```python
evaler = Evaler(trainer, params, predict, kind="paired")      # predict: (model, batch) -> device outputs
for batch in evaler.batches(stream, split):                   # EvalBatch per host batch with a real row
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


class Evaler:
    """Runs `predict` over a finite stream of one kind (`paired` for speech tasks, `text` for GLUE) with the
    trainer's lockstep batching (`Trainer.eval_batches`: every process runs the same number of collective steps,
    padding batches where its shard ran out)."""

    def __init__(self, trainer, params: Any, predict: Callable, *, kind: str):
        self.trainer, self.params, self.kind = trainer, params, kind
        self.run = trainer.predict_fn(predict)

    def batches(self, stream, split: str, *, padding_batches: bool = False) -> Iterator[EvalBatch]:
        """EvalBatch per host batch that holds at least one example; with `padding_batches` every batch, so that
        every process yields the same number of rows (for `gather`). All-padding batches run `predict` either way:
        it is a collective step. `stream`: a finite stream with `ids` (the current batch's example ids per kind); an
        empty shard is an error naming the split."""
        first = next(stream, None)
        if first is None:
            raise ValueError(f"split {split!r} of {stream.config.mixture!r} has no example for process "
                             f"{jax.process_index()}")
        template = jax.tree.map(np.zeros_like, first)
        for local in self.trainer.eval_batches(itertools.chain([first], stream), template):
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
