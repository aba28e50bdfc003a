"""The process-pool worker's own state (runs in each worker process).

Each worker claims a slot in an array shared with the caller and records
there the token of the call it runs, so when a worker dies the backend can
tell which call it took with it (``ProcessBackend._lost_workers``). A call
that times out cannot be stopped in-process: the worker records that in its
slot and ends itself with ``TIMEOUT_EXIT_CODE``. A call with a memory limit
writes the limit beside its token and wakes the caller's memory watch
(``backends._memory``), which stops the worker from outside when its RSS
passes the limit. A watchdog thread ends the worker when the caller dies, so
no worker outlives it.

A slot is ``SLOT_WIDTH`` integers: pid, running token, timed-out token,
memory limit of the running call, token stopped for memory, peak RSS seen.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final, NoReturn, final

from daglite._job import call
from daglite.backends._native import WorkerLimits, apply_worker_limits

# Exit status of a process worker that ends itself because its task timed out.
TIMEOUT_EXIT_CODE: Final = 75

# The fields of a worker's slot in the shared array (see the module docstring).
SLOT_WIDTH: Final = 6
PID, TOKEN, TIMED_OUT, LIMIT, OVER_MEMORY, PEAK = range(SLOT_WIDTH)


@final
class _WorkerState:
    """Per worker process: which call it runs, in a slot of an array shared with the caller.

    The slot lets the caller tell which task a dead worker took with it.
    """

    __slots__ = ("base", "is_pool_worker", "limited", "slots", "watched")

    def __init__(self) -> None:
        self.is_pool_worker = False
        self.slots: Any = None
        self.base = -1  # index of this worker's slot's first field
        self.limited = False  # whether the call running now has a memory limit
        # The write end of the caller's memory watch's wake-up pipe (``_memory``).
        self.watched: Any = None

    def attach(self, slots: Any, lock: Any, watched: Any = None) -> None:
        with lock:
            for base in range(0, len(slots), SLOT_WIDTH):
                pid = slots[base + PID]
                if pid == 0 or not _pid_exists(pid):
                    slots[base : base + SLOT_WIDTH] = [os.getpid()] + [0] * (SLOT_WIDTH - 1)
                    self.base = base
                    break
        self.slots = slots
        self.watched = watched
        self.is_pool_worker = True

    def running(self, token: int, memory: int = 0) -> None:
        base = self.base
        if base < 0:
            return
        if memory or self.limited:
            # The limit before the token: the watch reads the token, then its limit.
            self.slots[base + LIMIT] = memory
            self.limited = bool(memory)
        self.slots[base + TOKEN] = token
        if memory and self.watched is not None:
            poke(self.watched.fileno())

    def timed_out(self, token: int) -> NoReturn:
        if self.base >= 0:
            self.slots[self.base + TIMED_OUT] = token
        os._exit(TIMEOUT_EXIT_CODE)


_worker_state: Final = _WorkerState()


def init_pool_worker(
    slots: Any,
    lock: Any,
    parent_pid: int,
    native: WorkerLimits | None = None,
    watched: Any = None,
) -> None:
    """``initializer`` of process-pool workers: limit native pools, claim a slot, watch the parent.

    The thread variables are set before the worker unpickles any task, so
    before the task's imports load the libraries that read them.
    """
    if native is not None:
        apply_worker_limits(native)
    _worker_state.attach(slots, lock, watched)
    call.worker = _worker_state
    threading.Thread(
        target=_exit_when_parent_dies, args=(parent_pid,), name="daglite-watchdog", daemon=True
    ).start()


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Block until the caller is gone, then end this worker (no orphans)."""
    import select

    try:
        fd = os.pidfd_open(parent_pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    while _pid_exists(parent_pid) and os.getppid() != 1:
        time.sleep(1.0)
    os._exit(1)


def _pid_exists(pid: int) -> bool:
    import psutil  # here, not at import: pool workers start faster without it

    return bool(psutil.pid_exists(pid))


def poke(fd: int) -> None:
    """Write a byte to a watch's wake-up pipe without ever blocking.

    A full pipe already wakes the watch, and a closed one has no watch left
    to wake: both are fine.
    """
    try:
        os.write(fd, b"\0")
    except OSError:  # BlockingIOError (full), BrokenPipeError, EBADF (closed)
        pass
