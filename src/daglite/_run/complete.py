"""What happens when a call comes home: the completion rules of a run.

Success (results into the state, followers fed), failure (retry, or
``on_node_error`` and fail fast / skip dependents), a job lost with its
worker (blame, resubmit, quarantine), a slice of elements (failed elements
handled one by one).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final

from daglite._job.call import timeout_error
from daglite._limits import format_bytes
from daglite._run.inbox import Inbox
from daglite._run.resources import ResourceGate
from daglite._run.state import RunState
from daglite._run.unit import NOWHERE, At, OnError, _Unit
from daglite.backends.base import Backend, WorkersLost
from daglite.exceptions import (
    TaskError,
    TaskMemoryError,
    TaskTimeoutError,
    WorkerLostError,
)
from daglite.graph.base import Graph
from daglite.plugins.manager import HookDispatcher
from daglite.plugins.reporters import _CallerReporter
from daglite.tasks import Task

# A call resubmitted this many times because other calls' workers died is failed
# instead, so a pool that keeps breaking cannot loop forever.
_MAX_RESUBMITS: Final = 3


class _Completing:
    """The completion part of ``_Run``: success, retry, failure, worker loss."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _any_remote: bool
    _has_after: bool
    _keep_all: bool
    errors: dict[str, TaskError]
    failure: BaseException | None
    gate: ResourceGate | None
    graph: Graph
    hooks: HookDispatcher
    in_flight: dict[int, Future[Any]]
    in_flight_tokens: dict[int, list[int]]
    inbox: Inbox
    kept: dict[str, Any]
    on_error: OnError
    _orphans: dict[tuple[int, int], int]
    out_ahead: dict[int, tuple[_Unit, Future[Any]]]
    quarantined_job: int
    reporter: _CallerReporter
    ready_nodes: collections.deque[int]
    remote_producers: dict[int, Backend]
    state: RunState
    units: dict[int, Any]

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _back_in(self, unit: _Unit) -> None: ...

        def _map_element(self, d: int, e: int, value: Any, backend: Backend) -> _Unit: ...

        def _drop(self, unit: _Unit) -> None: ...

        def _landed(self, unit: _Unit) -> None: ...

        def _resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]: ...

        def _split(self, piece: _Unit, isolate: bool) -> None: ...

        def _slice_finished(self, piece: _Unit, outcome: Any) -> None: ...

        def _abort(self) -> None: ...

        def _deliver(self, unit: _Unit, events: list[tuple[str, dict[str, Any]]]) -> None: ...

        def _keeps_remote(self, backend: Backend) -> bool: ...

        def _after_hook(
            self, i: int, e: int, inputs: dict[str, Any], result: Any, duration: float, at: At
        ) -> None: ...

        def _node_started(self, unit: _Unit) -> None: ...

        def _queue_units(self, backend: Backend, units: list[_Unit]) -> None: ...

        def _release(self, unit: _Unit) -> None: ...

        def _ready(self, nodes: Iterable[int]) -> None: ...

        def _unit_hook(self, name: str, unit: _Unit, **extra: Any) -> None: ...

        def key_of(self, node: int, elem: int) -> str: ...

    def _job_done(self, job: Any, future: Future[Any], tokens: list[int]) -> None:
        """Job ``job`` came home: its calls' outcomes, or how it failed as a whole."""
        if getattr(job, "lent", None):  # its arguments were in segments of the backend's pool
            whole = not future.cancelled() and future.exception() is None
            job.settle(future.result() if whole else None)
        self.in_flight.pop(id(job), None)
        self.in_flight_tokens.pop(id(job), None)
        if self.quarantined_job == id(job):
            self.quarantined_job = 0
        units = [u for u in (self.units.get(t) for t in tokens) if u is not None]
        if future.cancelled():
            self._job_cancelled([u for u in units if self._unfuse(u)])
            return
        exc = future.exception()
        if exc is None:
            self._job_returned(job, future.result(), units)
            return
        units = [u for u in units if self._unfuse(u)]
        if isinstance(exc, WorkersLost):
            self._workers_lost(units, exc.lost, exc)
            return
        self._job_raised(units, exc)

    def _job_cancelled(self, units: list[_Unit]) -> None:
        """The job was cancelled: resubmit (or fail) its calls, unless the run is aborting.

        Cancelled by us (aborting), or by someone stopping a shared backend:
        then the calls did not run and are not at fault.
        """
        for unit in units:
            self._forget(unit)
            if not self.state.aborting:
                self._resubmit_or_fail(unit, RuntimeError("the backend cancelled the job"))

    def _job_returned(self, job: Any, outcomes: Any, units: list[_Unit]) -> None:
        """The job returned: pass on its outcomes, and forget the calls it skipped."""
        sent_early = getattr(outcomes, "sent_early", ())
        outcome_of = self.inbox.outcome
        for outcome in outcomes:
            outcome_of(outcome)
        self.inbox.sent_early(sent_early)  # their outcome may still be on the channel
        if len(outcomes) + len(sent_early) < len(job.calls):
            # Calls skipped: the run is failing fast, or a fused call's input failed.
            done = {o.token for o in outcomes}.union(sent_early)
            for unit in units:
                if unit.token not in done and self._unfuse(unit):
                    self._forget(unit)

    def _job_raised(self, units: list[_Unit], exc: BaseException) -> None:
        """The job raised ``exc`` as a whole: each call fails with it, a slice runs its elements."""
        for unit in units:
            self._forget(unit)
            if unit.elems is not None:  # the slice failed as a whole: run its elements
                self._split(unit, isolate=False)
            else:
                self._attempt_failed(unit, exc, 0.0, False)

    def _workers_lost(
        self, units: list[_Unit], lost: dict[int, tuple[bool, str]], exc: BaseException
    ) -> None:
        """A job's worker died: fail the calls the backend blames (``lost``).

        A backend that cannot tell which call killed its worker (Dask: a task
        queued on a dying worker fails like the one running there) blames none.
        Then every call of the job goes to quarantine and is rerun alone; one
        that loses its worker there is blamed. Calls not blamed while another
        was are rerun on the rebuilt pool as usual.
        """
        if not lost and len(units) == 1 and units[0].isolate:
            lost = {units[0].token: (False, str(exc))}  # it ran alone: it is the one
        suspects = not lost
        for unit in units:
            self._forget(unit)
            if unit.token in lost:
                if unit.elems is not None:  # somewhere in this slice: find which element
                    self._split(unit, isolate=True)
                    continue
                timed_out, description = lost[unit.token]
                over = getattr(exc, "over_memory", {}).get(unit.token)
                error = _lost_error(unit, timed_out, description, over)
                self._attempt_failed(unit, error, 0.0, timed_out)
                continue
            if suspects:
                if unit.elems is not None:
                    self._split(unit, isolate=True)
                    continue
                unit.isolate = True
            self._resubmit_or_fail(unit, exc)

    def _forget(self, unit: _Unit) -> None:
        """Stop tracking a submitted call, keeping the wait counters right."""
        self.inbox.forget(unit)
        if self.gate is not None:
            self._release(unit)

    def _resubmit_or_fail(self, unit: _Unit, cause: BaseException) -> None:
        if self.state.aborting:
            return
        self._back_in(unit)
        if unit.resubmits < _MAX_RESUBMITS:
            unit.resubmits += 1
            self._requeue(unit)
            return
        error = WorkerLostError(
            f"task {unit.task.name!r} (key {unit.key!r}) could not run: its job was lost "
            f"{unit.resubmits + 1} times ({type(cause).__name__}: {cause})",
            task_name=unit.task.name,
            key=unit.key,
            error=cause,
        )
        self._attempt_failed(unit, error, 0.0, False)

    def _requeue(self, unit: _Unit) -> None:
        self._queue_units(unit.backend, [unit])

    def _finish_unit(self, unit: _Unit, outcome: Any) -> None:
        self._forget(unit)
        if outcome.events:
            self._deliver(unit, outcome.events)
        if unit.elems is not None:
            self._slice_finished(unit, outcome)
            return
        if not unit.started:
            self._node_started(unit)
        at = (outcome.started, outcome.worker)
        if outcome.ok:
            self._succeeded(unit, outcome.value, outcome.duration, at)
        else:
            self._attempt_failed(unit, outcome.value, outcome.duration, outcome.timed_out, at)

    def _succeeded(self, unit: _Unit, value: Any, duration: float, at: At = NOWHERE) -> None:
        if self._any_remote and self._keeps_remote(unit.backend):
            self.remote_producers[unit.node] = unit.backend
        if self.out_ahead:
            self._landed(unit)
        unit.done = unit.elem < 0
        self._call_succeeded(unit.node, unit.elem, unit.kwargs, value, duration, at)
        downstream = unit.downstream
        if downstream:
            # The links are spent: no unit keeps another, or the results it
            # holds, alive until the cycle collector runs.
            unit.downstream = unit.follower = None
            for follower in downstream:
                self._input_done(follower, value)
        elif self._orphans and unit.elem >= 0:
            self._adopt(unit.node, unit.elem, value, unit.backend)

    def _call_succeeded(
        self, i: int, e: int, kwargs: dict[str, Any], value: Any, duration: float, at: At
    ) -> None:
        """Element ``e`` of node ``i`` (-1: the node itself) returned ``value``."""
        if self._has_after:
            self._after_hook(i, e, kwargs, value, duration, at)
        if self._keep_all:
            self.kept[self.key_of(i, e)] = value
        ready = self.state.node_done(i, value) if e < 0 else self.state.element_done(i, e, value)
        if ready:
            self.ready_nodes.extend(ready)

    def _input_done(self, follower: _Unit, value: Any) -> None:
        """A call ``follower`` was handed out ahead of is done here with ``value``.

        Once the last of them is done, the follower is a plain call with its
        inputs in its arguments (hooks see them; a retry runs it alone), and
        its held messages may go on.
        """
        follower.waiting -= 1
        if follower.waiting:
            return
        if follower.elem >= 0:  # an element fused after the element it maps
            follower.kwargs[follower.follows[0]] = value  # type: ignore[index]
            follower.upstreams = follower.follows = None
            self._element_fed(follower.node)
            self.inbox.upstream_done(follower)
            return
        if follower.follows is not None:  # fused: fed by the call before it
            for name in follower.follows:
                follower.kwargs[name] = value
        else:
            follower.kwargs = self._resolve(self.graph.futures[follower.node].kwargs)
        follower.upstreams = follower.follows = None
        self.state.release_inputs(follower.node)
        self.state.unclaim(follower.node)
        self.inbox.upstream_done(follower)

    def _element_fed(self, d: int) -> None:
        """An element of map ``d`` (claimed element-wise) took its input.

        Once the fan-out it maps is done, nothing needs that fan-out's
        results any more: they are released.
        """
        if self.graph.deps[d][0] not in self.state.elements_left:
            self.state.release_inputs(d)

    def _adopt(self, i: int, e: int, value: Any, backend: Backend) -> None:
        """Queue the element fused after element ``e`` of ``i`` that its job lost (``_orphans``).

        Element ``e`` of ``i`` is done now with ``value``: the element that
        maps it runs as a plain call, fed that value.
        """
        d = self._orphans.pop((i, e), None)
        if d is None or d in self.state.failed or self.state.aborting:
            return
        self._element_fed(d)
        self._requeue(self._map_element(d, e, value, backend))

    def _unfuse(self, unit: _Unit) -> bool:
        """Detach ``unit`` from the calls it went out ahead of: its job failed or skipped it.

        Returns:
            True when the unit is now a plain call (its inputs are done);
            False for a call handed out ahead of an input that is not: it is
            dropped (``_drop``), and its node is scheduled as usual once its
            inputs are done. False too for a call dropped already.
        """
        unit.follower = None
        if unit.upstreams is None:
            return self.units.get(unit.token) is unit
        self._drop(unit)
        return False

    def _attempt_failed(
        self,
        unit: _Unit,
        error: BaseException,
        duration: float,
        timed_out: bool,
        at: At = NOWHERE,
    ) -> None:
        self._back_in(unit)  # what went out ahead of it will not run: drop it
        if unit.attempt <= unit.task.retries and not self.state.aborting:
            unit.attempt += 1
            unit.started = False  # the next attempt gets its own before_node_execute
            if self.hooks.has("before_node_retry"):
                self._unit_hook(
                    "before_node_retry",
                    unit,
                    error=error,
                    attempt=unit.attempt,
                    duration=duration,
                    started=at[0],
                    worker=at[1],
                )
            self._requeue(unit)
            return
        self._unit_hook(
            "on_node_error", unit, error=error, duration=duration, started=at[0], worker=at[1]
        )
        self._record_failure(unit.node, unit.key, unit.task, error, timed_out)

    def _node_failed_before_running(self, i: int, error: BaseException) -> None:
        future = self.graph.futures[i]
        self._record_failure(i, self.graph.keys[i], future.task, error, False)

    def _record_failure(
        self, i: int, key: str, task: Task[Any, Any], error: BaseException, timed_out: bool
    ) -> None:
        task_error = _task_error(task, key, error, timed_out)
        self.errors[key] = task_error
        if self.on_error == "raise":
            if self.failure is None:
                self.failure = task_error
            self._abort()
            return
        self.state.fail(i)


