"""Two processes on 127.0.0.1 (gloo, 4 fake CPU devices each) train the tiny model together."""
import json
import socket
import subprocess
import sys
from pathlib import Path

from train_utils import env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_together_and_end_identical(tmp_path):
    worker = Path(__file__).with_name("multihost_worker.py")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(worker), str(i), port, str(tmp_path / "run"),
                               str(tmp_path / f"out{i}.json")], env=env(devices=4), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
    a, b = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    assert a["global_devices"] == b["global_devices"] == 8 and a["local_devices"] == 4
    assert a["step"] == b["step"] == 3
    assert a["params"] == b["params"], "processes ended with different parameters"
    assert a["first_text_rows"] != b["first_text_rows"], "both processes read the same data shard"
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
