"""Device mesh and logical-axis sharding.

Mesh axes are `data`, `fsdp` and `tensor`. Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`,
`vocab`, `codes`, `conv`, `layers`) that `LOGICAL_RULES` map onto mesh axes; the batch dimension is sharded over
(`data`, `fsdp`). A logical axis whose size does not divide its mesh axes is replicated instead (logged once).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("codes", "tensor"),
    ("kv", None),
    ("conv", None),
    ("layers", None),
)


class MeshError(ValueError):
    """A mesh shape that the devices or the batch cannot satisfy."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape: sizes of the `data`, `fsdp` and `tensor` axes; -1 takes the remaining devices (one axis only).

    `rules` overrides LOGICAL_RULES (tuple of (logical name, mesh axis | tuple of mesh axes | None)).
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, Any], ...] = LOGICAL_RULES

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise MeshError(f"at most one mesh axis may be -1, got data={self.data} fsdp={self.fsdp} "
                            f"tensor={self.tensor}")
        if any(s == 0 or s < -1 for s in sizes):
            raise MeshError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices")
        sizes = [num_devices // known if s == -1 else s for s in sizes]
        if math.prod(sizes) != num_devices:
            raise MeshError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but "
                            f"{num_devices} are present; set one axis to -1 or match the device count")
        return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.shape(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def batch_axis_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh, where: str, warned: set) -> P:
    """Replicates dimensions whose size the assigned mesh axes do not divide, or whose mesh axes an earlier
    dimension already uses."""
    out, used = [], set()
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        if used & set(names):
            axes, names = None, ()
        used |= set(names)
        size = math.prod(mesh.shape[a] for a in names)
        if size > 1 and dim % size:
            if where not in warned:
                logging.warning("replicating %s: dimension %d not divisible by mesh axes %s", where, dim, names)
                warned.add(where)
            axes = None
        out.append(axes)
    return P(*out)


def logical_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """NamedShardings for a tree of (abstract) nnx Variables and arrays, from their logical axis names."""
    with nnx.logical_axis_rules(tuple(rules)):
        specs = nnx.get_partition_spec(tree)
    warned: set = set()
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P) or x is None)
    out = []
    for (path, leaf), spec in zip(leaves, spec_leaves):
        spec = P() if spec is None else spec
        out.append(NamedSharding(mesh, _fit(spec, tuple(getattr(leaf, "shape", ())), mesh,
                                            jax.tree_util.keystr(path), warned)))
    return jax.tree_util.tree_unflatten(treedef, out)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def check_batch_sizes(sizes: dict[str, int], mesh: Mesh) -> None:
    """Every per-kind global batch size must be divisible by the data x fsdp axes."""
    n = batch_axis_size(mesh)
    bad = {k: v for k, v in sizes.items() if v % n}
    if bad:
        raise MeshError(f"global batch sizes per kind {bad} are not divisible by the batch mesh axes "
                        f"data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {n}")


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Assembles the global batch from this process' rows (`jax.make_array_from_process_local_data`)."""
    def put(x: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return jax.tree.map(put, local)
