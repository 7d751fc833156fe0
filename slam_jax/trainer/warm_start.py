"""Warm start: parameters from another run's latest checkpoint (t5x's `init_from`), strict by default."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from slam_jax import checkpointing


class WarmStartError(ValueError):
    """The checkpoint lacks parameters that must come from it; the message names them."""


def _group(name: str) -> str:
    """The report's row of a parameter: its first two path components (`encoder/speech_layers`, `ctc/kernel`)."""
    return "/".join(name.split("/")[:2])


def warm_start(directory: str, trainer, fresh_params: Any, *, allow_fresh: Sequence[str], setting: str,
               keep_fresh: Sequence[str] = ()) -> Any:
    """Every parameter of `trainer`'s model from `directory`'s latest checkpoint (same name and shape); those under
    a prefix in `allow_fresh` may be missing there, and those under a prefix in `keep_fresh` are not restored: both
    keep `fresh_params`. Prints a short table of restored and fresh arrays per module. Raises WarmStartError naming
    the others (a run of another size or vocabulary) and `setting` (the gin binding the user set),
    FileNotFoundError when `directory` has no checkpoint."""
    names = list(checkpointing._paths_and_shapes(trainer.abstract_params))
    unmatched = [p for p in keep_fresh if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise WarmStartError(f"prefixes to keep fresh {unmatched} match no parameter of this model (names look like "
                             f"{names[0]!r})")
    params, fresh = checkpointing.warm_start_params(directory, trainer.abstract_params, fresh_params, keep_fresh)
    allow = tuple(allow_fresh) + tuple(keep_fresh)
    refused = [name for name in fresh if not name.startswith(allow)] if allow else list(fresh)
    if refused:
        raise WarmStartError(
            f"{setting}={directory!r}: {len(refused)} parameter array(s) of this model are not in the checkpoint "
            f"with the same shape (a run of another model size or vocabulary?): " + ", ".join(refused[:8])
            + (" ..." if len(refused) > 8 else "")
            + (f"; only arrays under {', '.join(allow)} may start fresh" if allow else ""))
    restored = Counter(_group(n) for n in names if n not in set(fresh))
    fresh_rows = Counter(_group(n) for n in fresh)
    rows = sorted(set(restored) | set(fresh_rows))
    width = max(len(r) for r in rows)
    lines = [f"warm-started from {directory}: {sum(restored.values())} arrays restored, {len(fresh)} fresh",
             f"  {'module':<{width}}  restored  fresh"]
    lines += [f"  {r:<{width}}  {restored[r]:>8}  {fresh_rows[r]:>5}" for r in rows]
    print("\n".join(lines), flush=True)
    return params
