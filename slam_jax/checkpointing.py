"""Orbax checkpoints of a training run: params, optimizer state, each host's data-iterator state, metadata.

Layout under `model_dir`:
```
checkpoints/<step>/{params,opt_state,data_state,meta}   orbax (async, keep-last-N + keep-every-K)
checkpoints/<step>/data_state/process_<i>-of-<n>.bin    each host's data-iterator state
```
The data-iterator states are an item of the same orbax checkpoint (written by every process, committed together
with the parameters by orbax's atomic rename), so a step's parameters and data position exist together or not at
all. Restores build target shardings from the *current* mesh, so a run can resume on a different slice. A checkpoint
whose parameters differ from the model's (names or shapes) fails with a message naming them; an unreadable one
(truncated, partly deleted) is skipped for the newest intact one (`Checkpointer.restore_latest`).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    """This process' data-iterator state (`OneStream.get_state()` bytes)."""
    state: bytes


@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


class DataStateHandler(ocp.AsyncCheckpointHandler):
    """Every process writes its own file, `process_<i>-of-<n>.bin` (grain's per-process iterator-state layout);
    restore reads this process' file and fails, naming it, when the checkpoint was written by another number of
    processes."""

    @staticmethod
    def _name() -> str:
        return f"process_{jax.process_index()}-of-{jax.process_count()}.bin"

    async def _write(self, directory: epath.Path, state: bytes) -> None:
        (directory / self._name()).write_bytes(state)

    async def async_save(self, directory: epath.Path, args: DataStateSave):
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(directory, args.state),
                                                                 name="data_state_save")]

    def save(self, directory: epath.Path, args: DataStateSave) -> None:
        (directory / self._name()).write_bytes(args.state)

    def restore(self, directory: epath.Path, args: DataStateRestore | None = None) -> bytes:
        path = directory / self._name()
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
            raise FileNotFoundError(f"{path} does not exist (the checkpoint holds {', '.join(found) or 'no file'}): "
                                    "was it written by a run with another number of processes?")
        return path.read_bytes()

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


ocp.args.register_with_handler(DataStateHandler, for_save=True)(DataStateSave)
ocp.args.register_with_handler(DataStateHandler, for_restore=True)(DataStateRestore)


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "data_state": DataStateHandler(), "meta": ocp.JsonCheckpointHandler()}


class CheckpointUnreadableError(RuntimeError):
    """No checkpoint of the run could be restored; the message lists each one and why."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's parameters do not match the model being trained."""


def _paths_and_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        keys = [k for k in keys if k not in ("value", "raw_value")]
        out["/".join(keys)] = tuple(getattr(leaf, "shape", ()))
    return out


