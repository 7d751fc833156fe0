"""Session-wide settings for the tests, applied before any test module imports JAX."""
import os

from train_utils import TEST_XLA_FLAGS

# In-process tests get the same XLA flags as the subprocesses that train_utils.env() starts.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
