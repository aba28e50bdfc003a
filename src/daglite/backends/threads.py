"""Runs tasks on a ``ThreadPoolExecutor`` of the calling process.

Nested runs (gh-15): a task on one of the pool's threads that calls
``evaluate`` on this same backend holds a thread while it waits. Were its
inner jobs only queued behind the pool's other work, a pool whose every
thread waits on an inner run would never get on. So a job submitted from one
of the pool's own threads can be taken back: the waiting run calls the
future's ``run_here`` and runs the job on its own thread if no pool thread
has started it yet, while idle pool threads take the others. The run holds
one thread throughout and the pool never grows: one budget, no deadlock, at
any depth.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, ClassVar, Literal

from daglite.backends._native import (
    NativeThreads,
    call_limited,
    check_native_threads,
    threads_per_worker,
)
from daglite.backends.base import Backend, mark_pool_thread, pool_thread_backend
from daglite.settings import usable_cpu_count

__all__ = ["ThreadBackend"]


class _TakeBack(Future[Any]):
    """The future of a job submitted from the pool's own thread: whoever claims it runs it.

    A pool thread, or the run waiting for it (``run_here``), nested in a call
    of this pool.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self._fn = fn
        self._claim = threading.Lock()

    def run_here(self) -> bool:
        """Run the job now, on this thread, unless someone did already.

        Returns:
            True if it ran here (or was cancelled), False if another thread has it.
        """
        if not self._claim.acquire(blocking=False):
            return False
        if not self.set_running_or_notify_cancel():
            return True
        try:
            result = self._fn()
        except BaseException as exc:  # handed over like an Executor's work item
            self.set_exception(exc)
        else:
            self.set_result(result)
        return True


class ThreadBackend(Backend):
    """A thread pool; good for I/O-bound and GIL-releasing tasks.

    Args:
        max_workers: Thread count (default: usable CPUs + 4, capped at 32, like
            ``ThreadPoolExecutor``).
        native_threads: Threads the native pools (BLAS, OpenMP) may use while
            jobs run, set with ``threadpoolctl``. ``"auto"``: usable CPUs //
            ``max_workers`` (at least 1); an int: that count; None: leave the
            pools alone. OpenMP's limit is set per job in its thread. OpenBLAS,
            MKL and BLIS have one limit for the whole process: jobs running at
            the same time share it (the first to start sets it, the last to end
            restores the previous limits), and other threads of the process see
            it meanwhile. Applied only once numpy or torch is imported.

    Raises:
        ValueError: If ``max_workers`` or ``native_threads`` is out of range.
    """

    name: ClassVar[str] = "threads"
    max_batch: ClassVar[int] = 32
    # A chain runs call after call anyway: in one job it costs no hop per call.
    max_chain: ClassVar[int | None] = 1024

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        native_threads: int | Literal["auto"] | None = "auto",
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        self.native_threads: NativeThreads = check_native_threads(native_threads)
        self.max_workers = self._threads = max_workers or min(32, usable_cpu_count() + 4)
        self._pool: ThreadPoolExecutor | None = None
        self._native_count: int | None = None

    def start(self) -> None:
        """Start the thread pool."""
        self._native_count = threads_per_worker(self.native_threads, self._threads)
        self._pool = ThreadPoolExecutor(
            self.max_workers,
            thread_name_prefix="daglite-thread",
            initializer=mark_pool_thread,
            initargs=(self,),
        )

    def stop(self) -> None:
        """Shut the thread pool down: queued calls are cancelled, running ones waited for."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def cancel_running(self) -> None:
        """Drop the thread pool without waiting: queued calls are cancelled, running ones run on."""
        pool, self._pool = self._pool, None
        self._started = False
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn`` to the thread pool (starting the backend if needed)."""
        self.ensure_started()
        assert self._pool is not None
        count = self._native_count
        if count is not None:
            fn = partial(call_limited, count, fn)
        if pool_thread_backend() is self:  # from a run nested in one of our calls
            queued = _TakeBack(partial(fn, *args, **kwargs))
            self._pool.submit(queued.run_here)
            return queued
        return self._pool.submit(fn, *args, **kwargs)
