"""A run folder that survives its users: one writer, no silent hangs, recovery without hand surgery (each fault run
for real: slam-train subprocesses on the bundled mini corpus, real orbax checkpoints, real signals)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_utils import TEXT_ONLY, read_metrics, run_process, slam_train, start
from slam_jax.trainer import run_folder




def train_text(model_dir, *args, **kwargs):
    """slam_train with text MLM alone: the run folder's mechanisms do not depend on the objectives (train_utils)."""
    return slam_train(model_dir, *TEXT_ONLY, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ the lock
def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    first = run_folder.RunLock(str(tmp_path)).acquire()
    with pytest.raises(run_folder.RunFolderLockedError, match=f"process {os.getpid()} on host"):
        run_folder.RunLock(str(tmp_path)).acquire()
    first.release()
    assert not (tmp_path / "LOCK").exists()
    with run_folder.RunLock(str(tmp_path)):
        assert (tmp_path / "LOCK").exists()


def test_a_dead_holders_lock_is_taken_over_and_a_silent_one_after_the_stale_period(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": time.time(),
              "heartbeat": time.time(), "token": "x"}
    (tmp_path / "LOCK").write_text(json.dumps(record))
    with run_folder.RunLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / "LOCK").read_text())["token"] == lock.token
    assert "has exited" in capsys.readouterr().out
    # A live holder on another host: refused while it beats, taken over once its heartbeat is older than the period.
    record.update(host="elsewhere", pid=1, heartbeat=time.time())
    (tmp_path / "LOCK").write_text(json.dumps(record))
    with pytest.raises(run_folder.RunFolderLockedError, match="host elsewhere"):
        run_folder.RunLock(str(tmp_path), stale_after_s=60).acquire()
    record["heartbeat"] = time.time() - 120
    (tmp_path / "LOCK").write_text(json.dumps(record))
    run_folder.RunLock(str(tmp_path), stale_after_s=60).acquire().release()
    assert "no heartbeat for" in capsys.readouterr().out


def test_a_second_writer_fails_fast_and_the_first_run_finishes_intact(tmp_path):
    d = tmp_path / "run"
    first = train_text(d, "--gin.TRAIN_STEPS=120", "--gin.TrainConfig.checkpoint_every=40", popen=True)
    deadline = time.time() + 600
    while not (d / "LOCK").exists() and time.time() < deadline:
        time.sleep(0.5)
    started = time.time()
    second = train_text(d, "--gin.TRAIN_STEPS=120", "--gin.TrainConfig.seed=1", check=False, timeout=300)
    assert second.returncode == 1 and "is being written by process" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr and time.time() - started < 120
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    assert "TrainConfig.seed = 0" in (d / "config.gin").read_text()
    steps = [m["step"] for m in read_metrics(d) if "loss" in m]
    assert steps == list(range(1, 121))  # one writer's steps only, none duplicated
    saved = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == 120 and set(saved) <= {40, 80, 120}
    assert not (d / "LOCK").exists()


# ------------------------------------------------------------------------------------------------ checks first
def test_a_rejected_resume_leaves_config_gin_byte_identical(tmp_path):
    d = tmp_path / "run"
    train_text(d, "--gin.TRAIN_STEPS=1")
    before = (d / "config.gin").read_bytes()
    result = train_text(d, "--gin.TRAIN_STEPS=2", "--gin.ModelConfig.d_model=48", check=False)
    assert result.returncode == 1 and "does not match the model configuration" in result.stderr
    assert (d / "config.gin").read_bytes() == before and not list(d.glob("config.step*.gin"))
    # An accepted change (more steps) rewrites config.gin and keeps the one that trained up to the resume step.
    train_text(d, "--gin.TRAIN_STEPS=2")
    assert (d / "config.step1.gin").read_bytes() == before and b"TRAIN_STEPS = 2" in (d / "config.gin").read_bytes()


@pytest.mark.parametrize("value", ["'ten'", "0"])
def test_bad_train_config_values_fail_before_compiling(tmp_path, value):
    result = slam_train(tmp_path / "run", f"--gin.TrainConfig.checkpoint_every={value}", check=False, timeout=300)
    assert result.returncode == 2 and "TrainConfig.checkpoint_every" in result.stderr, result.stderr
    assert "compiled" not in result.stdout and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ recovery
