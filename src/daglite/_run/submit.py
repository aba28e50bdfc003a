"""Submission: ready calls to jobs, jobs to their backends.

Calls for in-caller backends join the inline lane; the others wait in
``pending`` per backend until the loop submits them: a slice or a fused chain
as a job of its own, a quarantined call alone once nothing else of the run is
in flight, plain calls packed about two jobs per worker. Each job's
completion comes back to the loop's queue as ``JobDone``.
"""

from __future__ import annotations

import collections
import math
import queue
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from daglite._job.channel import _Home
from daglite._job.job import _Job
from daglite._run.inbox import Inbox, JobDone, Message
from daglite._run.resources import ResourceGate
from daglite._run.state import RunState
from daglite._run.unit import _chain_of, _LaneCall, _Unit, call_of, next_token
from daglite.backends.base import Backend, pool_thread_backend


class _Submitting:
    """The submission part of ``_Run``."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _any_remote: bool
    _fuse_ok: bool
    _has_lookup: bool
    in_flight: dict[int, Future[Any]]
    in_flight_tokens: dict[int, list[int]]
    inbox: Inbox
    lane: collections.deque[_LaneCall | _Unit]
    pending: dict[int, tuple[Backend, list[_Unit]]]
    quarantine: collections.deque[_Unit]
    quarantined_job: int
    queue: queue.SimpleQueue[Message]
    ready_nodes: collections.deque[int]
    state: RunState
    # gh-15: set by ``evaluate`` after the run is made, when it has them.
    gate: ResourceGate | None = None
    memory_default: int | None = None

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _went_out(self, units: list[_Unit], future: Future[Any]) -> None: ...

        def _stays_remote(self, backend: Backend, units: list[_Unit]) -> frozenset[int]: ...

        def _home_for(self, backend: Backend) -> _Home: ...

        def _run_lane(self) -> bool: ...

        def _schedule_ready(self) -> None: ...

        def _served_from_cache(self, unit: _Unit) -> bool: ...

    def _queue_units(self, backend: Backend, units: list[_Unit]) -> None:
        if self.gate is not None:
            units = self.gate.admit(units)  # the others wait for resources (gh-15)
            if not units:
                return
        if backend.runs_in_caller:
            self.lane.extend(units)
            return
        entry = self.pending.get(id(backend))
        if entry is None:
            self.pending[id(backend)] = (backend, units)
        else:
            entry[1].extend(units)

    def _submit_pending(self) -> None:
        self._schedule_ready()
        if self.quarantined_job:
            return  # a quarantined call runs alone
        while self.pending or self.lane or self.ready_nodes:
            self._schedule_ready()
            self._submit_units()
            if self.lane and not self._run_lane():
                break  # messages wait in the queue: the loop handles them first
        if self.quarantine and not self.in_flight:
            unit = self.quarantine.popleft()
            self.quarantined_job = self._submit_job(unit.backend, [unit])

    def _submit_units(self) -> None:
        """Hand the pending calls to their backends, backend by backend."""
        while self.pending:
            _, (backend, units) = self.pending.popitem()
            if self.state.aborting:
                self.pending.clear()
                return
            if self._has_lookup:
                units = [u for u in units if not self._served_from_cache(u)]
            self._submit_batches(backend, self._submit_alone(backend, units))
            if self.state.aborting:
                return

    def _submit_alone(self, backend: Backend, units: list[_Unit]) -> list[_Unit]:
        """Submit the calls that travel in a job of their own; return the others.

        A slice is one job, and so is a fused chain; a quarantined call waits
        to run alone (``_submit_pending``).
        """
        if not any(u.isolate or u.elems is not None or u.follower for u in units):
            return units
        plain = []
        elements: list[list[_Unit]] = []
        for unit in units:
            if unit.isolate:
                self.quarantine.append(unit)
            elif unit.elems is not None:  # with the slices fused after it, if any
                self._submit_job(backend, _chain_of(unit))
            elif unit.follower and unit.elem >= 0:
                elements.append(_chain_of(unit))
            elif unit.follower:
                self._submit_job(backend, _chain_of(unit))
            else:
                plain.append(unit)
        if elements:
            self._submit_chains(backend, elements)
        return plain

    def _submit_chains(self, backend: Backend, chains: list[list[_Unit]]) -> None:
        """Pack the fused chains of a fan-out's elements into jobs, like plain calls.

        About two jobs per worker, ``max_batch`` calls at most (a chain is never
        split). A job runs its chains one after another; a chain whose call
        fails skips the rest of that chain only.
        """
        workers = backend.max_workers or 1
        per_job = max(1, math.ceil(len(chains) / (2 * workers)))
        limit = backend.max_batch
        job: list[_Unit] = []
        count = 0
        for chain in chains:
            if job and (count == per_job or len(job) + len(chain) > limit):
                self._submit_job(backend, job)
                if self.state.aborting:
                    return
                job, count = [], 0
            job.extend(chain)
            count += 1
        self._submit_job(backend, job)

    def _submit_batches(self, backend: Backend, units: list[_Unit]) -> None:
        """Pack plain calls into jobs: about two per worker, ``max_batch`` at most."""
        workers = backend.max_workers or 1
        size = max(1, min(backend.max_batch, math.ceil(len(units) / (2 * workers))))
        for start in range(0, len(units), size):
            self._submit_job(backend, units[start : start + size])
            if self.state.aborting:
                return

    def _submit_job(self, backend: Backend, units: list[_Unit]) -> int:
        """Hand ``units`` to ``backend`` as one job; returns the job's id."""
        track = self.inbox.track
        for unit in units:
            unit.token = next_token()
            track(unit)
        memory = self.memory_default
        job = _Job(self._home_for(backend), [call_of(u, memory) for u in units])
        if self.gate is not None:
            job.resources = _resources_of(units)
        if self._any_remote:
            job.keep_remote = self._stays_remote(backend, units)
        backend.ensure_started()
        future = backend.submit(job)
        self.in_flight[id(job)] = future
        # The tokens as submitted: a call of this job may be requeued (retried,
        # with a new token) before the job itself reports done.
        tokens = self.in_flight_tokens[id(job)] = [u.token for u in units]
        if backend.accepts_pending_inputs and self._fuse_ok:
            self._went_out(units, future)
        # Always through the queue: a callback that runs at once (inline) must not
        # call hooks inside add_done_callback, which would swallow their errors.
        future.add_done_callback(lambda f: self.queue.put(JobDone(job, f, tokens)))
        return id(job)

    def _waiter(self) -> Callable[[], Message]:
        """How the loop waits for its next message.

        A run nested in a call on a pool's thread (gh-15) first runs, on this
        thread, its own jobs the pool has not started yet (``run_here``), so
        it gets on when every thread of the pool waits, as this one does.
        """
        if pool_thread_backend() is None:
            return self.queue.get
        return self._wait_running_own_jobs

    def _wait_running_own_jobs(self) -> Message:
        while self.queue.empty() and self._take_back():
            pass
        return self.queue.get()

    def _take_back(self) -> bool:
        """Run here one job of this run no worker has started; True if one ran."""
        for future in reversed(list(self.in_flight.values())):
            run_here = getattr(future, "run_here", None)
            if run_here is not None and run_here():
                return True
        return False

    def _release(self, unit: _Unit) -> None:
        """``unit`` is over: its resources go to the calls waiting for them (gh-15)."""
        assert self.gate is not None
        if self.state.aborting:
            self.gate.clear()
        for admitted in self.gate.release(unit):
            self._queue_units(admitted.backend, [admitted])


def _resources_of(units: list[_Unit]) -> dict[str, float] | None:
    """What a job's calls hold, for a backend that schedules resources too (gh-15).

    The most any one call asks for, per resource: the calls run one after another.
    """
    need: dict[str, float] = {}
    for unit in units:
        for name, amount in (unit.task.resources or {}).items():
            need[name] = max(amount, need.get(name, 0))
    return need or None
