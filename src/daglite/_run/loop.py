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
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, final

from daglite._job import shared
from daglite._job.channel import _Home
from daglite._job.messages import EarlyOutcome, Events
from daglite._run.ahead import _Ahead
from daglite._run.complete import _Completing
from daglite._run.inbox import Cancel, Inbox, JobDone, Message
from daglite._run.lane import _Lane
from daglite._run.notify import AFTER_ARGS, _Notifying
from daglite._run.plan import _Planning
from daglite._run.slices import _Slicing
from daglite._run.state import RunState
from daglite._run.submit import _Submitting
from daglite._run.unit import (
    OnError,
    _LaneCall,
    _Unit,
)
from daglite.backends.base import Backend
from daglite.exceptions import (
    EvaluationError,
    TaskError,
)
from daglite.graph.base import Graph
from daglite.graph.fuse import Link
from daglite.plugins.manager import HookDispatcher
from daglite.plugins.reporters import (
    EventRegistry,
    _CallerReporter,
)
from daglite.tasks import Task

logger = logging.getLogger("daglite")


@final
class _Run(_Planning, _Submitting, _Completing, _Ahead, _Slicing, _Lane, _Notifying):
    """State and loop of one evaluation.

    The parts live in their own modules: planning (``plan``), submission
    (``submit``), completions (``complete``), calls handed out ahead of their
    inputs and what comes home (``ahead``), the bulk path (``slices``), the
    inline lane (``lane``) and hooks and events (``notify``); each declares
    what it uses of the others. The bookkeeping is ``state``, the ordering of
    what comes home ``inbox``. This class owns the queue and the loop.
    """

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
        # The tokens each job in flight was submitted with (see ``_abort``).
        self.in_flight_tokens: dict[int, list[int]] = {}
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
        # Whether results may come home as ``SharedValue`` handles (gh-14), and
        # whether any hook looks at the values (they are resolved for it then).
        self._any_shared = False
        self._sees_inputs = any(hooks.has(h) and hooks.takes(h, "inputs") for h in _NODE_HOOKS)
        self._sees_result = hooks.has("after_node_execute") and hooks.takes(
            "after_node_execute", "result"
        )
        # Per task: its backend, and whether its plain calls take the inline lane.
        self._routes: dict[int, tuple[Backend, bool]] = {}
        self._keep_all = on_error == "continue"
        self.engine_thread = 0
        self._has_before = hooks.has("before_node_execute")
        self._has_after = hooks.has("after_node_execute")
        self._call_after = hooks.caller("after_node_execute", AFTER_ARGS)
        self._has_lookup = hooks.has("lookup_node_result")
        # Set once plugins registered their handlers: whether nobody watches
        # single nodes, so wide fan-outs may travel in slices (``_slices``).
        self._bulk = False
        # A cache plugin answers per call at submit time: chains are not fused
        # then, and in-caller calls all go as units.
        self._fuse_ok = self._lane_ok = not self._has_lookup
        self._links: dict[int, Link] | None = None  # chain fusion, found on first use
        # Per (caller's value, backend): its handle in shared memory, made once
        # when several calls take it (``_share_literals``); weakly, so that the
        # segment goes when the last call that took it does. None: one call
        # took it so far.
        self._literal_handles: dict[tuple[int, int], weakref.ref[Any] | None] = {}
        # Element-wise fusion (``_Planning._element_chain``): its links (found
        # on first use), the maps claimed to run fused after the elements they
        # map, and per element ``(node, e)`` whose fused follower was taken
        # back, the map whose element ``e`` waits for it (``_adopt``).
        self._element_links: dict[int, Link] | None = None
        self._elementwise: set[int] = set()
        self._orphans: dict[tuple[int, int], int] = {}
        # Calls handed out ahead of their inputs (``ahead``): nodes whose call is
        # out on a backend that takes pending inputs, and per consumer how many
        # inputs are neither done nor out.
        self.out_ahead: dict[int, tuple[_Unit, Future[Any]]] = {}
        self._missing: dict[int, int] = {}
        # Per node: whether the caller needs its result (found on first use).
        self._needed_home: dict[int, bool] = {}
        self._values_watched: bool | None = None

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
            threshold = backend.shared_memory_threshold
            if threshold:
                pool = backend.segment_pool()
                home.shared = shared.for_run(str(self.run_id), threshold, pool)
                self._any_shared = True
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

    def _ready(self, nodes: Iterable[int]) -> None:
        """Queue nodes a transition made ready; the loop schedules them in order."""
        self.ready_nodes.extend(nodes)

    def _schedule_ready(self) -> None:
        """Schedule the nodes made ready, in the order they became ready."""
        ready, schedule = self.ready_nodes, self._schedule
        while ready:
            schedule(ready.popleft())

    def _abort(self) -> None:
        """Fail fast: submit nothing more, cancel queued jobs, await running ones.

        A job whose every call has reported is not cancelled (see below).
        """
        self.state.abort()
        self.ready_nodes.clear()
        self.pending.clear()
        self.lane.clear()
        self.quarantine.clear()
        if self.gate is not None:
            self.gate.clear()
        for home in self.homes.values():
            home.abort = True
        units = self.units
        for job, future in list(self.in_flight.items()):
            tokens = self.in_flight_tokens.get(job)
            if tokens is None or any(t in units for t in tokens):
                future.cancel()
            # Else every call of the job reported (ahead, on the channel): it is
            # over but for its reply. Cancelling it gains nothing, and on Ray it
            # would kill a worker that is about to return (a new one takes a
            # second to start).

    def execute(self) -> Any:
        self.engine_thread = threading.get_ident()
        hooks = self.hooks
        for plugin in hooks.plugins:
            register = getattr(plugin, "register_event_handlers", None)
            if callable(register):
                register(self.registry)
        # Wide fan-outs may travel in slices unless a plugin waits for single
        # elements to start, answers for them (cache) or handles their events.
        self._bulk = not (self._has_before or self._has_lookup or self.registry)
        started = time.perf_counter()
        hooks.call(
            "before_graph_execute",
            root_id=self.run_id,
            node_count=self.node_count,
            is_async=self.is_async,
            graph=_description(self.graph)
            if hooks.takes("before_graph_execute", "graph")
            else None,
        )
        try:
            self._loop()
            if self._any_shared:
                self._resolve_shared()
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
                if home.shared is not None:
                    shared.end_run(home.shared)
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

    def _resolve_shared(self) -> None:
        """Results the run returns, as values: their segments go when the run ends."""
        results = self.state.results
        for r in self.graph.roots:
            results[r] = shared.resolve(results[r])
        for key, value in self.kept.items():
            self.kept[key] = shared.resolve(value)

    def _loop(self) -> None:
        self.ready_nodes.extend(self.state.initial())
        get_nowait, handle = self.queue.get_nowait, self._handle_one
        wait = self._waiter()  # blocks; Ctrl-C still interrupts it on the main thread
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


_NODE_HOOKS = (
    "before_node_execute",
    "after_node_execute",
    "on_node_error",
    "before_node_retry",
    "lookup_node_result",
)


def _description(graph: Graph) -> Any:
    """The ``GraphDescription`` of ``graph``, for hooks that ask for it."""
    from daglite.describe import _describe_graph

    return _describe_graph(graph)