def _loss_by_step(d: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(d) if "loss" in m}


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one_with_exact_losses(tmp_path):
    d = tmp_path / "run"
    train_text(d, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.checkpoint_every=2")
    straight = _loss_by_step(d)
    for f in (d / "checkpoints" / "4" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (d / "metrics.jsonl").unlink()
    result = train_text(d, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.checkpoint_every=2")
    assert "checkpoint step 4 is unreadable, skipped" in result.stdout and "resumed from" in result.stdout
    line = next(x for x in result.stdout.splitlines() if "is unreadable" in x)
    assert len(line) < 400, line
    resumed = _loss_by_step(d)
    assert sorted(resumed) == [3, 4] and all(resumed[s] == straight[s] for s in (3, 4))
    # Every checkpoint damaged: one line per step and what to do, no traceback.
    for f in (d / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name in ("params", "opt_state") and f.stat().st_size > 64:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    broken = train_text(d, "--gin.TRAIN_STEPS=6", check=False)
    assert broken.returncode == 1 and "no checkpoint under" in broken.stderr and "step 2:" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_kill_9_during_the_combined_save_leaves_a_restorable_previous_step(tmp_path):
    d = tmp_path / "run"
    train_text(d, "--gin.TRAIN_STEPS=2", "--gin.TrainConfig.checkpoint_every=2")
    proc = train_text(d, "--gin.TRAIN_STEPS=200", "--gin.TrainConfig.checkpoint_every=1",
                      "--gin.TrainConfig.async_checkpointing=True", popen=True)
    # Kill as soon as a save of a later step is under way (orbax writes it in a tmp folder, then renames it).
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any("tmp" in p.name for p in (d / "checkpoints").iterdir()):
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    result = train_text(d, "--gin.TRAIN_STEPS=0", check=False)
    assert result.returncode == 0 and "resumed from" in result.stdout, result.stdout + result.stderr


def test_on_error_may_change_on_resume_and_the_good_examples_keep_their_order():
    import tasks  # noqa: F401
    from slam_jax.data import converter, schema
    cfg = schema.StreamConfig(mixture="mini_slam", batch_size=8, speech_frames=256, text_tokens=32,
                                 paired_frames=640, paired_tokens=48)
    straight = converter.make_stream(cfg)
    for _ in range(2):
        next(straight)
    state = straight.get_state()
    expected = next(straight)
    resumed = converter.make_stream(schema.StreamConfig(**{**cfg.__dict__, "on_error": "skip"}))
    resumed.set_state(state)
    got = next(resumed)
    for kind in expected:
        for key in expected[kind]:
            assert (expected[kind][key] == got[kind][key]).all(), (kind, key)
    other = converter.make_stream(schema.StreamConfig(**{**cfg.__dict__, "seed": 1}))
    with pytest.raises(schema.StreamMismatchError, match="differs in: seed"):
        other.set_state(state)


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    d = tmp_path / "run"
    proc = train_text(d, "--gin.TRAIN_STEPS=500", "--gin.TrainConfig.checkpoint_every=1000", popen=True)
    for line in proc.stdout:
        if line.startswith("step 1/"):
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "received signal (Ctrl-C): saved checkpoint at step" in out, out
    saved = int(out.split("saved checkpoint at step ")[1].split(",")[0])
    assert (d / "checkpoints" / str(saved)).is_dir()


# ------------------------------------------------------------------------------------------------ no silent hangs
TOO_LONG = ["--gin.StreamConfig.paired_frames=64", "--gin.TrainConfig.data_stall_timeout_s=5"]


def test_an_all_too_long_stream_fails_clearly_under_raise(tmp_path):
    started = time.time()
    # A process of its own: the stalled tf.data worker makes the command end with os._exit (see
    # cli.common.exit_after_blocked_workers), which would end this test process too.
    result = slam_train(tmp_path / "run", "--gin.TRAIN_STEPS=3", *TOO_LONG, check=False, timeout=300,
                        subprocess_=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "kind 'paired' has produced no example" in result.stderr and "too long for" in result.stderr
    assert "StreamConfig.paired_frames=64" in result.stderr and "Traceback" not in result.stderr
    assert time.time() - started < 240


def test_an_all_too_long_stream_waits_visibly_under_skip_and_sigterm_ends_it(tmp_path):
    proc = slam_train(tmp_path / "run", "--gin.TRAIN_STEPS=3", *TOO_LONG, "--gin.StreamConfig.on_error='skip'",
                      popen=True)
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("waiting: no batch") or not line:
            break
    assert lines[-1].startswith("waiting: no batch"), "".join(lines)
    assert "too long for StreamConfig.paired_frames=64" in lines[-1]
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    out, _ = proc.communicate(timeout=60)
    assert time.time() - sent < 30
    assert proc.returncode == 1 and "stopped while waiting for data" in out, out


# ------------------------------------------------------------------------------------------------ warm start
def test_init_from_a_run_of_another_size_is_an_error_unless_the_prefixes_are_allowed(tmp_path):
    src = tmp_path / "src"
    train_text(src, "--gin.TRAIN_STEPS=1")
    bigger = train_text(tmp_path / "big", "--gin.TRAIN_STEPS=1", "--gin.ModelConfig.ffn_dim=48",
                        f"--gin.TrainConfig.init_from='{src}'", check=False)
    assert bigger.returncode == 1 and "not in the checkpoint with the same shape" in bigger.stderr
    assert "ffn1/up/kernel" in bigger.stderr and "Traceback" not in bigger.stderr
    same = train_text(tmp_path / "same", "--gin.TRAIN_STEPS=1", f"--gin.TrainConfig.init_from='{src}'")
    table = same.stdout[same.stdout.index("warm-started from"):].splitlines()
    assert "0 fresh" in table[0] and table[1].split() == ["module", "restored", "fresh"]
    assert any(row.split()[0].startswith("encoder/") for row in table[2:6])


def test_slam_data_inspect_on_an_all_too_long_stream_says_why_instead_of_hanging():
    args = ["inspect", "--mixture", "mini_slam", "--batch_size", "8", "--paired_frames", "64", "--stall_seconds", "3"]
    started = time.time()
    raised = run_process("module", "slam_jax.cli.data", args + ["--on_error", "raise"], timeout=600)
    assert raised.returncode == 1 and "kind 'paired' has produced no example" in raised.stderr, raised.stderr
    assert time.time() - started < 540
    # PYTHONFAULTHANDLER: should it not end after Ctrl-C, SIGABRT makes it print every thread's stack (below).
    # SIGINT raises KeyboardInterrupt in the command, as in a terminal (warm_process installs Python's handler: a
    # test run started in the background of a non-interactive shell ignores SIGINT, and a child of it inheriting
    # that never saw the Ctrl-C, the failure seen at d7a4b01).
    waiting = start("module", "slam_jax.cli.data", args + ["--on_error", "skip"],
                    extra_env={"PYTHONFAULTHANDLER": "1"}, merge_stderr=False)
    line = waiting.stderr.readline()
    while line and not line.startswith("waiting: no batch"):
        line = waiting.stderr.readline()
    assert "too long for StreamConfig.paired_frames=64" in line
    waiting.send_signal(signal.SIGINT)
    # communicate, not wait: the pipes are drained as a terminal would (with stderr left unread the command was seen
    # to stop reporting, and once it did not end within 30 s on loaded cores).
    try:
        _, err = waiting.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # Which signals it ignores / catches (SigIgn, SigCgt: bit 1 is SIGINT), this test process' too: a SIGINT
        # ignored by the parent is inherited, and Python then installs no KeyboardInterrupt handler.
        masks = [line for pid in (waiting.pid, os.getpid()) for line in open(f"/proc/{pid}/status").read().splitlines()
                 if line.startswith(("SigIgn", "SigCgt"))]
        waiting.send_signal(signal.SIGABRT)
        _, err = waiting.communicate(timeout=60)
        pytest.fail(f"slam-data inspect did not end within 60 s of Ctrl-C ({masks}; Python handler in this process: "
                    f"{signal.getsignal(signal.SIGINT)}); its threads:\n{err[-20000:]}")
    assert waiting.returncode == 130, err


def test_an_unwritable_model_dir_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = slam_train(blocker / "run", "--gin.TRAIN_STEPS=1", check=False, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("slam-train:")]
    assert len(lines) == 1 and str(blocker) in lines[0], result.stderr
    verbose = slam_train(blocker / "run", "--gin.TRAIN_STEPS=1", "--verbose", check=False, timeout=300)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


ALL_BAD = r'''
import json, os, pathlib, sys
sys.path.insert(0, sys.argv[2])
from data_helpers import MINI_SPM, librispeech_folder
import seqio
from slam_jax.data import converter, schema, sources, watchdog
from slam_jax.data import stream as stream_lib
root = pathlib.Path(sys.argv[1])
chapter = librispeech_folder(root, utterances=4)
for f in chapter.glob("*.flac"):
    f.write_bytes(b"fLaC" + bytes(range(256)) * 4)
sources.add_librispeech_folder_task("t_all_bad", str(root), kind="paired", splits={"train": "train"},
                                    vocabulary=seqio.SentencePieceVocabulary(MINI_SPM))
cfg = schema.StreamConfig("t_all_bad", batch_size=2, speech_frames=256, paired_frames=256, paired_tokens=32,
                             text_tokens=32, on_error=sys.argv[3])
reports = []
stream = watchdog.WatchedStream(converter.make_stream(cfg), stall_s=2, fail_on_stall=False,
                                stop_requested=lambda: len(reports) >= 2, report=reports.append)
try:
    next(stream)
    outcome = "batch"
except (watchdog.StoppedWhileWaiting, schema.DataError) as e:
    outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome, "reports": reports}), flush=True)
os._exit(0)
'''


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_an_all_bad_corpus_waits_visibly_under_skip_and_fails_at_once_under_raise(tmp_path, on_error):
    started = time.time()
    result = run_process("code", ALL_BAD, [str(tmp_path), str(Path(__file__).parent), on_error], timeout=240)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    if on_error == "raise":
        assert found["outcome"].startswith("DataError:") and "cannot decode audio" in found["outcome"]
        assert not found["reports"]
    else:
        assert len(found["reports"]) >= 2 and found["outcome"].startswith("StoppedWhileWaiting: stopped while")
        assert "kind 'paired' has produced no example" in found["reports"][0]
        assert "bad (StreamConfig.on_error='skip')" in found["reports"][0]
    assert time.time() - started < 180
