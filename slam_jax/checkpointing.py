"""Orbax checkpoints of a training run: params, optimizer state, step, data-iterator state, gin config.

Layout under `model_dir`:
```
checkpoints/<step>/{params,opt_state,meta}   orbax (async, keep-last-N + keep-every-K)
data_state/<step>/process_<i>.bin            each host's data-iterator state (written before the orbax save)
```
Restores build target shardings from the *current* mesh, so a run can resume on a different slice. A checkpoint
whose parameters differ from the model's (names or shapes) fails with a message naming them.
"""
from __future__ import annotations

import os
import subprocess
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf



def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


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
        self.data_dir = os.path.join(model_dir, "data_state")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_every,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(os.path.join(model_dir, "checkpoints"), options=options,
                                             item_handlers=_handlers())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: bytes, meta: dict, force: bool = False):
        path = os.path.join(self.data_dir, str(step), f"process_{jax.process_index()}.bin")
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data_state)
        saved = self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), force=force)
        self._prune_data_states(step)
        return saved

    def _prune_data_states(self, current: int):
        """Drops data-iterator states of checkpoints that orbax's retention policy removed."""
        if jax.process_index() != 0:
            return
        keep = {str(s) for s in self.manager.all_steps()} | {str(current)}
        for name in tf.io.gfile.listdir(self.data_dir):
            name = name.rstrip("/")
            if name.isdigit() and name not in keep:
                tf.io.gfile.rmtree(os.path.join(self.data_dir, name))

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
            meta=ocp.args.JsonRestore()))
        path = os.path.join(self.data_dir, str(step), f"process_{jax.process_index()}.bin")
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"checkpoint step {step} has no data-iterator state for process "
                                    f"{jax.process_index()} at {path}; was it written by a run with another "
                                    f"number of hosts?")
        with tf.io.gfile.GFile(path, "rb") as f:
            data_state = f.read()
        return restored["params"], restored["opt_state"], data_state, restored["meta"]


def _reader(directory: str) -> ocp.CheckpointManager:
    ckpt = os.path.join(directory, "checkpoints") if tf.io.gfile.isdir(os.path.join(directory, "checkpoints")) \
        else directory
    return ocp.CheckpointManager(ckpt, options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_handlers=_handlers())


def warm_start_params(directory: str, abstract_params: Any, fresh_params: Any) -> tuple[Any, list[str]]:
    """t5x-style warm start: restores every parameter of `directory`'s latest checkpoint whose name and shape match;
    the others keep `fresh_params`. Returns (params, names of parameters not restored)."""
    manager = _reader(directory)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint found under {directory} to warm-start from")
    found = _paths_and_shapes(manager.item_metadata(step)["params"])
    want = _paths_and_shapes(abstract_params)
    if found == want:
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
        if name in flat_found and tuple(np.shape(flat_found[name])) == tuple(leaf.shape):
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
