"""A stream that cannot hang silently: `next()` runs in a worker thread while the caller watches the clock.

An endless stream whose every example of one kind is dropped (all files bad under `on_error='skip'`, every pair
longer than `StreamConfig.paired_frames`) never yields a batch, and tf.data blocks in C++, where neither a signal
handler nor Ctrl-C runs. `WatchedStream.__next__` waits for the batch in short slices: after `stall_s` seconds
without one it reports what each kind has produced and dropped so far (`OneStream.stall_report`), then either raises
`StreamStalledError` or keeps waiting with a report every `stall_s` seconds; and when `stop_requested()` turns true
while it waits (SIGTERM, Ctrl-C) it raises `StoppedWhileWaiting` within a second, leaving the worker blocked
(a daemon thread, it does not hold up the exit).
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

from slam_jax.data.schema import DataError

# A stop request waits this long for a fetch in progress, so a batch that is merely slow still arrives (and the
# caller can save a consistent state) before the wait is given up.
STOP_GRACE_S = 3.0
_SLICE_S = 0.25


_BLOCKED: list["WatchedStream"] = []


def any_blocked() -> bool:
    """True when a stream was given up while its worker is still blocked inside the input pipeline: the process must
    then end with `os._exit` (interpreter shutdown would tear tf.data down under that thread and abort)."""
    return bool(_BLOCKED)


class StreamStalledError(DataError):
    """No batch arrived within the stall timeout; the message says what each kind produced and dropped."""


class StoppedWhileWaiting(RuntimeError):
    """A stop was requested while the stream was blocked; the last saved checkpoint is the state to resume."""


class WatchedStream:
    """Wraps an iterator of batches (a `OneStream`); forwards every other attribute to it.

    stall_s: seconds without a batch before the first report (0 disables the watch: plain `next`).
    fail_on_stall: raise StreamStalledError at the first report (else print it and keep waiting).
    stop_requested: polled while waiting; true -> StoppedWhileWaiting after `STOP_GRACE_S`.
    report: where waiting reports go (default print).
    """

    def __init__(self, stream: Iterator[Any], *, stall_s: float, fail_on_stall: bool,
                 stop_requested: Callable[[], bool] = lambda: False, report: Callable[[str], None] | None = None):
        self.stream, self.stall_s, self.fail_on_stall = stream, stall_s, fail_on_stall
        self.stop_requested = stop_requested
        self.report = report or (lambda line: print(line, flush=True))
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._blocked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["stream"], name)

    def __iter__(self) -> "WatchedStream":
        return self

    def _work(self) -> None:
        while True:
            self._requests.get()
            try:
                self._results.put((True, next(self.stream)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._results.put((False, e))

    def _describe(self, waited: float) -> str:
        detail = self.stream.stall_report() if hasattr(self.stream, "stall_report") else ""
        mixture = getattr(getattr(self.stream, "config", None), "mixture", None)
        return (f"no batch from the data stream{f' of mixture {mixture!r}' if mixture else ''} for {waited:.0f} s"
                + (f": {detail}" if detail else ""))

    def _give_up(self) -> None:
        self._blocked = True
        _BLOCKED.append(self)

    def __next__(self) -> Any:
        if not self.stall_s:
            return next(self.stream)
        if self._blocked:
            raise StoppedWhileWaiting("the data stream is still blocked in an earlier request")
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="stream-watchdog", daemon=True)
            self._worker.start()
        self._requests.put(None)
        start = time.time()
        next_report = start + self.stall_s
        stop_seen = None
        # Ctrl-C can land anywhere in this loop (in a report, between two waits), not only in the wait: wherever it
        # lands, the worker stays blocked in tf.data and the process must end with os._exit.
        try:
            while True:
                try:
                    ok, value = self._results.get(timeout=_SLICE_S)
                except queue.Empty:
                    now = time.time()
                    if self.stop_requested():
                        stop_seen = stop_seen or now
                        if now - stop_seen >= STOP_GRACE_S:
                            self._give_up()
                            raise StoppedWhileWaiting(
                                f"stopped while waiting for data ({self._describe(now - start)})") from None
                    if now >= next_report:
                        message = self._describe(now - start)
                        if self.fail_on_stall:
                            self._give_up()
                            raise StreamStalledError(
                                f"{message}. Nothing is lost: the last checkpoint stands. Fix or remove the data the "
                                "stream drops (raise StreamConfig.paired_frames / paired_tokens for too-long pairs), "
                                "or set StreamConfig.on_error='skip' to wait instead of failing") from None
                        self.report(f"waiting: {message}")
                        next_report = now + self.stall_s
                    continue
                if ok:
                    return value
                raise value
        except KeyboardInterrupt:
            self._give_up()
            raise
