"""Resuming the one stream from saved iterator state in a fresh process gives exactly the batches that came next."""
from __future__ import annotations

import pathlib

import numpy as np

import tasks  # noqa: F401
from slam_jax.data import converter, schema
from train_utils import run_process

SMALL = schema.StreamConfig("mini_slam", batch_size=8, speech_frames=256, text_tokens=64, paired_frames=256,
                               paired_tokens=32, seed=1)

RESUME = """
import sys, numpy as np
import tasks
from slam_jax.data import converter, schema
config = schema.StreamConfig("mini_slam", batch_size=8, speech_frames=256, text_tokens=64, paired_frames=256,
                                paired_tokens=32, seed=1)
stream = converter.make_stream(config)
stream.set_state(open(sys.argv[1], "rb").read())
out = {}
for i in range(3):
    for kind, sub in next(stream).items():
        for key, value in sub.items():
            out[f"{i}/{kind}/{key}"] = value
out["stats"] = np.array(stream.stats()["batches"])
np.savez(sys.argv[2], **out)
"""


def test_state_restored_in_a_fresh_process_continues_identically(tmp_path: pathlib.Path):
    stream = converter.make_stream(SMALL)
    for _ in range(4):
        next(stream)
    (tmp_path / "state.bin").write_bytes(stream.get_state())
    expected = [next(stream) for _ in range(3)]
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    # A process of its own, forked from a server that has built no stream (warm_process.py).
    out = run_process("script", str(script), [str(tmp_path / "state.bin"), str(tmp_path / "next.npz")], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(tmp_path / "next.npz")
    assert int(got["stats"]) == 7  # statistics carried over: 4 before the save + 3 after
    for i, batch in enumerate(expected):
        for kind, sub in batch.items():
            for key, value in sub.items():
                np.testing.assert_array_equal(got[f"{i}/{kind}/{key}"], value, err_msg=f"batch {i} {kind}/{key}")


