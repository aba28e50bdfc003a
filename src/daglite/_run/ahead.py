"""Calls handed out ahead of their inputs, and which results come home.

A backend with ``accepts_pending_inputs`` (Dask, Ray) may be handed a call whose
inputs are still running there: the call's arguments hold ``PendingResult``
markers (the input call's token, and the future the backend returned for its
job) where those results go, and the backend runs the call once they exist,
next to them, with no round trip through the caller. So whenever calls go out
to such a backend, each consumer whose inputs are now all done or out there
goes out too (``_went_out``): a chain, or a whole DAG, is handed over as fast
as the engine submits. Such a call is *claimed*, like a fused follower, and
the same rules keep the order the caller sees: its messages are stashed until
every input is done in the caller (``Inbox``), and when an input fails, is
retried or loses its worker, the calls that went out ahead of it are taken
back (``_drop``) and planned again as usual once their inputs are done.

Bookkeeping, kept only for nodes it touches: ``out_ahead`` maps a node whose
single call is out on such a backend to its unit and its job's future;
``_missing[d]`` counts the inputs of ``d`` neither done nor out, so ``d`` may
go ahead when it reaches zero. An input that succeeds leaves both the inputs
``d`` waits for and ``out_ahead``, so the count does not move then.

What comes home: a backend that keeps results on its workers (one that
overrides ``Backend.materialize``) learns from each job which results the
caller does not need (``_Job.keep_remote``): those of calls whose consumers
all run there too, unless the call is a root, a consumer expands a fan-out
from it, or a plugin asks to see results or inputs (a node hook that declares
``result`` or ``inputs``; ``on_error="continue"`` keeps results too).
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final

from daglite._job.records import PendingResult
from daglite._run.state import RunState
from daglite._run.unit import _Unit
from daglite.backends.base import Backend
from daglite.graph.base import Graph
from daglite.graph.walk import CONTAINERS, replace
from daglite.plugins.manager import HookDispatcher
from daglite.tasks import Task, TaskFuture

# Node hooks whose ``inputs`` show what a call received.
_HOOKS_WITH_INPUTS: Final = (
    "before_node_execute",
    "after_node_execute",
    "on_node_error",
    "before_node_retry",
    "lookup_node_result",
)


class _Ahead:
    """The part of ``_Run`` that hands calls out ahead of their inputs."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _fuse_ok: bool
    _keep_all: bool
    _missing: dict[int, int]
    _orphans: dict[tuple[int, int], int]
    _needed_home: dict[int, bool]
    _values_watched: bool | None
    graph: Graph
    hooks: HookDispatcher
    out_ahead: dict[int, tuple[_Unit, Future[Any]]]
    state: RunState

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _forget(self, unit: _Unit) -> None: ...

        def _fuse_if_fusing(self, head: _Unit) -> None: ...

        def _queue_units(self, backend: Backend, units: list[_Unit]) -> None: ...

        def _route(self, task: Task[Any, Any]) -> tuple[Backend, bool]: ...

    # -- handing out -------------------------------------------------------------

    def _went_out(self, units: list[_Unit], future: Future[Any]) -> None:
        """``units`` went out in one job (``future``): their consumers may follow them."""
        out, graph, missing, waiting = self.out_ahead, self.graph, self._missing, self.state.waiting
        for unit in units:
            if unit.elem >= 0 or unit.elems is not None or unit.isolate:
                continue  # an element's or a slice's result is put together here
            out[unit.node] = (unit, future)
            for d in graph.dependents_of(unit.node):
                left = missing.get(d, waiting[d]) - 1
                missing[d] = left
                if left == 0:
                    self._go_ahead(d, unit.backend)

    def _go_ahead(self, d: int, backend: Backend) -> None:
        """Hand node ``d`` out now if it can go: every input is done or out on ``backend``."""
        state, graph = self.state, self.graph
        future = graph.futures[d]
        if (
            d in state.claimed
            or d in state.failed
            or state.aborting
            or future.iterated is not None
            or self._route(future.task)[0] is not backend
        ):
            return
        upstreams: list[_Unit] = []
        kwargs = self._with_pending(d, future.kwargs, upstreams)
        unit = _Unit(d, -1, graph.keys[d], kwargs, future.task, graph.metadata[d], backend)
        unit.upstreams, unit.waiting = upstreams, len(upstreams)
        for up in upstreams:
            if up.downstream is None:
                up.downstream = [unit]
            else:
                up.downstream.append(unit)
        state.claim(d)
        self._fuse_if_fusing(unit)
        self._queue_units(backend, [unit])

    def _with_pending(
        self, d: int, kwargs: dict[str, Any], upstreams: list[_Unit]
    ) -> dict[str, Any]:
        """``d``'s arguments: results of inputs done, ``PendingResult`` for those out."""
        out, results, index = self.out_ahead, self.state.results, self.graph.index
        found: dict[int, Any] = {}
        for x in self.graph.deps[d]:
            entry = out.get(x)
            if entry is None:
                found[x] = results[x]
            else:
                unit, job_future = entry
                found[x] = PendingResult(unit.token, job_future)
                upstreams.append(unit)

        def value_of(f: TaskFuture[Any]) -> Any:
            return found[index[f]]

        return {
            name: value_of(value)
            if isinstance(value, TaskFuture)
            else replace(value, TaskFuture, value_of)
            if isinstance(value, CONTAINERS)
            else value
            for name, value in kwargs.items()
        }

    # -- coming back -------------------------------------------------------------

    def _landed(self, unit: _Unit) -> None:
        """``unit`` succeeded: it is no longer out (nor missing for its consumers)."""
        entry = self.out_ahead.get(unit.node)
        if entry is not None and entry[0] is unit:
            del self.out_ahead[unit.node]

    def _back_in(self, unit: _Unit) -> None:
        """``unit`` is no longer out and not done (failed, retried, lost).

        The calls that went out ahead of it are taken back (``_drop``).
        """
        self._not_out(unit)
        downstream, unit.downstream = unit.downstream, None
        unit.follower = None
        for follower in downstream or ():
            if follower.upstreams is not None:
                self._drop(follower)

    def _drop(self, unit: _Unit) -> None:
        """Take back ``unit`` and, transitively, what went out ahead of it.

        Each is forgotten (its messages, if any come, are dropped) and
        unclaimed: its node is scheduled as usual once its inputs are done.
        An element of a map fused after the element it maps stays claimed
        (the map's other elements run on): it is an orphan, queued alone once
        the element it maps is done (``_adopt``).
        """
        stack = [unit]
        while stack:
            unit = stack.pop()
            for up in unit.upstreams or ():
                if up.downstream and unit in up.downstream:
                    up.downstream.remove(unit)
                if up.follower is unit:
                    up.follower = None
                if unit.elem >= 0:  # a map's elements: each runs once the one it maps is done
                    count = 1 if unit.elems is None else len(unit.elems.rows)
                    for e in range(unit.elem, unit.elem + count):
                        self._orphans[(up.node, e)] = unit.node
            if unit.elem < 0:
                self.state.unclaim(unit.node)
            unit.upstreams = unit.follows = unit.stash = None
            unit.waiting = 0
            self._forget(unit)
            self._not_out(unit)
            downstream, unit.downstream = unit.downstream, None
            unit.follower = None
            stack.extend(f for f in downstream or () if f.upstreams is not None)

    def _not_out(self, unit: _Unit) -> None:
        """``unit`` left the backend without a result: its consumers miss it again."""
        out = self.out_ahead
        entry = out.get(unit.node) if out else None
        if entry is None or entry[0] is not unit:
            return
        del out[unit.node]
        missing = self._missing
        for d in self.graph.dependents_of(unit.node):
            if d in missing:
                missing[d] += 1

    # -- what comes home ---------------------------------------------------------

    def _stays_remote(self, backend: Backend, units: list[_Unit]) -> frozenset[int]:
        """Tokens of ``units`` whose results the caller does not need (see the module doc)."""
        if self._values_watched is None:
            hooks = self.hooks
            self._values_watched = (
                self._keep_all
                or hooks.takes("after_node_execute", "result")
                or any(hooks.takes(h, "inputs") for h in _HOOKS_WITH_INPUTS)
            )
        if self._values_watched:
            return frozenset()
        return frozenset(
            u.token for u in units if u.elems is None and not self._wanted_home(u.node, backend)
        )

    def _wanted_home(self, i: int, backend: Backend) -> bool:
        """Whether the caller needs node ``i``'s result (root, consumers elsewhere, fan-outs)."""
        found = self._needed_home.get(i)
        if found is None:
            graph = self.graph
            found = i in self.state.roots or any(
                graph.futures[d].iterated is not None
                or self._route(graph.futures[d].task)[0] is not backend
                for d in graph.dependents_of(i)
            )
            self._needed_home[i] = found
        return found
