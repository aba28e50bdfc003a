"""Runs tasks right away in the calling thread and returns finished futures."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ClassVar

from daglite.backends.base import Backend

__all__ = ["InlineBackend"]


class InlineBackend(Backend):
    """No pool: each job runs in the caller's thread during ``submit``."""

    name: ClassVar[str] = "inline"
    max_batch: ClassVar[int] = 1024
    runs_in_caller: ClassVar[bool] = True
    max_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn`` now, in the calling thread, and return its finished future."""
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future