def _lost_error(
    unit: _Unit, timed_out: bool, description: str, over: tuple[int, int] | None = None
) -> BaseException:
    if timed_out:
        return timeout_error(unit.task.name, unit.task.timeout)
    if over is not None:
        return _memory_error(unit, description, *over)
    return WorkerLostError(
        f"task {unit.task.name!r} (key {unit.key!r}) lost its worker: {description}",
        task_name=unit.task.name,
        key=unit.key,
        error=RuntimeError(description),
    )


def _memory_error(unit: _Unit, description: str, limit: int, peak: int) -> TaskMemoryError:
    """gh-15: the call's worker went over the call's memory limit and was stopped."""
    name = unit.task.name
    return TaskMemoryError(
        f"task {name!r} (key {unit.key!r}) used more memory than its limit of "
        f"{format_bytes(limit)} (peak seen: {format_bytes(peak)}); its worker was stopped "
        "and replaced. Raise memory= (or memory_per_task=), or hold less at once",
        task_name=name,
        key=unit.key,
        error=MemoryError(description),
        limit=limit,
        peak=peak,
    )


def _task_error(task: Task[Any, Any], key: str, error: BaseException, timed_out: bool) -> TaskError:
    if isinstance(error, TaskError):
        return error
    if timed_out:
        return TaskTimeoutError(
            f"task {task.name!r} (key {key!r}) timed out after {task.timeout}s",
            task_name=task.name,
            key=key,
            error=error,
        )
    detail = f"{type(error).__name__}: {error}"
    return TaskError(
        f"task {task.name!r} (key {key!r}) failed: {detail}",
        task_name=task.name,
        key=key,
        error=error,
    )
