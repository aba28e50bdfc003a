"""``_Run``: one evaluation's state and its scheduler loop.

The loop runs on the calling thread (the coordinator). It submits every node
whose inputs are ready to that node's backend, packing ready calls into jobs,
then blocks on one queue fed by job completions and by the reporter channel.
Every hook and event handler is called from this loop, so plugins see one call
at a time, in order:

* a job's outcomes carry each task's buffered events; a task that ran long has
  sent some of its events already, and its outcome says how many, so the
  engine waits for those before finishing the node (nothing lost or late);
* a node is submitted only after all its inputs' ``after_node_execute`` ran.

Fan-outs (``product``/``zip``/``map``) expand into one call per element when
their inputs are ready, so widths known only at run time work the same way.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, Final, Literal, final

from daglite._job.call import _call_in, _run_call, timeout_error
from daglite._job.channel import _Home
from daglite._job.job import _Job
from daglite._job.messages import EarlyOutcome, Events
from daglite._job.records import Elements, _new_outcome
from daglite._run.inbox import Cancel, Inbox, JobDone, Message
from daglite._run.state import RunState
from daglite._unit import _chain_of, _element_kwargs, _Unit, call_of
from daglite.backends.base import Backend, WorkersLost
from daglite.exceptions import (
    EvaluationError,
    GraphError,
    TaskError,
    TaskTimeoutError,
    WorkerLostError,
)
from daglite.graph.base import Graph
from daglite.graph.fuse import Link, fusable_links
from daglite.graph.walk import CONTAINERS, replace
from daglite.plugins import log_bridge
from daglite.plugins.hooks import CachedResult
from daglite.plugins.manager import HookDispatcher
from daglite.plugins.reporters import (
    _CLOSED,
    DROPPED_EVENT,
    LOG_EVENT,
    START_EVENT,
    EventRegistry,
    _CallerContext,
    _CallerReporter,
)
from daglite.settings import strict_plugins
from daglite.tasks import Task, TaskFuture

logger = logging.getLogger("daglite")
OnError = Literal["raise", "continue"]

# A call resubmitted this many times because other calls' workers died is failed
# instead, so a pool that keeps breaking cannot loop forever.
_MAX_RESUBMITS: Final = 3
_token_counter = itertools.count(1)
# A plain call of the inline lane: node, element (-1: none), kwargs, backend.
_LaneCall = tuple[int, int, dict[str, Any], Backend]


@final
class _Run:
    """State and loop of one evaluation."""

    def __init__(
        self,
        graph: Graph,
        default_backend: Backend,
        backends_by_task: Callable[[Task[Any, Any]], Backend],
        hooks: HookDispatcher,
        on_error: OnError,
        is_async: bool,
    ) -> None:
        self.graph = graph
        self.default_backend = default_backend
        self.backend_of = backends_by_task
        self.hooks = hooks
        self.on_error = on_error
        self.is_async = is_async
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.run_id = uuid.uuid4()
        self.registry = EventRegistry()
        self.reporter = _CallerReporter(self._dispatch_event)
        self.state = RunState(graph)
        # Nodes made ready by completions, scheduled by the loop in this order.
        self.ready_nodes: collections.deque[int] = collections.deque()
        self.node_count = graph.node_count
        # Submitted calls by token, and the order of what comes home for them.
        self.inbox = Inbox(self._deliver, self._finish_unit)
        self.units = self.inbox.calls
        self.pending: dict[int, tuple[Backend, list[_Unit]]] = {}
        # Ready calls of in-caller backends (inline), run in this order by
        # ``_run_lane``: a plain call as (node, element, kwargs, backend),
        # any other (a retry, a slice, a call with a timeout) as its unit.
        self.lane: collections.deque[_LaneCall | _Unit] = collections.deque()
        self._caller_lock = threading.Lock()  # guards ``_CallerContext.events``
        self.in_flight: dict[int, Future[Any]] = {}
        # Calls that were on a worker that died, not shown at fault: each runs
        # alone, nothing else of this run in flight, so a repeat death names it.
        self.quarantine: collections.deque[_Unit] = collections.deque()
        self.quarantined_job = 0
        self.homes: dict[int, _Home] = {}
        self.errors: dict[str, TaskError] = {}
        self.kept: dict[str, Any] = {}
        self.failure: BaseException | None = None
        self.remote_producers: dict[int, Backend] = {}
        self._remote_kind: dict[int, bool] = {}
        self._any_remote = False  # whether a backend of this run keeps results remote
        # Per task: its backend, and whether its plain calls take the inline lane.
        self._routes: dict[int, tuple[Backend, bool]] = {}
        self._keep_all = on_error == "continue"
        self.engine_thread = 0
        self._has_before = hooks.has("before_node_execute")
        self._has_after = hooks.has("after_node_execute")
        self._has_lookup = hooks.has("lookup_node_result")
        # Set once plugins registered their handlers: whether nobody watches
        # single nodes, so wide fan-outs may travel in slices (``_slices``).
        self._bulk = False
        # A cache plugin answers per call at submit time: chains are not fused
        # then, and in-caller calls all go as units.
        self._fuse_ok = self._lane_ok = not self._has_lookup
        self._links: dict[int, Link] | None = None  # chain fusion, found on first use

    # -- messages ------------------------------------------------------------------

    def _sink(self, message: Message) -> None:
        """Entry point for the reporter channel (any thread)."""
        if threading.get_ident() == self.engine_thread:
            self._handle(message)  # inline: the task runs on this very thread
        else:
            self.queue.put(message)

    def _home_for(self, backend: Backend) -> _Home:
        home = self.homes.get(id(backend))
        if home is None:
            transport = backend.event_transport(self._sink)
            home = _Home(str(self.run_id), self._sink, transport)
            home.wants_start = self._has_before
            self.homes[id(backend)] = home
        return home

    def _handle(self, message: Message) -> None:
        if isinstance(message, JobDone):
            self._job_done(message.job, message.future, message.tokens)
        elif isinstance(message, Events):
            self.inbox.events(message)
        elif isinstance(message, EarlyOutcome):
            self.inbox.outcome(message.outcome)
        elif isinstance(message, Cancel):
            raise asyncio.CancelledError()
        else:  # pragma: no cover - a bug, never user input
            raise RuntimeError(f"engine got an unknown message {message!r}")

    def _handle_one(self, message: Message) -> None:
        """Handle ``message``, then any held messages it released (``Inbox.replay``)."""
        self._handle(message)
        if self.inbox.ready:
            self.inbox.replay()

    def _deliver(self, unit: _Unit, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, data in events:
            if event_type == START_EVENT:
                self._node_started(unit)
            elif event_type == LOG_EVENT:
                log_bridge.emit_in_caller(data)
            elif event_type == DROPPED_EVENT:
                logger.warning(
                    "event %r from task %r (key %r) could not be pickled and was dropped: %s",
                    data.get("event_type"),
                    unit.task.name,
                    unit.key,
                    data.get("reason"),
                )
            else:
                self._dispatch_event(event_type, data, unit.key)

    def _dispatch_event(self, event_type: str, data: dict[str, Any], key: str | None) -> None:
        handlers = self.registry.handlers(event_type)
        if not handlers:
            return
        event = {**data, "type": event_type}
        if key is not None:
            event["key"] = key
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                if strict_plugins():
                    raise
                logger.exception(
                    "event handler %r for %r raised; the run goes on", handler, event_type
                )

    def _node_started(self, unit: _Unit) -> None:
        if unit.started:
            return
        unit.started = True
        if self._has_before:
            self._unit_hook("before_node_execute", unit)

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self, i: int) -> None:
        """Node ``i``'s inputs are ready: make its calls and queue them for submission."""
        graph = self.graph
        future = graph.futures[i]
        task = future.task
        backend, lane = self._route(task)
        kwargs = future.kwargs
        if graph.deps[i] or future.iterated is not None:
            inputs = self._inputs(i, future, backend)
            if inputs is None:
                return
            kwargs, names, rows = inputs
            if future.iterated is not None:
                self._schedule_elements(i, task, kwargs, names, rows, backend)
                return
        if lane:
            self.lane.append((i, -1, kwargs, backend))
            return
        unit = _Unit(i, -1, graph.keys[i], kwargs, task, graph.metadata[i], backend)
        if self._fuse_ok and not backend.runs_in_caller and not self._keeps_remote(backend):
            self._fuse(unit)
        self._queue_units(backend, [unit])

    def _inputs(
        self, i: int, future: TaskFuture[Any], backend: Backend
    ) -> tuple[dict[str, Any], tuple[str, ...], list[Any]] | None:
        """Node ``i``'s arguments with its inputs' results filled in, and for a
        fan-out its parameter names and rows (``_expand``); its inputs are then
        released. None when that failed, and so did the node."""
        try:
            if self.remote_producers:
                self._fetch_remote_inputs(i, backend)
            kwargs = self._resolve(future.kwargs) if self.graph.deps[i] else future.kwargs
            if future.iterated is None:
                return kwargs, (), []
            return (kwargs, *self._expand(i, future, kwargs))
        except Exception as exc:
            self._node_failed_before_running(i, exc)
            return None
        finally:
            self.state.release_inputs(i)

    def _schedule_elements(
        self,
        i: int,
        task: Task[Any, Any],
        kwargs: dict[str, Any],
        names: tuple[str, ...],
        rows: list[Any],
        backend: Backend,
    ) -> None:
        """Queue one call per element of fan-out ``i`` (or slices of them)."""
        if not rows:
            self._ready(self.state.fan_out(i, 0))
            return
        self.state.fan_out(i, len(rows))
        if self._sliceable(task, backend, len(rows)):
            self._queue_units(backend, self._slices(i, kwargs, names, rows, backend))
        elif self._route(task)[1]:
            self.lane.extend(
                (i, e, _element_kwargs(kwargs, names, row), backend) for e, row in enumerate(rows)
            )
        else:
            key, meta = self.graph.keys[i], self.graph.metadata[i]
            units = [
                _Unit(i, e, f"{key}[{e}]", _element_kwargs(kwargs, names, row), task, meta, backend)
                for e, row in enumerate(rows)
            ]
            self._queue_units(backend, units)

    def _fuse(self, head: _Unit) -> None:
        """Send the single-call chain hanging off ``head`` in one job with it.

        The links come from ``graph.fuse`` (once per run): each follower runs
        in the same worker right after the call before it, with no round trip
        through the caller per hop. Hooks and events keep their order: a
        follower's messages are held until the call before it is done in the
        caller. A chain stops at the backend's batch size or at a node that
        already failed (``on_error="continue"``).
        """
        links = self._links
        if links is None:
            links = self._links = fusable_links(self.graph, self._same_place)
        graph, failed, length, unit = self.graph, self.state.failed, 1, head
        while length < unit.backend.max_batch:
            link = links.get(unit.node)
            if link is None or link[0] in failed:
                break
            d, names = link
            future = graph.futures[d]
            kwargs = {n: (None if n in names else v) for n, v in future.kwargs.items()}
            follower = _Unit(
                d, -1, graph.keys[d], kwargs, future.task, graph.metadata[d], unit.backend
            )
            follower.follows, follower.upstream = names, unit
            self.state.claim(d)
            unit.follower = follower
            unit = follower
            length += 1

    def _same_place(self, i: int, d: int) -> bool:
        """Whether nodes ``i`` and ``d`` run on one backend that fuses chains."""
        futures = self.graph.futures
        backend = self._backend_for(futures[i].task)
        return (
            self._backend_for(futures[d].task) is backend
            and not backend.runs_in_caller
            and not self._keeps_remote(backend)
        )

    def _sliceable(self, task: Task[Any, Any], backend: Backend, width: int) -> bool:
        """Whether a fan-out may take the bulk path: nobody watches its elements,
        they have no deadline of their own, and results come home (not Dask)."""
        return self._bulk and width > 1 and task.timeout is None and not self._keeps_remote(backend)

    def _queue_units(self, backend: Backend, units: list[_Unit]) -> None:
        if backend.runs_in_caller:
            self.lane.extend(units)
            return
        entry = self.pending.get(id(backend))
        if entry is None:
            self.pending[id(backend)] = (backend, units)
        else:
            entry[1].extend(units)

    def _keeps_remote(self, backend: Backend) -> bool:
        found = self._remote_kind.get(id(backend))
        if found is None:
            found = self._remote_kind[id(backend)] = (
                type(backend).materialize is not Backend.materialize
            )
        return found

    def _backend_for(self, task: Task[Any, Any]) -> Backend:
        return self._route(task)[0]

    def _route(self, task: Task[Any, Any]) -> tuple[Backend, bool]:
        """The backend ``task`` runs on, and whether its plain calls take the
        inline lane (``_run_lane``): the backend runs calls in the caller and
        keeps no result remote, the task has no timeout, no cache plugin."""
        found = self._routes.get(id(task))
        if found is None:
            backend = self.backend_of(task)
            remote = self._keeps_remote(backend)
            self._any_remote = self._any_remote or remote
            lane = self._lane_ok and backend.runs_in_caller and not remote
            found = self._routes[id(task)] = (backend, lane and task.timeout is None)
        return found

    def _fetch_remote_inputs(self, i: int, consumer: Backend) -> None:
        """Inputs kept on another backend's workers (Dask stand-ins) are fetched
        once when a task on a different backend needs them."""
        results = self.state.results
        for d in self.graph.deps[i]:
            producer = self.remote_producers.get(d)
            if producer is not None and producer is not consumer:
                results[d] = producer.materialize(results[d])
                del self.remote_producers[d]

    def _resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A node's arguments with its inputs' results in place of their futures."""
        index, results = self.graph.index, self.state.results
        out = {}
        for name, value in kwargs.items():
            if isinstance(value, TaskFuture):
                out[name] = results[index[value]]
            elif isinstance(value, CONTAINERS):
                out[name] = self._substitute(value)
            else:
                out[name] = value
        return out

    def _substitute(self, value: Any) -> Any:
        """``value`` with the results of the futures in it (containers walked)."""
        index, results = self.graph.index, self.state.results
        return replace(value, TaskFuture, lambda f: results[index[f]])

    def _slices(
        self,
        i: int,
        base: dict[str, Any],
        names: tuple[str, ...],
        rows: list[Any],
        backend: Backend,
    ) -> list[_Unit]:
        """A fan-out's elements in a few slices, each run as one call (bulk path).

        Like ``Executor.map`` with a chunksize: four slices per worker (one on
        inline), so the caller handles a handful of calls instead of one per
        element. An element that fails is taken out and handled on its own
        (retries, ``on_node_error``, its key in the error).
        """
        task, meta, key = self.graph.futures[i].task, self.graph.metadata[i], self.graph.keys[i]
        parts = 1 if backend.runs_in_caller else 4 * (backend.max_workers or 1)
        size = math.ceil(len(rows) / parts)
        # A slice may end at its first failure only if that fails the run.
        stop = self.on_error == "raise" and task.retries == 0
        sig = task._sig
        positional = len(names) == 1 and sig.call_style is None and sig.positional[:1] == names
        units = []
        for first in range(0, len(rows), size):
            unit = _Unit(i, first, key, base, task, meta, backend)
            unit.elems = Elements(names, rows[first : first + size], first, stop, positional)
            units.append(unit)
        return units

    def _element_unit(self, piece: _Unit, e: int) -> _Unit:
        """Element ``e`` of slice ``piece`` as a unit of its own."""
        assert piece.elems is not None
        names, rows, first = piece.elems[:3]
        kwargs = _element_kwargs(piece.kwargs, names, rows[e - first])
        key = f"{piece.key}[{e}]"
        return _Unit(piece.node, e, key, kwargs, piece.task, piece.meta, piece.backend)

    def _split(self, piece: _Unit, isolate: bool) -> None:
        """Run a slice's elements one by one instead (the slice failed as a whole)."""
        assert piece.elems is not None
        if self.state.aborting:
            return
        first = piece.elems.first
        for e in range(first, first + len(piece.elems.rows)):
            unit = self._element_unit(piece, e)
            unit.isolate = isolate
            self._requeue(unit)

    def _expand(
        self, i: int, future: TaskFuture[Any], base: dict[str, Any]
    ) -> tuple[tuple[str, ...], list[Any]]:
        """The fan-out's parameter names and its rows: a value per element for one
        name, else a tuple per element."""
        assert future.iterated is not None
        names = list(future.iterated)
        seqs = []
        dynamic = False
        for name in names:
            value = future.iterated[name]
            if isinstance(value, TaskFuture):
                dynamic = True
                value = self._substitute(value)
                if not isinstance(value, Iterable) or isinstance(value, (str, bytes, dict)):
                    raise TypeError(
                        f"task {future.task.name!r}: parameter {name!r} must receive a list "
                        f"to fan out over, got {type(value).__name__}"
                    )
            elif self.graph.deps[i]:  # the list itself may hold futures
                value = self._substitute(value)
            seqs.append(list(value))
        if future.mode == "zip":
            if len({len(s) for s in seqs}) > 1:
                shown = ", ".join(f"{n}={len(s)}" for n, s in zip(names, seqs))
                raise GraphError(
                    f"task {future.task.name!r}: zip() needs sequences of equal length, got {shown}"
                )
            rows = seqs[0] if len(names) == 1 else list(zip(*seqs))
        else:
            rows = seqs[0] if len(names) == 1 else list(itertools.product(*seqs))
        if dynamic:
            self.node_count += len(rows)
            self.hooks.call(
                "on_graph_expand",
                root_id=self.run_id,
                key=self.graph.keys[i],
                added=len(rows),
                node_count=self.node_count,
            )
        return tuple(names), rows

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
        while self.pending:
            _, (backend, units) = self.pending.popitem()
            if self.state.aborting:
                self.pending.clear()
                return
            if self._has_lookup:
                units = [u for u in units if not self._served_from_cache(u)]
            if any(u.isolate or u.elems is not None or u.follower for u in units):
                self.quarantine.extend(u for u in units if u.isolate)
                for unit in units:
                    if unit.isolate:
                        continue
                    if unit.elems is not None:
                        self._submit_job(backend, [unit])  # a slice is a job of its own
                    elif unit.follower:
                        self._submit_job(backend, _chain_of(unit))  # so is a fused chain
                units = [u for u in units if not (u.isolate or u.elems is not None or u.follower)]
            workers = backend.max_workers or 1
            size = max(1, min(backend.max_batch, math.ceil(len(units) / (2 * workers))))
            for start in range(0, len(units), size):
                self._submit_job(backend, units[start : start + size])
                if self.state.aborting:
                    return

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
        ready = self.ready_nodes
        while lane:
            if self.state.aborting:
                lane.clear()
                return True
            if ready:  # dependents of the calls before: queued in that order
                self._schedule_ready()
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
                self._call_succeeded(i, e, kwargs, value, duration)
                continue
            # Failed, or has events from other threads: as any backend's outcome.
            unit = _Unit(i, e, self.key_of(i, e), kwargs, task, graph.metadata[i], backend)
            unit.started = True
            self._finish_unit(unit, _new_outcome((0, ok, value, duration, events or [], 0, False)))
        return True

    def _node_hook(self, name: str, i: int, e: int, inputs: dict[str, Any], **extra: Any) -> None:
        """Call hook ``name`` for element ``e`` of node ``i`` (-1: the node itself)."""
        self.hooks.call(
            name,
            key=self.key_of(i, e),
            metadata=self.graph.metadata[i],
            inputs=inputs,
            reporter=self.reporter,
            **extra,
        )

    def _unit_hook(self, name: str, unit: _Unit, **extra: Any) -> None:
        """Call hook ``name`` for the call ``unit``."""
        self.hooks.call(
            name,
            key=unit.key,
            metadata=unit.meta,
            inputs=unit.kwargs,
            reporter=self.reporter,
            **extra,
        )

    def key_of(self, node: int, elem: int) -> str:
        """Key of node ``node``, or of its element ``elem`` (``name[elem]``) if >= 0."""
        key = self.graph.keys[node]
        return key if elem < 0 else f"{key}[{elem}]"

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
        unit.token = next(_token_counter)
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

    def _submit_job(self, backend: Backend, units: list[_Unit]) -> int:
        """Hand ``units`` to ``backend`` as one job; returns the job's id."""
        track = self.inbox.track
        for unit in units:
            unit.token = next(_token_counter)
            track(unit)
        job = _Job(self._home_for(backend), [call_of(u) for u in units])
        backend.ensure_started()
        future = backend.submit(job)
        self.in_flight[id(job)] = future
        # Always through the queue: a callback that runs at once (inline) must not
        # call hooks inside add_done_callback, which would swallow their errors.
        # The tokens as submitted: a call of this job may be requeued (retried,
        # with a new token) before the job itself reports done.
        tokens = [u.token for u in units]
        future.add_done_callback(lambda f: self.queue.put(JobDone(job, f, tokens)))
        return id(job)

    def _served_from_cache(self, unit: _Unit) -> bool:
        found = self.hooks.first_result(
            "lookup_node_result", key=unit.key, metadata=unit.meta, inputs=unit.kwargs
        )
        if not isinstance(found, CachedResult):
            return False
        self._node_started(unit)
        self._succeeded(unit, found.value, 0.0)
        return True

    # -- completions ---------------------------------------------------------------

    def _job_done(self, job: Any, future: Future[Any], tokens: list[int]) -> None:
        self.in_flight.pop(id(job), None)
        if self.quarantined_job == id(job):
            self.quarantined_job = 0
        units = [u for u in (self.units.get(t) for t in tokens) if u is not None]
        if future.cancelled() or future.exception() is not None:
            units = [u for u in units if self._unfuse(u)]
        if future.cancelled():
            # Cancelled by us (aborting), or by someone stopping a shared backend:
            # then the calls did not run and are not at fault.
            for unit in units:
                self._forget(unit)
                if not self.state.aborting:
                    self._resubmit_or_fail(unit, RuntimeError("the backend cancelled the job"))
            return
        exc = future.exception()
        if exc is None:
            outcomes = future.result()
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
            return
        if isinstance(exc, WorkersLost):
            self._workers_lost(units, exc.lost, exc)
            return
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
                self._attempt_failed(
                    unit, _lost_error(unit, timed_out, description), 0.0, timed_out
                )
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

    def _resubmit_or_fail(self, unit: _Unit, cause: BaseException) -> None:
        if self.state.aborting:
            return
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
        if outcome.ok:
            self._succeeded(unit, outcome.value, outcome.duration)
        else:
            self._attempt_failed(unit, outcome.value, outcome.duration, outcome.timed_out)

    def _succeeded(self, unit: _Unit, value: Any, duration: float) -> None:
        if self._any_remote and self._keeps_remote(unit.backend):
            self.remote_producers[unit.node] = unit.backend
        unit.done = unit.elem < 0
        self._call_succeeded(unit.node, unit.elem, unit.kwargs, value, duration)
        if unit.follower:
            self._input_done(unit.follower, value)

    def _call_succeeded(
        self, i: int, e: int, kwargs: dict[str, Any], value: Any, duration: float
    ) -> None:
        """Element ``e`` of node ``i`` (-1: the node itself) returned ``value``."""
        if self._has_after:
            self._node_hook("after_node_execute", i, e, kwargs, result=value, duration=duration)
        if self._keep_all:
            self.kept[self.key_of(i, e)] = value
        ready = self.state.node_done(i, value) if e < 0 else self.state.element_done(i, e, value)
        if ready:
            self.ready_nodes.extend(ready)

    def _input_done(self, follower: _Unit, value: Any) -> None:
        """The call before ``follower`` in its fused chain is done: fill in its input."""
        assert follower.follows is not None
        for name in follower.follows:
            follower.kwargs[name] = value
        self.state.release_inputs(follower.node)
        self.inbox.upstream_done(follower)

    def _unfuse(self, unit: _Unit) -> bool:
        """Detach ``unit`` from its fused chain: its job failed or skipped it.

        Returns:
            True when the unit is now a plain call (its input, if any, is done);
            False for a follower whose input is not: it is dropped, and its node
            is scheduled as usual once that input is done.
        """
        unit.follower = None
        upstream = unit.upstream
        if upstream is None:
            return True
        unit.upstream = unit.follows = unit.stash = None
        upstream.follower = None
        self.state.unclaim(unit.node)
        if upstream.done:
            return True
        self._forget(unit)
        return False

    def _slice_finished(self, piece: _Unit, outcome: Any) -> None:
        if not outcome.ok:  # the slice could not run (say, an element would not pickle)
            self._split(piece, isolate=False)
            return
        assert piece.elems is not None
        values, errors = outcome.value.values, outcome.value.errors
        i, first = piece.node, piece.elem
        if self._keep_all:
            for e, value in enumerate(values):
                if e not in errors:
                    self.kept[f"{piece.key}[{first + e}]"] = value
        for e, (error, duration) in errors.items():
            self._attempt_failed(self._element_unit(piece, first + e), error, duration, False)
        if not self.state.aborting:  # elements a slice skipped after a failure still run
            for e in range(first + len(values), first + len(piece.elems.rows)):
                self._requeue(self._element_unit(piece, e))
        self._ready(self.state.slice_done(i, first, values, len(errors)))

    def _ready(self, nodes: Iterable[int]) -> None:
        """Queue nodes a transition made ready; the loop schedules them in order."""
        self.ready_nodes.extend(nodes)

    def _schedule_ready(self) -> None:
        """Schedule the nodes made ready, in the order they became ready."""
        ready, schedule = self.ready_nodes, self._schedule
        while ready:
            schedule(ready.popleft())

    def _attempt_failed(
        self, unit: _Unit, error: BaseException, duration: float, timed_out: bool
    ) -> None:
        if unit.follower:  # the calls fused after it will not run: drop them
            for follower in _chain_of(unit)[1:]:
                self._unfuse(follower)
        if unit.upstream is not None:
            self._unfuse(unit)  # its input is done: a retry is a plain call
        if unit.attempt <= unit.task.retries and not self.state.aborting:
            unit.attempt += 1
            unit.started = False  # the next attempt gets its own before_node_execute
            if self.hooks.has("before_node_retry"):
                self._unit_hook(
                    "before_node_retry", unit, error=error, attempt=unit.attempt, duration=duration
                )
            self._requeue(unit)
            return
        self._unit_hook("on_node_error", unit, error=error, duration=duration)
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

    def _abort(self) -> None:
        """Fail fast: submit nothing more, cancel queued jobs, await running ones."""
        self.state.abort()
        self.ready_nodes.clear()
        self.pending.clear()
        self.lane.clear()
        self.quarantine.clear()
        for home in self.homes.values():
            home.abort = True
        for future in list(self.in_flight.values()):
            future.cancel()

    # -- the loop ------------------------------------------------------------------

    def execute(self) -> Any:
        self.engine_thread = threading.get_ident()
        hooks = self.hooks
        for plugin in hooks.plugins:
            register = getattr(plugin, "register_event_handlers", None)
            if callable(register):
                register(self.registry)
        self._bulk = not (self._has_before or self._has_after or self._has_lookup or self.registry)
        started = time.perf_counter()
        hooks.call(
            "before_graph_execute",
            root_id=self.run_id,
            node_count=self.node_count,
            is_async=self.is_async,
        )
        try:
            self._loop()
        except BaseException as exc:
            self._interrupted(exc)
            hooks.call(
                "on_graph_error",
                root_id=self.run_id,
                error=exc,
                duration=time.perf_counter() - started,
                is_async=self.is_async,
            )
            raise
        finally:
            for home in self.homes.values():
                home.close()
            hooks.report_failures()
        duration = time.perf_counter() - started
        error = self._final_error()
        if error is not None:
            hooks.call(
                "on_graph_error",
                root_id=self.run_id,
                error=error,
                duration=duration,
                is_async=self.is_async,
            )
            raise error from (error.error if isinstance(error, TaskError) else None)
        result = [
            self.backend_of(self.graph.futures[r].task).materialize(self.state.results[r])
            for r in self.graph.roots
        ]
        hooks.call(
            "after_graph_execute",
            root_id=self.run_id,
            result=result[0] if len(result) == 1 else result,
            duration=duration,
            is_async=self.is_async,
        )
        return result

    def _loop(self) -> None:
        self.ready_nodes.extend(self.state.initial())
        get_nowait, handle = self.queue.get_nowait, self._handle_one
        wait = self.queue.get  # blocks; Ctrl-C still interrupts it on the main thread
        while True:
            self._submit_pending()
            if not (
                self.in_flight
                or self.ready_nodes
                or self.pending
                or self.lane
                or self.inbox.waiting()
                or self.quarantine
            ):
                break
            handle(wait())
            while True:
                try:
                    message = get_nowait()
                except queue.Empty:
                    break
                handle(message)

    def cancel(self) -> None:
        """Stop the run from another thread (a cancelled ``evaluate_async``).

        Calls running in this process stop between elements of a slice, or
        after the call at hand; the engine then stops everything else.
        """
        # The message first: a job that sees ``abort`` and stops early reports
        # done after it, so the engine is cancelling by then, not forgetting calls.
        self.queue.put(Cancel())
        for home in list(self.homes.values()):
            home.abort = True

    def _interrupted(self, exc: BaseException) -> None:
        """Ctrl-C or cancellation: stop everything in flight, right now."""
        busy = {id(u.backend): u.backend for u in self.units.values()}
        self._abort()
        for backend in busy.values():
            try:
                backend.cancel_running()
            except Exception:
                logger.exception("could not stop backend %r", backend)
        logger.debug("evaluation interrupted by %r", exc)

    def _final_error(self) -> BaseException | None:
        if self.on_error == "raise":
            return self.failure
        if not self.errors:
            return None
        names = ", ".join(list(self.errors)[:5]) + (", ..." if len(self.errors) > 5 else "")
        return EvaluationError(
            f"{len(self.errors)} task(s) failed ({names}); {len(self.state.skipped)} skipped, "
            f"{len(self.kept)} succeeded (see .errors, .results, .skipped)",
            errors=self.errors,
            results=self.kept,
            skipped=self.state.skipped,
        )


def _lost_error(unit: _Unit, timed_out: bool, description: str) -> BaseException:
    if timed_out:
        return timeout_error(unit.task.name, unit.task.timeout)
    return WorkerLostError(
        f"task {unit.task.name!r} (key {unit.key!r}) lost its worker: {description}",
        task_name=unit.task.name,
        key=unit.key,
        error=RuntimeError(description),
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
