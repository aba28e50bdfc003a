"""daglite: static DAGs of plain functions on interchangeable backends.

Public surface: ``task``, ``evaluate``, ``evaluate_async``, ``Task``,
``TaskFuture``, ``CachePolicy`` and the errors of ``daglite.exceptions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daglite._cache_policy import CachePolicy
from daglite.engine import evaluate, evaluate_async
from daglite.exceptions import (
    ArgumentsNotPicklableError,
    BackendError,
    DagliteError,
    DagliteWarning,
    EvaluationError,
    GraphError,
    ResultNotPicklableError,
    TaskError,
    TaskMemoryError,
    TaskTimeoutError,
    WorkerLostError,
)
from daglite.tasks import Task, TaskFuture, task

__all__ = [
    "ArgumentsNotPicklableError",
    "BackendError",
    "CachePolicy",
    "DagliteError",
    "DagliteWarning",
    "EvaluationError",
    "GraphError",
    "ResultNotPicklableError",
    "Task",
    "TaskError",
    "TaskFuture",
    "TaskMemoryError",
    "TaskTimeoutError",
    "WorkerLostError",
    "__version__",
    "evaluate",
    "evaluate_async",
    "task",
]

if TYPE_CHECKING:
    __version__: str


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("daglite")
        except PackageNotFoundError:  # running from a source tree
            return "0.0.0"
    raise AttributeError(f"module 'daglite' has no attribute {name!r}")
