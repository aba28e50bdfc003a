"""Every public error and warning of daglite.

Hierarchy::

    DagliteError (Exception)
    ├── TaskError                 a task failed; .task_name, .key, .error
    │   ├── TaskTimeoutError      the task ran longer than its ``timeout``
    │   ├── TaskMemoryError       the task's worker went over its ``memory`` limit
    │   └── WorkerLostError       the worker process running the task died
    ├── EvaluationError           ``on_error="continue"``: every failure, plus the results kept
    ├── GraphError (ValueError)   the DAG itself is malformed (cycle, zip length mismatch)
    ├── ArgumentsNotPicklableError (TypeError)  an input cannot travel to a worker
    ├── ResultNotPicklableError (TypeError)     a result cannot travel back
    └── BackendError (RuntimeError)  unknown, missing or broken backend

    DagliteWarning (UserWarning)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentsNotPicklableError",
    "BackendError",
    "DagliteError",
    "DagliteWarning",
    "EvaluationError",
    "GraphError",
    "ResultNotPicklableError",
    "TaskError",
    "TaskMemoryError",
    "TaskTimeoutError",
    "WorkerLostError",
]


class DagliteError(Exception):
    """Root of every error daglite raises itself."""


class TaskError(DagliteError):
    """A task raised, timed out, or lost its worker.

    The user's original exception is kept as ``__cause__`` and in ``.error``,
    so ``except TaskError as e: raise e.error`` re-raises it unchanged.

    Attributes:
        task_name: The task's name.
        key: The node's key within the evaluation (``name`` or ``name[i]``).
        error: The exception raised by the task (or the daglite error that
            stands for it, e.g. a ``TimeoutError`` description).
    """

    def __init__(self, message: str, *, task_name: str, key: str, error: BaseException) -> None:
        super().__init__(message)
        self.task_name = task_name
        self.key = key
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_task_error, (type(self), str(self), self.task_name, self.key, self.error))


def _rebuild_task_error(
    cls: type[TaskError], message: str, task_name: str, key: str, error: BaseException
) -> TaskError:
    return cls(message, task_name=task_name, key=key, error=error)


class TaskTimeoutError(TaskError):
    """A task ran longer than its ``timeout=`` option.

    On the processes backend the worker that ran it has been terminated and
    replaced. Threads cannot be killed: on threads and inline the function
    keeps running in an abandoned daemon thread until it returns. Raise the
    timeout or make the task cooperative if this matters.
    """


class TaskMemoryError(TaskError):
    """A task's worker process used more memory than the task's ``memory=`` limit.

    Raised on the processes backend, which watches each worker's resident
    memory (RSS) while a call with a limit runs: past the limit the worker is
    stopped and replaced, only this task fails, and ``retries=`` re-run it on
    a fresh worker. Raise the limit, or make the task hold less at once.

    Attributes:
        limit: The limit, in bytes.
        peak: The largest resident size seen, in bytes (at least ``limit``).
    """

    def __init__(
        self,
        message: str,
        *,
        task_name: str,
        key: str,
        error: BaseException,
        limit: int = 0,
        peak: int = 0,
    ) -> None:
        super().__init__(message, task_name=task_name, key=key, error=error)
        self.limit = limit
        self.peak = peak

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (str(self), self.task_name, self.key, self.error, self.limit, self.peak)
        return (_rebuild_memory_error, fields)


def _rebuild_memory_error(
    message: str, task_name: str, key: str, error: BaseException, limit: int, peak: int
) -> TaskMemoryError:
    return TaskMemoryError(
        message, task_name=task_name, key=key, error=error, limit=limit, peak=peak
    )


class WorkerLostError(TaskError):
    """The worker process running a task died (segfault, ``os._exit``, OOM kill).

    A worker killed by a signal names it (``SIGKILL`` is what the kernel's OOM
    killer sends: give the task a ``memory=`` limit to fail it cleanly first).
    Only the task that was running in that worker fails; the pool is rebuilt and
    later evaluations work. Use ``retries=`` to re-run such a task on a fresh worker.
    """


class EvaluationError(DagliteError):
    """Raised by ``evaluate(..., on_error="continue")`` when any task failed.

    Attributes:
        errors: Every failure, ``{key: TaskError}``, in the order they happened.
        results: Every successful node's result, ``{key: value}`` (mapped
            elements under their own ``name[i]`` keys).
        skipped: Keys of the nodes that did not run because an input failed.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: dict[str, TaskError],
        results: dict[str, Any],
        skipped: list[str],
    ) -> None:
        super().__init__(message)
        self.errors = errors
        self.results = results
        self.skipped = skipped

    @property
    def exceptions(self) -> list[TaskError]:
        """The failures as a list, like ``ExceptionGroup.exceptions``."""
        return list(self.errors.values())


class GraphError(DagliteError, ValueError):
    """The DAG is malformed: a cycle, or ``zip`` over sequences of different lengths."""


class BackendError(DagliteError, RuntimeError):
    """A backend name is unknown, an optional backend is not installed, or a pool broke.

    Also met as ``TaskError.error`` of a task whose function, or job, could not
    be unpickled in a worker process (a global it uses cannot be found there).
    """


class ArgumentsNotPicklableError(DagliteError, TypeError):
    """A task's input could not be pickled to send it to a worker process.

    Met as ``TaskError.error`` of that task; the message names the parameter.
    Pass something picklable instead (a path rather than an open file, say),
    or run the task on an in-process backend (``backend="threads"``).
    """


class ResultNotPicklableError(DagliteError, TypeError):
    """A task's result could not travel back from its worker process.

    Met as ``TaskError.error`` of that task: the result could not be pickled in
    the worker, or not unpickled in the caller. Return plain data instead, or
    run the task on an in-process backend.
    """


class DagliteWarning(UserWarning):
    """Base class of daglite's warnings."""


for _cls in (
    DagliteError,
    TaskError,
    TaskTimeoutError,
    TaskMemoryError,
    WorkerLostError,
    EvaluationError,
    GraphError,
    BackendError,
    ArgumentsNotPicklableError,
    ResultNotPicklableError,
    DagliteWarning,
):
    _cls.__module__ = "daglite"
del _cls
