"""Two processes on 127.0.0.1 (gloo, fake CPU devices): they train the tiny model together, and a SIGTERM to one of
them stops both at the same step, each saving it (JAX's preemption sync point, no per-step collective); slam-eval
on two processes scores a fine-tuned run as one process does."""
import json
import signal
import socket
import time
from pathlib import Path

import pytest

from train_utils import last_json, slam_eval, slam_finetune, start

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, delays=(0, 0), train_steps=3):
    worker = Path(__file__).with_name("multihost_worker.py")
    port = str(_free_port())
    procs = [start("script", str(worker), [str(i), port, str(tmp_path / "run"), str(tmp_path / f"out{i}.json"),
                                           str(delays[i]), str(train_steps)], devices=4) for i in range(2)]
    return procs, [p.stdout for p in procs]


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
    # Process 1 compiles 10 s later. CPU (gloo) collectives give up after 30 s waiting for a peer to join, so a
    # process must not start the first step's collectives while another still compiles: Trainer.compile returns
    # only once every process has compiled (a coordination-service barrier). Checked directly below, since a delay
    # past gloo's 30 s would only show the failure the barrier prevents, at 30 s of test time.
    delay = 10
    steps = 400
    procs, logs = _start(tmp_path, delays=(0, delay), train_steps=steps)
    # Once both are stepping (process 0 logs every step), SIGTERM process 1 only: JAX's preemption service tells
    # process 0, and both stop after the same step and save it.
    deadline = time.time() + 1200
    head = ""
    while "step 2/" not in head:
        head += logs[0].readline(timeout=1)
        assert time.time() < deadline and all(p.poll() is None for p in procs), head[-3000:]
    procs[1].send_signal(signal.SIGTERM)
    _wait(procs)
    texts = [head + logs[0].read(), logs[1].read()]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-5000:]
    a, b = (json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2))
    # Without the barrier, process 0 would be done compiling ~10 s before process 1.
    assert abs(a["compiled_at"][0] - b["compiled_at"][0]) < delay / 2, (a["compiled_at"], b["compiled_at"])
    assert a["global_devices"] == b["global_devices"] == 8 and a["local_devices"] == 4
    assert 2 <= a["step"] == b["step"] < steps, (a["step"], b["step"])
    assert a["params"] == b["params"], "processes ended with different parameters"
    assert a["first_text_rows"] != b["first_text_rows"], "both processes read the same data shard"
    for text in texts:
        assert f"saved checkpoint at step {a['step']}, exiting" in text
    assert (tmp_path / "run" / "checkpoints" / str(a["step"])).is_dir()


def test_two_processes_evaluate_a_finetuned_run_as_one_does(tmp_path):
    """slam-eval on a 2-process cluster (the CLI's --coordinator_address flags): each process scores its shard of
    the split in lockstep, the counts are summed, and both print the single-process whole-split scores."""
    model_dir = tmp_path / "ft"
    slam_finetune(model_dir, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.checkpoint_every=2")
    one = last_json(slam_eval(model_dir, "--split=validation").stdout)
    port = str(_free_port())
    # 4-row global batches = 2 rows per process; each process holds half of the split (32 of the mini corpus' 64
    # dev utterances): 20 batches cover its shard, the rest are padding.
    procs = [start("module", "slam_jax.cli.eval", [
        f"--model_dir={model_dir}", "--split=validation", "--eval_batches=20",
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
    _wait(procs, timeout=600)
    outputs = []
    for p in procs:
        text = p.stdout.read()
        assert p.returncode == 0, text[-5000:]
        assert "warning: TrainConfig.eval_batches" not in text  # 20 batches exhaust each shard
        outputs.append(last_json(text))
    assert outputs[0] == outputs[1]
    assert one["utterances"] > 20 * 2   # the split needs both processes' shards
    assert outputs[0] == one
