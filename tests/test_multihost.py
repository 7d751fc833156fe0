"""Two processes on 127.0.0.1 (gloo, 4 fake CPU devices each) train the tiny model together."""
import json
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


def test_two_processes_train_together_and_end_identical(tmp_path):
    worker = Path(__file__).with_name("multihost_worker.py")
    port = str(_free_port())
    # Process 1 compiles 35 s slower: longer than gloo waits for a peer to join a CPU collective (30 s), so the
    # first step must not start on process 0 before process 1 has compiled too.
    logs = [tmp_path / f"log{i}.txt" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(subprocess.Popen([sys.executable, str(worker), str(i), port, str(tmp_path / "run"),
                                           str(tmp_path / f"out{i}.json"), str(35 * i)], env=env(devices=4),
                                          stdout=out, stderr=subprocess.STDOUT))
    # A process that fails can leave its peer blocked in a collective: stop both then (and at the deadline).
    deadline = time.time() + 900
    while any(p.poll() is None for p in procs):
        if time.time() > deadline or any(p.poll() for p in procs):
            for p in procs:
                p.kill()
                p.wait()
            break
        time.sleep(1)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text()[-5000:]
    a, b = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert a["global_devices"] == b["global_devices"] == 8 and a["local_devices"] == 4
    assert a["step"] == b["step"] == 3
    assert a["params"] == b["params"], "processes ended with different parameters"
    assert a["first_text_rows"] != b["first_text_rows"], "both processes read the same data shard"
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
