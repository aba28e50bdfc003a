"""The inline lane: calls of in-caller backends run on the engine's own thread.

A plain call that succeeds costs no unit, token, job or outcome; anything
else (a failure, a retry, a slice, a call with a timeout, a cache lookup)
takes the general path as a unit, still on this thread, in the same order.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from daglite._job import shared
from daglite._job.call import CALLER_LABEL, _call_in, _run_call
from daglite._job.channel import _Home
from daglite._job.records import _new_outcome
from daglite._run.inbox import Inbox, Message
from daglite._run.resources import ResourceGate
from daglite._run.state import RunState
from daglite._run.unit import (
    CACHE_LABEL,
    NOWHERE,
    At,
    _LaneCall,
    _Unit,
    call_of,
    next_token,
)
from daglite.backends.base import Backend
from daglite.graph.base import Graph
from daglite.plugins.hooks import CachedResult
from daglite.plugins.manager import HookDispatcher
from daglite.plugins.reporters import (
    _CLOSED,
    _CallerContext,
)


class _Lane:
    """The inline-lane part of ``_Run``."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _any_shared: bool
    _caller_lock: threading.Lock
    _has_after: bool
    _has_before: bool
    _has_lookup: bool
    engine_thread: int
    gate: ResourceGate | None
    graph: Graph
    hooks: HookDispatcher
    inbox: Inbox
    lane: collections.deque[_LaneCall | _Unit]
    pending: dict[int, tuple[Backend, list[_Unit]]]
    queue: queue.SimpleQueue[Message]
    ready_nodes: collections.deque[int]
    state: RunState

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _call_succeeded(
            self, i: int, e: int, kwargs: dict[str, Any], value: Any, duration: float, at: At
        ) -> None: ...

        def _dispatch_event(
            self, event_type: str, data: dict[str, Any], key: str | None
        ) -> None: ...

        def _finish_unit(self, unit: _Unit, outcome: Any) -> None: ...

        def _handle_one(self, message: Message) -> None: ...

        def _home_for(self, backend: Backend) -> _Home: ...

        def _node_hook(
            self, name: str, i: int, e: int, inputs: dict[str, Any], **extra: Any
        ) -> None: ...

        def _node_started(self, unit: _Unit) -> None: ...

        def _release(self, unit: _Unit) -> None: ...

        def _schedule(self, i: int) -> None: ...

        def _succeeded(self, unit: _Unit, value: Any, duration: float, at: At = ...) -> None: ...

        def key_of(self, node: int, elem: int) -> str: ...

    def _run_lane(self) -> bool:
        """Run the ready calls of in-caller backends, one after another, here.

        A plain call takes the lean path: if it succeeds it costs no unit,
        token, job or outcome, and its hooks and events are those of any
        backend. If it fails it becomes a unit and takes the general path from
        there (retries, ``on_node_error``), as do units (``_run_here``).
        Returns early when calls for other backends wait to be submitted or
        messages wait in the queue (a pool's finished job, a cancellation), so
        the loop handles them and no worker sits idle behind a long lane.

        Returns:
            False when it stopped for messages in the queue, else True.
        """
        lane, graph, queue_empty = self.lane, self.graph, self.queue.empty
        futures = graph.futures
        ready, schedule = self.ready_nodes, self._schedule
        while lane or ready:
            if self.state.aborting:
                lane.clear()
                return True
            if ready:  # dependents of the calls before: queued in that order
                while ready:
                    schedule(ready.popleft())
                if not lane:
                    return True
            if self.pending:
                return True
            if not queue_empty():
                return False
            item = lane.popleft()
            if type(item) is _Unit:
                self._run_here(item)
                continue
            i, e, kwargs, backend = item
            task = futures[i].task
            if self._has_before:
                self._node_hook("before_node_execute", i, e, kwargs)
            ctx = _CallerContext(self, task.name, i, e)
            try:
                ok, value, duration = _call_in(ctx, task.func, task._sig.call_style, kwargs)
            finally:
                events, ctx.events = ctx.events, _CLOSED  # the task is over: no more events
            if ok and not events:
                # The start, for hooks that want it: now less the run time.
                at = (time.time() - duration, CALLER_LABEL) if self._has_after else NOWHERE
                self._call_succeeded(i, e, kwargs, value, duration, at)
                continue
            # Failed, or has events from other threads: as any backend's outcome.
            unit = _Unit(i, e, self.key_of(i, e), kwargs, task, graph.metadata[i], backend)
            unit.started = True
            started = time.time() - duration
            fields = (0, ok, value, duration, events or [], 0, False, started, CALLER_LABEL)
            self._finish_unit(unit, _new_outcome(fields))
        return True

    def caller_event(self, ctx: _CallerContext, event_type: str, data: dict[str, Any]) -> None:
        """An event reported by a task of the inline lane (``_CallerContext``)."""
        if ctx.events is None and threading.get_ident() == self.engine_thread:
            self._dispatch_event(event_type, data, self.key_of(ctx.node, ctx.elem))
            return
        # From a thread the task started (and all after it, to keep the order):
        # delivered on this thread when the task returns (``_run_lane``).
        # After that (``_CLOSED``) the run may be over: the event is dropped.
        with self._caller_lock:
            events = ctx.events
            if events is _CLOSED:
                return
            if events is None:
                events = ctx.events = []
            events.append((event_type, data))

    def _run_here(self, unit: _Unit) -> None:
        """Run a unit on this thread (inline): no job, future or queue in between.

        Same runner and same completion path as every other backend; only the
        executor round trip is skipped, as it would do nothing but cost time.
        """
        if self._has_lookup and self._served_from_cache(unit):
            return
        unit.token = next_token()
        self.inbox.track(unit)  # events the task reports find it by token
        # Through the inbox: events the task flushed from another thread
        # (``_NodeContext._start_buffering``) may wait in the queue; they are
        # handled right away, so the call is done before the next one runs.
        self.inbox.outcome(_run_call(self._home_for(unit.backend), call_of(unit), True))
        while unit.parked is not None:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:  # pragma: no cover - every event sent is queued by now
                outcome = unit.parked
                self.inbox.forget(unit)
                self._finish_unit(unit, outcome)
                break
            self._handle_one(message)

    def _served_from_cache(self, unit: _Unit) -> bool:
        if self._any_shared:
            # The cache hashes values, and finds its lookup again by the very
            # inputs dict the later hooks get: resolve the call's handles once.
            unit.kwargs = shared.resolve_all(unit.kwargs)
        found = self.hooks.first_result(
            "lookup_node_result",
            key=unit.key,
            metadata=unit.meta,
            inputs=unit.kwargs,
            task=unit.task,
        )
        if not isinstance(found, CachedResult):
            return False
        self._node_started(unit)
        self._succeeded(unit, found.value, 0.0, (time.time(), CACHE_LABEL))
        if self.gate is not None:
            self._release(unit)  # it held its resources since it was queued
        return True
