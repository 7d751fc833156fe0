"""Session-wide settings for the tests, applied before any test module imports JAX."""
import os

import pytest

from train_utils import COLLECTIVE_XLA_FLAGS, TEST_XLA_FLAGS, slam_train

# In-process tests get the same XLA flags as the subprocesses that train_utils.env() starts (the device count
# aside): JAX's compilation cache key includes them, and both share one cache.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COLLECTIVE_XLA_FLAGS} {TEST_XLA_FLAGS}".strip()


# Modules whose tests each run training commands of their own (one to four minutes each on 2 cores) go first: with
# `-n 2 --dist worksteal` (pytest.ini) the short tests then fill both workers at the end instead of one long test
# running alone while the other worker idles.
HEAVY_FIRST = ("test_multihost.py", "test_sharding.py", "test_run_folder.py", "test_train.py", "test_finetune.py",
               "test_aot.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the order within a module stays


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """(model_dir, stdout) of one small slam-train run with all five objectives: 8 steps, checkpoints at steps 4 and
    8, an evaluation at step 8. Shared, read-only, by the tests that check a run's outputs, resume against it or
    start from it (a test that writes into a run copies it first): each such run costs ~20 s on 2 loaded cores."""
    model_dir = tmp_path_factory.mktemp("pretrained") / "run"
    out = slam_train(model_dir, "--gin.TRAIN_STEPS=8", "--gin.TrainConfig.checkpoint_every=4",
                     "--gin.TrainConfig.eval_every=8", "--gin.TrainConfig.eval_batches=1").stdout
    return model_dir, out
