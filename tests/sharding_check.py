"""Run with 8 fake CPU devices: one step's loss and gradients on a 2x2x2 (data, fsdp, tensor) mesh equal the
single-device ones. Invoked by tests/test_sharding.py in a subprocess (XLA_FLAGS must be set before JAX starts)."""
import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from helpers import TINY, full_batch  # noqa: E402
from slam_jax import optim, partitioning, pretraining  # noqa: E402
from slam_jax.trainer import Trainer, TrainConfig  # noqa: E402


# Unrolled layers: XLA:CPU's in-process collectives inside a while loop can deadlock when 8 fake devices share 2
# cores (seen in CI); the scanned and unrolled stacks have the same parameters and numerics (tests/test_model.py).
# One layer per stack: every layer of a stack is sharded alike, and each added layer only lengthens the compile.
MODEL = dataclasses.replace(TINY, scan_layers=False, speech_layers=1, shared_layers=1)


def run(mesh_cfg, devices):
    trainer = Trainer.for_pretraining(
        model_cfg=MODEL, objective_cfg=pretraining.ObjectiveConfig(tlm=True, stm=True, num_negatives=8),
        optimizer_cfg=optim.OptimizerConfig(), mesh_cfg=mesh_cfg, train_cfg=TrainConfig(), devices=devices)
    params = trainer.init_params()
    # One batch's loss and gradients, without an update: the trainer's own gradient program under its mesh.
    batch = partitioning.global_batch(full_batch(batch=4), trainer.mesh)
    with jax.set_mesh(trainer.mesh):
        loss, _, grads = trainer._part_step(params, batch, jnp.asarray(3, jnp.int32))
    sharded = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
    return float(loss), jax.tree.map(np.asarray, grads), sharded


assert jax.device_count() == 8, jax.device_count()
loss1, grads1, _ = run(partitioning.MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
loss8, grads8, sharded = run(partitioning.MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
assert sharded > 10, f"only {sharded} parameters are sharded on the 2x2x2 mesh"
np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
worst = 0.0
for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads1), jax.tree.leaves(grads8)):
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    worst = max(worst, float(np.max(np.abs(a - b))))
print(f"OK loss {loss1:.6f} vs {loss8:.6f}; max |grad diff| {worst:.2e}; {sharded} sharded parameters")
