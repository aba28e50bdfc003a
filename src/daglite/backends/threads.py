"""Runs tasks on a ``ThreadPoolExecutor`` of the calling process."""

from __future__ import annotations

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
from daglite.backends.base import Backend
from daglite.settings import usable_cpu_count

__all__ = ["ThreadBackend"]


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
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="daglite-thread")

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
        return self._pool.submit(fn, *args, **kwargs)
