"""Failing fast leaves alone a job whose every call has already reported.

A backend may deliver a job's outcomes ahead of the job's own reply (on the
reporter channel, as a long job's flusher does). Such a job is over but for
that reply: cancelling it gains nothing, and on Ray it would kill a worker
about to return. A job with a call still running is cancelled as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from daglite import TaskError, evaluate, task
from daglite._job.messages import EarlyOutcome
from daglite.backends import Backend

_unblock = threading.Event()


@task
def explode() -> None:
    raise ValueError("boom")


@task
def blocked() -> int:
    assert _unblock.wait(60)  # released by the cancel of its job (bounded)
    return 1


class _Recorded(Future[Any]):
    def __init__(self, backend: ReportsAhead, keys: list[str]) -> None:
        super().__init__()
        self.backend, self.keys = backend, keys

    def cancel(self) -> bool:
        self.backend.cancelled.extend(self.keys)
        _unblock.set()
        return super().cancel() if not self.running() else False


class ReportsAhead(Backend):
    """Runs each job on a thread, then sends its outcomes ahead of its reply."""

    name = "reports-ahead"
    max_batch = 1
    max_workers = 2

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="reports-ahead")
        self.cancelled: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        outer = _Recorded(self, [call.key for call in fn.calls])
        outer.set_running_or_notify_cancel()
        self.pool.submit(self._run, fn, outer)
        return outer

    def _run(self, job: Any, outer: _Recorded) -> None:
        outcomes = job()
        for outcome in outcomes:
            job.home.send(EarlyOutcome(outcome))
        outcomes.sent_early.extend(o.token for o in outcomes)
        del outcomes[:]
        outer.set_result(outcomes)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)


def test_failing_fast_cancels_only_jobs_with_a_call_still_running():
    _unblock.clear()
    backend = ReportsAhead()
    try:
        with pytest.raises(TaskError, match="boom"):
            evaluate([explode(), blocked()], backend=backend)
    finally:
        _unblock.set()
        backend.shutdown()
    assert backend.cancelled == ["blocked"]  # not "explode": it had reported
