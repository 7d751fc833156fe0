"""Commands in processes of their own, forked from a server that imported the heavy modules once.

A test that needs a process of its own (a signal, several fake devices, a concurrent second run, a stalled tf.data
worker that ends the process) would pay ~8 s of imports per process (TensorFlow alone ~7 s on an idle core). Here a
`multiprocessing` forkserver imports them once per test worker, before JAX starts any backend, and each command is a
fork of it: a real process (its own pid, signals, exit code, devices from its own XLA_FLAGS, JAX started fresh),
with the environment the test gives it. Commands whose test is about start-up itself (TensorFlow's C++ lines, which
modules an import pulls in) still start a fresh interpreter with `subprocess`.
"""
from __future__ import annotations

import atexit
import io
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

# What the commands import (TensorFlow, seqio, orbax, JAX, flax): importing them starts no JAX backend.
PRELOAD = ["tasks", "slam_jax.cli.train", "slam_jax.cli.finetune", "slam_jax.cli.eval", "slam_jax.cli.data"]

_context = None
_lock = threading.Lock()
_outputs: list[str] = []   # this test process' folder for the commands' output files, removed when it exits


def _output_folder() -> str:
    """A new folder for one command's stdout / stderr files, inside this test process' own temporary folder."""
    with _lock:
        if not _outputs:
            _outputs.append(tempfile.mkdtemp(prefix="warm_process_"))
            atexit.register(shutil.rmtree, _outputs[0], ignore_errors=True)
    return tempfile.mkdtemp(dir=_outputs[0])


def _server_context(server_env: dict[str, str]):
    """The forkserver context; the server starts (once per test process) with `server_env` as its environment."""
    global _context
    with _lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(PRELOAD)
            saved = dict(os.environ)
            os.environ.clear()
            os.environ.update(server_env)
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                os.environ.clear()
                os.environ.update(saved)
            _context = ctx
    return _context


def _child(kind: str, target: str, args: list[str], env: dict[str, str], out: str, err: str) -> None:
    """In the forked process: the environment, stdout/stderr files, default signals, then the command as
    `python -m target args` (kind 'module'), `python target args` ('script') or `python -c target args` ('code')."""
    os.environ.clear()
    os.environ.update(env)
    out_fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    err_fd = out_fd if err == out else os.open(err, os.O_WRONLY | os.O_APPEND)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, write_through=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if env.get("PYTHONFAULTHANDLER"):
        import faulthandler
        faulthandler.enable()
    code = 0
    try:
        if kind == "module":
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif kind == "script":
            sys.argv = [target, *args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.argv = ["-c", *args]
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:   # as Python ends on an uncaught Ctrl-C: the traceback, then death by SIGINT
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()   # what a fresh interpreter runs at exit (multiprocessing's children skip it)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class _Lines:
    """A growing output file read as a pipe: `readline` waits for a whole line while the process runs."""

    def __init__(self, path: str, proc: "WarmProcess"):
        self._file = open(path, encoding="utf-8", errors="replace")
        self._proc = proc
        self._partial = ""

    def readline(self, timeout: float | None = None) -> str:
        """The next line ('' at the end); with `timeout`, what has come by then (possibly part of a line)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            self._partial += self._file.readline()
            if self._partial.endswith("\n"):
                line, self._partial = self._partial, ""
                return line
            if self._proc.poll() is not None:
                self._partial += self._file.read()
                if "\n" in self._partial:
                    continue
                line, self._partial = self._partial, ""
                return line
            if deadline is not None and time.time() > deadline:
                line, self._partial = self._partial, ""
                return line
            time.sleep(0.02)

    def read(self) -> str:
        rest, self._partial = self._partial + self._file.read(), ""
        return rest

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class WarmProcess:
    """The `subprocess.Popen` surface the tests use (text mode): pid, poll, wait, communicate, send_signal, kill,
    returncode, and `stdout` / `stderr` to read lines from (stderr is None when merged into stdout)."""

    def __init__(self, kind: str, target: str, args: list[str], env: dict[str, str], merge_stderr: bool,
                 server_env: dict[str, str]):
        folder = _output_folder()
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        for path in (out, err):
            open(path, "w").close()
        ctx = _server_context(server_env)
        self._process = ctx.Process(target=_child, args=(kind, target, list(args), dict(env), out,
                                                          out if merge_stderr else err), daemon=False)
        self._process.start()
        self.pid = self._process.pid
        self.args = [target, *args]
        self.returncode: int | None = None
        self.stdout = _Lines(out, self)
        self.stderr = None if merge_stderr else _Lines(err, self)

    def poll(self) -> int | None:
        if self.returncode is None and self._process.exitcode is not None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        self.wait(timeout)
        return self.stdout.read(), None if self.stderr is None else self.stderr.read()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def popen(kind: str, target: str, args: list[str], env: dict[str, str], *, merge_stderr: bool = True,
          server_env: dict[str, str] | None = None) -> WarmProcess:
    """Starts the command (see `_child` for `kind`); `server_env` (default `env`) is the forkserver's environment,
    used only when this test process starts it."""
    return WarmProcess(kind, target, args, env, merge_stderr, server_env or env)


def run(kind: str, target: str, args: list[str], env: dict[str, str], *, timeout: float,
        server_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs the command to completion: `subprocess.run(..., capture_output=True, text=True, timeout=...)`."""
    proc = popen(kind, target, args, env, merge_stderr=False, server_env=server_env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