def describe_mismatch(expected: Any, found: Any, where: str) -> str | None:
    """A message listing missing, unexpected and reshaped parameters, or None when the trees agree."""
    want, have = _paths_and_shapes(expected), _paths_and_shapes(found)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    reshaped = sorted(f"{k}: checkpoint {have[k]} vs model {want[k]}" for k in set(want) & set(have)
                      if have[k] != want[k])
    if not (missing or extra or reshaped):
        return None
    lines = [f"checkpoint {where} does not match the model configuration:"]
    for title, items in (("missing in checkpoint", missing), ("not in model", extra), ("shape differs", reshaped)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))
    return "\n".join(lines)


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=os.path.dirname(__file__)).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Checkpointer:
    """Saves and restores training state in `model_dir` (local or gs://)."""

    def __init__(self, model_dir: str, *, keep: int = 3, keep_every: int | None = None, async_save: bool = True):
        self.model_dir = model_dir
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), options=options,
                                             item_handlers=_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: bytes, meta: dict, force: bool = False):
        return self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            data_state=DataStateSave(data_state), meta=ocp.args.JsonSave(meta)), force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

    def check_compatible(self, step: int, abstract_params: Any, directory: str | None = None):
        """Raises CheckpointMismatchError naming mismatched parameters before any restore is attempted."""
        manager = self.manager if directory is None else _reader(directory)
        found = manager.item_metadata(step)["params"]
        message = describe_mismatch(abstract_params, found, f"{directory or self.manager.directory}/{step}")
        if message:
            raise CheckpointMismatchError(message)

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any) -> tuple[Any, Any, bytes, dict]:
        """Restores into the shardings of the given abstract trees (ShapeDtypeStruct leaves with `.sharding`)."""
        self.check_compatible(step, abstract_params)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), opt_state=ocp.args.StandardRestore(abstract_opt_state),
            data_state=DataStateRestore(), meta=ocp.args.JsonRestore()))
        return restored["params"], restored["opt_state"], restored["data_state"], restored["meta"]

    def restore_latest(self, abstract_params: Any, abstract_opt_state: Any, *,
                       accept: Callable[[int, bytes], None] = lambda step, data_state: None,
                       fatal: tuple[type[BaseException], ...] = (),
                       report: Callable[[str], None] = print) -> tuple[int, Any, Any, bytes, dict] | None:
        """The newest checkpoint that restores, as (step, params, opt_state, data_state, meta); None without any.

        A checkpoint that fails to read (truncated or deleted files, a data state `accept(step, data_state)`
        rejects with OSError / ValueError) is skipped with one line to `report` naming the step and the cause;
        a parameter mismatch (another model configuration) is not a damaged checkpoint and raises
        CheckpointMismatchError, and so do the `fatal` errors of `accept` (a data state of another stream). Raises CheckpointUnreadableError when no checkpoint restores.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                params, opt_state, data_state, meta = self.restore(step, abstract_params, abstract_opt_state)
                accept(step, data_state)
            except (CheckpointMismatchError, *fatal):
                raise
            except Exception as e:  # noqa: BLE001 - any read failure of one checkpoint: try the previous one
                cause = _first_line(e)
                failures.append(f"step {step}: {cause}")
                report(f"checkpoint step {step} is unreadable, skipped ({cause})")
                continue
            return step, params, opt_state, data_state, meta
        if failures:
            raise CheckpointUnreadableError(
                f"no checkpoint under {self.manager.directory} can be restored:\n  " + "\n  ".join(failures) +
                "\nmove the damaged step folders away to start this run afresh")
        return None


def _first_line(error: BaseException) -> str:
    """The informative line of an exception (TensorStore errors put the cause deep inside a long message)."""
    text = f"{type(error).__name__}: {error}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if any(w in line for w in ("NOT_FOUND", "DATA_LOSS", "Error reading", "not found", "does not exist",
                                   "truncated", "corrupt")):
            return line[:300]
    return lines[0][:300] if lines else type(error).__name__


def _reader(directory: str) -> ocp.CheckpointManager:
    ckpt = os.path.join(directory, "checkpoints") if epath.Path(directory, "checkpoints").is_dir() else directory
    return ocp.CheckpointManager(ckpt, options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_handlers=_handlers())


def warm_start_params(directory: str, abstract_params: Any, fresh_params: Any, keep_fresh: Sequence[str] = ()
                      ) -> tuple[Any, list[str]]:
    """t5x-style warm start: restores every parameter of `directory`'s latest checkpoint whose name and shape match,
    except those under a prefix in `keep_fresh`; the others keep `fresh_params`. Returns (params, names of
    parameters not restored)."""
    manager = _reader(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint found under {directory} to warm-start from")
    found = _paths_and_shapes(manager.item_metadata(step)["params"])
    want = _paths_and_shapes(abstract_params)
    keep = tuple(keep_fresh)
    if found == want and not keep:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
        return restored["params"], []
    # Partial match: restore the checkpoint's own tree on the host, then copy what matches.
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
    flat_found = {k: v for k, v in zip(found, jax.tree.leaves(restored))}
    leaves, treedef = jax.tree_util.tree_flatten(fresh_params)
    names = list(want)
    skipped = []
    out = []
    for name, leaf, abstract in zip(names, leaves, jax.tree.leaves(abstract_params)):
        if not name.startswith(keep) and name in flat_found and tuple(np.shape(flat_found[name])) == tuple(leaf.shape):
            out.append(jax.device_put(np.asarray(flat_found[name]), abstract.sharding))
        else:
            skipped.append(name)
            out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out), skipped


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """The parameters of `directory`'s checkpoint `step` (default: the latest), exactly matching `abstract_params`
    (ShapeDtypeStruct leaves with `.sharding`), for evaluation. Returns (params, step).

    Raises FileNotFoundError when there is no checkpoint, CheckpointMismatchError naming the differing parameters.
    """
    manager = _reader(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint found under {directory}")
    message = describe_mismatch(abstract_params, manager.item_metadata(step)["params"], f"{directory}/{step}")
    if message:
        raise CheckpointMismatchError(message)
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"], step
