"""One process of the two-process CPU training test (tests/test_multihost.py).

Usage: multihost_worker.py PROCESS_ID PORT MODEL_DIR OUT_JSON [COMPILE_DELAY_S [TRAIN_STEPS]]. Joins a 2-process JAX cluster on
127.0.0.1 (gloo collectives, 4 fake CPU devices each), trains the tiny model a few steps reading its own data shard,
and writes a digest of the final (globally gathered) parameters and of its first local batch. COMPILE_DELAY_S makes
this process take that much longer to compile the train step, as a busy or slower host would; the digest records
when `Trainer.compile` returned (after its barrier). TRAIN_STEPS (default
3, a checkpoint at the end) is the run's length; a SIGTERM to either process stops both at the same step.
"""
import hashlib
import json
import sys
import time

import jax

pid, port, model_dir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
compile_delay_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
train_steps = int(sys.argv[6]) if len(sys.argv) > 6 else 3
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import tasks  # noqa: E402,F401
from slam_jax import config, train  # noqa: E402
from slam_jax.data import converter  # noqa: E402
from train_utils import SMALL, TEXT_ONLY  # noqa: E402

# 16 global rows on a 2x2x2 (data, fsdp, tensor) mesh over both processes' 8 devices; text MLM alone (what is
# tested is the processes' lockstep, not the objectives: tests/test_sharding.py shards every objective).
files, bindings, _ = config.split_argv(SMALL + TEXT_ONLY + [
    f"--gin.TRAIN_STEPS={train_steps}", "--gin.TrainConfig.checkpoint_every=3", "--gin.StreamConfig.batch_size=16",
    "--gin.MeshConfig.data=2", "--gin.MeshConfig.fsdp=2", "--gin.MeshConfig.tensor=2"])
config.parse(files, bindings)
compile_steps = train.Trainer.compile
compiled_at = []


def slow_compile(self, *args, **kwargs):
    time.sleep(compile_delay_s)
    seconds = compile_steps(self, *args, **kwargs)
    compiled_at.append(time.time())
    return seconds


train.Trainer.compile = slow_compile
result = train.train(model_dir)
leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in jax.tree.leaves(result.params)]
params_digest = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in leaves)).hexdigest()
first = next(converter.make_stream(config.StreamConfig(), shard_index=pid, num_shards=2))
with open(out, "w") as f:
    json.dump({"params": params_digest, "step": result.step, "global_devices": jax.device_count(),
               "local_devices": jax.local_device_count(),
               "first_text_rows": np.asarray(first["text"]["tokens"]).tolist(),
               "loss": result.metrics.get("loss"), "compiled_at": compiled_at}, f)
