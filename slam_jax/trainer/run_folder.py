"""The run folder's one writer: an exclusive lock on `model_dir`, and `config.gin` written once a run is accepted.

`model_dir/LOCK` holds the writer's host, pid, start time and a heartbeat its holder refreshes every
`HEARTBEAT_S` seconds from a background thread. A second writer (`slam-train` / `slam-finetune` on the same
folder) fails with a message naming the holder. A lock is stale, and is taken over with a one-line notice, when its
holder is a dead process of this host, or when its heartbeat is older than `stale_after_s` (a holder on another
host, e.g. a preempted VM). On local disks the lock file is created with O_EXCL; on object stores (gs://), which have
no exclusive create through tf.io.gfile, the writer writes its token and reads it back after a short wait, so of
two writers starting together the later write wins and the other fails. Readers (slam-eval, inference) take no lock.
Only process 0 of a multi-process run holds it; the outcome is broadcast so every process stops together.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np

LOCK_NAME = "LOCK"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
_OBJECT_STORE_SETTLE_S = 2.0


class RunFolderLockedError(RuntimeError):
    """Another live process writes this run folder; the message names it."""


def _gfile():
    import tensorflow as tf
    return tf.io.gfile


def _is_local(path: str) -> bool:
    return "://" not in path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The exclusive writer lock of `model_dir` (see the module docstring). Use as a context manager."""

    def __init__(self, model_dir: str, *, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_NAME)
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # ------------------------------------------------------------------------------------------ record
    def _record(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                           "heartbeat": time.time(), "token": self.token})

    def _read(self) -> dict | None:
        gfile = _gfile()
        try:
            with gfile.GFile(self.path, "r") as f:
                return json.loads(f.read())
        except Exception:  # noqa: BLE001 - missing, partly written or unreadable: treated as no valid record
            return None

    def _stale_reason(self, holder: dict | None) -> str | None:
        """Why the existing lock may be taken over, or None while its holder is alive."""
        if holder is None:
            return "unreadable lock file"
        age = time.time() - float(holder.get("heartbeat", 0))
        if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
            return f"process {holder.get('pid')} on this host has exited"
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (stale after {self.stale_after_s:.0f} s)"
        return None

    @staticmethod
    def describe(holder: dict) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
        age = time.time() - float(holder.get("heartbeat", 0))
        return (f"process {holder.get('pid')} on host {holder.get('host')} (started {started}, last heartbeat "
                f"{age:.0f} s ago)")

    # ------------------------------------------------------------------------------------------ acquire
    def _create_local(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self._record())
        return True

    def _create_object_store(self) -> bool:
        gfile = _gfile()
        if gfile.exists(self.path):
            return False
        with gfile.GFile(self.path, "w") as f:
            f.write(self._record())
        time.sleep(_OBJECT_STORE_SETTLE_S)
        holder = self._read()
        return bool(holder and holder.get("token") == self.token)

    def _try_acquire(self) -> None:
        _gfile().makedirs(self.model_dir)
        create = self._create_local if _is_local(self.path) else self._create_object_store
        for _ in range(2):
            if create():
                return
            holder = self._read()
            reason = self._stale_reason(holder)
            if reason is None:
                raise RunFolderLockedError(
                    f"{self.model_dir} is being written by {self.describe(holder)}: two runs in one folder would "
                    f"overwrite each other's checkpoints. Use another --model_dir, or stop that process first "
                    f"(a lock whose holder died is taken over automatically; one on another host after "
                    f"{self.stale_after_s:.0f} s without heartbeat; {self.path} can be deleted by hand)")
            print(f"taking over the lock of {self.model_dir}: {reason}", flush=True)
            try:
                _gfile().remove(self.path)
            except Exception:  # noqa: BLE001 - another process removed it first; the create decides
                pass
        raise RunFolderLockedError(f"could not take the lock {self.path}: another process took it meanwhile")

    def acquire(self) -> "RunLock":
        """Takes the lock on process 0 and tells every process the outcome (all raise, or none)."""
        error = None
        if jax.process_index() == 0:
            try:
                self._try_acquire()
                self.held = True
            except RunFolderLockedError as e:
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
            if failed and error is None:
                error = RunFolderLockedError(f"{self.model_dir} is locked by another run (see process 0's message)")
        if error is not None:
            raise error
        if self.held:
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self._read()
            if holder is not None and holder.get("token") != self.token:
                print(f"warning: the lock {self.path} was taken over by {self.describe(holder)}", flush=True)
                return
            try:
                with _gfile().GFile(self.path, "w") as f:
                    f.write(self._record())
            except Exception as e:  # noqa: BLE001 - a failed heartbeat must not stop training
                print(f"warning: could not refresh the run lock {self.path}: {e}", flush=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held:
            holder = self._read()
            if holder is not None and holder.get("token") == self.token:
                try:
                    _gfile().remove(self.path)
                except Exception:  # noqa: BLE001 - leaving a lock behind is recovered by the stale rule
                    pass
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_config(model_dir: str, operative: str, resumed_step: int | None) -> None:
    """Writes the accepted run's operative gin config to `model_dir/config.gin` (process 0). A previous config.gin
    that differs is kept as `config.step<N>.gin`, N being the step the run resumes from (the config that trained up
    to it)."""
    if jax.process_index() != 0:
        return
    gfile = _gfile()
    path = os.path.join(model_dir, "config.gin")
    if gfile.exists(path):
        with gfile.GFile(path, "r") as f:
            previous = f.read()
        if previous == operative:
            return
        gfile.rename(path, os.path.join(model_dir, f"config.step{resumed_step or 0}.gin"), overwrite=True)
    with gfile.GFile(path, "w") as f:
        f.write(operative)
