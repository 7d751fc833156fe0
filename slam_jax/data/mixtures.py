"""A top-level mixture's structure: which children yield speech / text / paired examples (`sources.kind_of`), the
tasks under them, the vocabulary they share and the global rows each kind gets per batch."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import seqio

from slam_jax.data import schema, sources


def kind_children(mixture: str) -> dict[str, list[tuple[str, float]]]:
    """{kind: [(task or kind-mixture name, rate)]} of a registered top-level mixture (or a single task)."""
    if mixture in seqio.TaskRegistry.names():
        return {sources.kind_of(mixture): [(mixture, 1.0)]}
    if mixture not in seqio.MixtureRegistry.names():
        raise ValueError(f"no seqio mixture or task named {mixture!r}; did you `import tasks`? "
                         f"registered mixtures: {sorted(seqio.MixtureRegistry.names())}")
    out: dict[str, list[tuple[str, float]]] = {}
    for name, rate in seqio.get_mixture_or_task(mixture).rate_per_task_name.items():
        if callable(rate):
            raise ValueError(f"mixture {mixture!r}: the rate of {name!r} must be a number, got a function")
        if float(rate) > 0:
            out.setdefault(sources.kind_of(name), []).append((name, float(rate)))
    return out


def kind_tasks(children: Sequence[tuple[str, float]]) -> list[seqio.Task]:
    """Every task under the given children, sorted by name."""
    tasks: set[seqio.Task] = set()
    for name, _ in children:
        provider = seqio.get_mixture_or_task(name)
        tasks.update(provider.tasks if isinstance(provider, seqio.Mixture) else [provider])
    return sorted(tasks, key=lambda t: t.name)


def all_tasks(mixture: str) -> list[seqio.Task]:
    """Every task of the mixture, validated to share one output-feature schema (`sources.check_compatible`)."""
    tasks = sorted({t for children in kind_children(mixture).values() for t in kind_tasks(children)},
                   key=lambda t: t.name)
    sources.check_compatible(tasks)
    return tasks


def vocabulary_for(mixture: str, feature: str = "text") -> seqio.Vocabulary:
    """The vocabulary of `feature` ("text", or "source_text": a translation pair's transcript) that every task of
    `mixture` shares (size: `.vocab_size`)."""
    return all_tasks(mixture)[0].output_features[feature].vocabulary


def kind_batch_sizes(mixture: str, batch_size: int, num_shards: int = 1) -> dict[str, int]:
    """Global rows per kind: the top-level rates times `batch_size`, rounded by largest remainder.

    Raises ValueError when a kind with a positive rate gets no row, or a kind's rows do not split over the hosts.
    """
    rates = {k: sum(r for _, r in c) for k, c in kind_children(mixture).items()}
    total = sum(rates.values())
    exact = {k: batch_size * r / total for k, r in rates.items()}
    rows = {k: int(np.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (rows[k] - exact[k], k))[:batch_size - sum(rows.values())]:
        rows[k] += 1
    for k, n in rows.items():
        if n == 0:
            raise ValueError(f"mixture {mixture!r}: kind {k!r} has rate {rates[k]:g} of {total:g} but batch_size "
                             f"{batch_size} gives it no row; raise batch_size")
        if n % num_shards:
            raise ValueError(f"mixture {mixture!r}: kind {k!r} gets {n} of {batch_size} global rows, which do not "
                             f"split over {num_shards} hosts; choose batch_size so every kind's rows divide")
    return {k: rows[k] for k in schema.KINDS if k in rows}
