"""Two processes on 127.0.0.1 (gloo, 4 fake CPU devices each) train the tiny model together; a SIGTERM to one of
them stops both at the same step, each saving it (JAX's preemption sync point, no per-step collective)."""
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from train_utils import env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, delays=(0, 0), train_steps=3):
    worker = Path(__file__).with_name("multihost_worker.py")
    port = str(_free_port())
    logs = [tmp_path / f"log{i}.txt" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(subprocess.Popen([sys.executable, str(worker), str(i), port, str(tmp_path / "run"),
                                           str(tmp_path / f"out{i}.json"), str(delays[i]), str(train_steps)],
                                          env=env(devices=4), stdout=out, stderr=subprocess.STDOUT))
    return procs, logs


def _wait(procs, timeout=900):
    # A process that fails can leave its peer blocked in a collective: stop both then (and at the deadline).
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        if time.time() > deadline or any(p.poll() for p in procs):
            for p in procs:
                p.kill()
                p.wait()
            break
        time.sleep(1)


def test_two_processes_train_together_and_stop_together_on_sigterm(tmp_path):
    # Process 1 compiles 35 s slower: longer than gloo waits for a peer to join a CPU collective (30 s), so the
    # first step must not start on process 0 before process 1 has compiled too.
    steps = 400
    procs, logs = _start(tmp_path, delays=(0, 35), train_steps=steps)
    # Once both are stepping (process 0 logs every step), SIGTERM process 1 only: JAX's preemption service tells
    # process 0, and both stop after the same step and save it.
    deadline = time.time() + 1200
    while "step 2/" not in logs[0].read_text():
        assert time.time() < deadline and all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    _wait(procs)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text()[-5000:]
    a, b = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert a["global_devices"] == b["global_devices"] == 8 and a["local_devices"] == 4
    assert 2 <= a["step"] == b["step"] < steps, (a["step"], b["step"])
    assert a["params"] == b["params"], "processes ended with different parameters"
    assert a["first_text_rows"] != b["first_text_rows"], "both processes read the same data shard"
    for log in logs:
        assert f"saved checkpoint at step {a['step']}, exiting" in log.read_text()
    assert (tmp_path / "run" / "checkpoints" / str(a["step"])).is_dir()
