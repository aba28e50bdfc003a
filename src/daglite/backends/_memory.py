"""The caller's watch over pool workers' memory: per-task limits (gh-15).

A worker that starts a call with ``memory=`` writes the limit beside the
call's token in its slot (``_process_worker``) and writes a byte into the
watch's wake-up pipe. This thread, in the caller, then polls the RSS of each
worker running a limited call (psutil) and stops one that passes its limit
with ``SIGKILL``, after writing the token and the peak it saw in the slot. The pool breaks as for
any dead worker; the backend reads the slot and the engine fails only that
call, with ``TaskMemoryError``.

Watching from outside, not from a thread in the worker: a task that holds
the GIL while it allocates (one big ``bytes`` join) cannot starve the watch,
and a worker too busy to answer is stopped all the same. While no limited
call runs the thread sleeps on the pipe: a run without limits pays nothing.

A pipe, not a ``multiprocessing.Event``: such an event's lock is held by
whoever sets it, and a worker killed while setting it (stopped here, or
terminated with its broken pool) would leave it held forever, hanging the
next ``set`` in the caller. A byte written to a pipe holds nothing.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Any, Final, final

from daglite.backends._process_worker import (
    LIMIT,
    OVER_MEMORY,
    PEAK,
    PID,
    SLOT_WIDTH,
    TOKEN,
    poke,
)

__all__ = ["MemoryWatch"]

# Seconds between two looks at a limited worker's RSS. A task that allocates
# 1 GB/s passes its limit by at most ~20 MB before it is stopped; a look costs
# ~20 us per limited worker.
POLL_INTERVAL: Final = 0.02


@final
class MemoryWatch:
    """One thread per pool that stops workers over their running call's memory limit.

    Args:
        slots: The pool's shared slot array.
        wake: The read end of the pipe workers write to when a limited call
            starts (a ``Connection``; its bytes are read raw).
        waker: The write end: the caller keeps it to wake the thread when it
            stops, and hands it to the pool's workers.
    """

    def __init__(self, slots: Any, wake: Any, waker: Any) -> None:
        self._slots = slots
        self._wake = wake
        self._waker = waker
        self._stop = threading.Event()
        self._peaks: dict[int, tuple[int, int]] = {}  # slot base -> (token, peak RSS)
        self._processes: dict[int, Any] = {}  # pid -> psutil.Process
        self._thread = threading.Thread(target=self._run, name="daglite-memory-watch", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """End the thread (``wait``: until it has ended). Never blocks otherwise."""
        self._stop.set()
        with contextlib.suppress(OSError):  # the thread ended already, and closed it
            poke(self._waker.fileno())
        if wait:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        stop, fd = self._stop, self._wake.fileno()
        try:
            while not stop.is_set():
                select.select([fd], [], [])
                if not _drain(fd):
                    return  # every write end is closed
                while not stop.is_set() and self._check():
                    stop.wait(POLL_INTERVAL)
        finally:
            self._wake.close()
            self._waker.close()

    def _check(self) -> bool:
        """Look at every worker running a limited call; True if there is one."""
        slots, limited = self._slots, False
        for base in range(0, len(slots), SLOT_WIDTH):
            pid, token, limit = slots[base + PID], slots[base + TOKEN], slots[base + LIMIT]
            if not (pid and token and limit) or slots[base + OVER_MEMORY] == token:
                continue
            rss = self._rss(pid)
            if rss is None:
                continue
            limited = True
            seen_token, peak = self._peaks.get(base, (0, 0))
            peak = max(rss, peak if seen_token == token else 0)
            self._peaks[base] = (token, peak)
            if rss > limit and slots[base + TOKEN] == token:
                self._stop_worker(base, pid, token, peak)
        return limited

    def _rss(self, pid: int) -> int | None:
        """Resident memory of ``pid`` in bytes, or None if it is gone."""
        import psutil

        try:
            process = self._processes.get(pid)
            if process is None:
                if len(self._processes) > 256:
                    self._processes.clear()
                process = self._processes[pid] = psutil.Process(pid)
            return int(process.memory_info().rss)
        except psutil.Error:
            self._processes.pop(pid, None)
            return None

    def _stop_worker(self, base: int, pid: int, token: int, peak: int) -> None:
        """Record why, then kill: the backend reads the slot once the pool breaks."""
        slots = self._slots
        slots[base + PEAK] = peak
        slots[base + OVER_MEMORY] = token
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended meanwhile
            pass


def _drain(fd: int) -> bool:
    """Read what the pipe holds; False once no writer is left (end of file)."""
    try:
        return bool(os.read(fd, 65536))
    except BlockingIOError:
        return True
