"""Runs tasks on a ``ThreadPoolExecutor`` of the calling process."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar

from daglite.backends.base import Backend
from daglite.settings import usable_cpu_count

__all__ = ["ThreadBackend"]


class ThreadBackend(Backend):
    """A thread pool; good for I/O-bound and GIL-releasing tasks.

    Args:
        max_workers: Thread count (default: usable CPUs + 4, capped at 32, like
            ``ThreadPoolExecutor``).
    """

    name: ClassVar[str] = "threads"
    max_batch: ClassVar[int] = 32

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        self.max_workers = max_workers or min(32, usable_cpu_count() + 4)
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the thread pool."""
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
        return self._pool.submit(fn, *args, **kwargs)
