"""Ready node to calls: the run's plan for each node whose inputs are done.

A ready node becomes one call (a unit, or a plain call of the inline lane),
one call per element of a fan-out, a few slices of elements (the bulk path,
when nobody watches single elements), or the head of a fused chain (the
links come from ``graph.fuse``). The elements of a map over a fan-out
(``load.product(...).map(etl)``) are fused after the elements they take, one
chain per element. Arguments are filled in from the inputs'
results here, and the inputs released.
"""

from __future__ import annotations

import collections
import itertools
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from daglite._job import shared
from daglite._job.records import Elements
from daglite._run.state import RunState
from daglite._run.unit import (
    _element_kwargs,
    _LaneCall,
    _Unit,
)
from daglite.backends.base import Backend
from daglite.exceptions import (
    GraphError,
)
from daglite.graph.base import Graph
from daglite.graph.fuse import Link, elementwise_links, fusable_links
from daglite.graph.walk import CONTAINERS, replace
from daglite.plugins.manager import HookDispatcher
from daglite.tasks import Task, TaskFuture


class _Planning:
    """The planning part of ``_Run``: routes, arguments, fan-outs, slices, fusion."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _any_remote: bool
    _any_shared: bool
    _bulk: bool
    _fuse_ok: bool
    _has_after: bool
    _keep_all: bool
    _lane_ok: bool
    _sees_inputs: bool
    _sees_result: bool
    _links: dict[int, Link] | None
    _literal_handles: dict[tuple[int, int], weakref.ref[Any] | None]
    _element_links: dict[int, Link] | None
    _elementwise: set[int]
    _remote_kind: dict[int, bool]
    _routes: dict[int, tuple[Backend, bool]]
    backend_of: Callable[[Task[Any, Any]], Backend]
    graph: Graph
    hooks: HookDispatcher
    lane: collections.deque[_LaneCall | _Unit]
    node_count: int
    remote_producers: dict[int, Backend]
    run_id: uuid.UUID
    state: RunState

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _home_for(self, backend: Backend) -> Any: ...

        def _sliceable(self, task: Task[Any, Any], backend: Backend, width: int) -> bool: ...

        def _slice_size(self, backend: Backend, width: int) -> int: ...

        def _elements(
            self, task: Task[Any, Any], names: tuple[str, ...], rows: list[Any], first: int
        ) -> Elements: ...

        def _slices(
            self,
            i: int,
            base: dict[str, Any],
            names: tuple[str, ...],
            rows: list[Any],
            backend: Backend,
        ) -> list[_Unit]: ...

        def _node_failed_before_running(self, i: int, error: BaseException) -> None: ...

        def _queue_units(self, backend: Backend, units: list[_Unit]) -> None: ...

        def _ready(self, nodes: Iterable[int]) -> None: ...

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
                if len(rows) > 1 and backend.shared_memory_threshold:
                    kwargs = self._share_literals(kwargs, future.kwargs, backend, True)
                self._schedule_elements(i, task, kwargs, names, rows, backend)
                return
        if backend.shared_memory_threshold:
            kwargs = self._share_literals(kwargs, future.kwargs, backend, False)
        if lane:
            self.lane.append((i, -1, kwargs, backend))
            return
        unit = _Unit(i, -1, graph.keys[i], kwargs, task, graph.metadata[i], backend)
        self._fuse_if_fusing(unit)
        self._queue_units(backend, [unit])

    def _share_literals(
        self, kwargs: dict[str, Any], literals: dict[str, Any], backend: Backend, many: bool
    ) -> dict[str, Any]:
        """``kwargs``, with the large arrays and frames the user passed in shared memory once.

        A value of the caller (``literals``: the node's own arguments) that
        several calls take, the same array in every element of a fan-out
        (``many``) or in several nodes, is written into one segment the first
        time and handed to every job as a handle, instead of a copy per job
        (gh-14). A value one call takes alone is left to its job, whose
        worker then owns the segment and writes to it in place. Not when a
        hook looks at inputs (it sees the caller's very objects).
        """
        if self._sees_inputs:
            return kwargs
        handles, threshold = self._literal_handles, backend.shared_memory_threshold or 0
        out = None
        for name, value in literals.items():
            if shared.buffer_bytes(value) < threshold:
                continue
            key = (id(value), id(backend))
            if key not in handles and not many:
                handles[key] = None  # the first call that takes it, alone
                continue
            ref = handles.get(key)
            handle = None if ref is None else ref()
            if handle is None:
                made = shared.share(value, self._home_for(backend).shared)
                if made is value:
                    continue
                handle, handles[key] = made, weakref.ref(made)
            if out is None:
                out = dict(kwargs)
            out[name] = handle
        return kwargs if out is None else out

    def _inputs(
        self, i: int, future: TaskFuture[Any], backend: Backend
    ) -> tuple[dict[str, Any], tuple[str, ...], list[Any]] | None:
        """Node ``i``'s arguments with its inputs' results filled in, or None if that failed.

        For a fan-out, also its parameter names and rows (``_expand``). Its
        inputs are then released. When this fails, so does the node.
        """
        try:
            if self.remote_producers:
                self._fetch_remote_inputs(i, backend)
            kwargs = self._resolve(future.kwargs) if self.graph.deps[i] else future.kwargs
            if self._any_shared and not backend.shared_memory_threshold:
                kwargs = shared.resolve_all(kwargs)  # handles only other processes can read
            if future.iterated is None:
                return kwargs, (), []
            names, rows = self._expand(i, future, kwargs, backend)
            if self._any_shared and not backend.shared_memory_threshold:
                rows = [shared.resolve_all({"": row})[""] for row in rows]
            return kwargs, names, rows
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
        sliced = self._sliceable(task, backend, len(rows))
        chain = self._element_chain(i, backend, sliced)
        if chain:
            self._claim_elementwise(chain, len(rows))
        if sliced:
            units = self._slices(i, kwargs, names, rows, backend)
            for unit in units if chain else ():
                self._follow_elementwise(unit)
            self._queue_units(backend, units)
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
            for unit in units if chain else ():
                self._follow_elementwise(unit)
            self._queue_units(backend, units)

    def _element_chain(self, i: int, backend: Backend, sliced: bool) -> list[Link]:
        """The maps whose elements run in the jobs of fan-out ``i``'s elements (gh-14).

        ``load.product(...).map(etl).map(save)``: element ``e`` of each map
        runs right after element ``e`` of the step before it, in one job on
        one worker, so a shard never travels home between the steps. On the
        bulk path (``sliced``) a slice of each map follows the same slice of
        the step before it. Not under ``on_error="continue"``: a map is
        skipped as a whole there when an element it maps failed.
        """
        if not self._fuse_ok or self._keep_all or not self._fuses(backend):
            return []
        links = self._element_links
        if links is None:
            links = self._element_links = elementwise_links(self.graph, self._fusing_backend)
        chain: list[Link] = []
        limit, node, failed = (backend.max_chain or backend.max_batch) - 1, i, self.state.failed
        futures = self.graph.futures
        while len(chain) < limit:
            link = links.get(node)
            if link is None or link[0] in failed:
                break
            if sliced and futures[link[0]].task.timeout is not None:
                break  # a slice runs without a deadline of its own
            chain.append(link)
            node = link[0]
        return chain

    def _claim_elementwise(self, chain: list[Link], width: int) -> None:
        """The maps of ``chain`` fan out now, each element fused after the one it maps."""
        state = self.state
        for d, _ in chain:
            state.fan_out(d, width)
            state.claim(d)
            self._elementwise.add(d)
            self._expanded(d, width)

    def _follow_elementwise(self, head: _Unit) -> None:
        """Fuse after element ``head`` the elements of the maps claimed to follow it."""
        assert self._element_links is not None
        links, claimed, graph, e = self._element_links, self._elementwise, self.graph, head.elem
        owning, roots, unit = self._may_own(), self.state.roots, head
        while True:
            link = links.get(unit.node)
            if link is None or link[0] not in claimed:
                return
            d, names = link
            future = graph.futures[d]
            task, meta = future.task, graph.metadata[d]
            if unit.elems is None:
                follower = self._map_element(d, e, None, unit.backend)
            else:  # a slice of the map, fed the values of this slice as its rows
                follower = _Unit(d, e, graph.keys[d], future.kwargs, task, meta, unit.backend)
                follower.elems = self._elements(task, names, [None] * len(unit.elems.rows), e)
            _link_follower(unit, follower, names, owning and unit.node not in roots)
            unit = follower

    def _map_element(self, d: int, e: int, value: Any, backend: Backend) -> _Unit:
        """Element ``e`` of map ``d``, taking ``value`` (None: fed in its job)."""
        graph = self.graph
        future = graph.futures[d]
        assert future.iterated is not None
        (name,) = future.iterated
        kwargs = {**future.kwargs, name: value}
        return _Unit(d, e, f"{graph.keys[d]}[{e}]", kwargs, future.task, graph.metadata[d], backend)

    def _fuse_if_fusing(self, head: _Unit) -> None:
        """Fuse the chain hanging off ``head`` if its backend's jobs carry chains."""
        if self._fuse_ok and self._fuses(head.backend):
            self._fuse(head)

    def _fuses(self, backend: Backend) -> bool:
        """Whether jobs on ``backend`` carry fused chains.

        Not in the caller (nothing to save), nor on a backend that keeps
        results remote unless it also takes pending inputs (gh-17: then the
        job after a fused chain takes the chain's results where they are).
        """
        if backend.runs_in_caller:
            return False
        return backend.accepts_pending_inputs or not self._keeps_remote(backend)

    def _fuse(self, head: _Unit) -> None:
        """Send the single-call chain hanging off ``head`` in one job with it.

        The links come from ``graph.fuse`` (once per run): each follower runs
        in the same worker right after the call before it, with no round trip
        through the caller per hop. Hooks and events keep their order: a
        follower's messages are held until the call before it is done in the
        caller. A chain stops at the backend's ``max_chain`` or at a node that
        already failed (``on_error="continue"``).
        """
        links = self._links
        if links is None:
            links = self._links = fusable_links(self.graph, self._fusing_backend)
        graph, failed, length, unit = self.graph, self.state.failed, 1, head
        limit = head.backend.max_chain or head.backend.max_batch
        may_own, roots, claim = self._may_own(), self.state.roots, self.state.claim
        while length < limit:
            link = links.get(unit.node)
            if link is None or link[0] in failed:
                break
            d, names = link
            future = graph.futures[d]
            kwargs = {n: (None if n in names else v) for n, v in future.kwargs.items()}
            follower = _Unit(
                d, -1, graph.keys[d], kwargs, future.task, graph.metadata[d], unit.backend
            )
            _link_follower(unit, follower, names, may_own and unit.node not in roots)
            claim(d)
            unit = follower
            length += 1

    def _may_own(self) -> bool:
        """Whether a fused call may keep the result it is fed on the worker (gh-14).

        If that result is not a root: nobody in the caller needs it then, as
        no hook looks at values and ``on_error="continue"`` keeps no partials.
        """
        return not (self._keep_all or self._sees_inputs or self._sees_result)

    def _fusing_backend(self, task: Task[Any, Any]) -> Backend | None:
        """The backend ``task`` runs on if it fuses chains (``_fuses``)."""
        backend = self._backend_for(task)
        if task.resources:
            return None  # a call holding resources is admitted alone (gh-15)
        return backend if self._fuses(backend) else None

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
        """The backend ``task`` runs on, and whether its plain calls take the inline lane.

        They take the lane (``_run_lane``) when the backend runs calls in the
        caller and keeps no result remote, the task has no timeout and holds
        no resources (those pass the run's gate as units), and there is no
        cache plugin.
        """
        found = self._routes.get(id(task))
        if found is None:
            backend = self.backend_of(task)
            remote = self._keeps_remote(backend)
            self._any_remote = self._any_remote or remote
            lane = self._lane_ok and backend.runs_in_caller and not remote
            lane = lane and task.timeout is None and not task.resources
            found = self._routes[id(task)] = (backend, lane)
        return found

    def _fetch_remote_inputs(self, i: int, consumer: Backend) -> None:
        """Fetch node ``i``'s inputs that another backend keeps on its workers.

        Such inputs (Dask stand-ins) are fetched once, when a task on a
        different backend needs them, or a fan-out (the caller expands it).
        """
        results = self.state.results
        expands = self.graph.futures[i].iterated is not None
        for d in self.graph.deps[i]:
            producer = self.remote_producers.get(d)
            if producer is not None and (producer is not consumer or expands):
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

    def _expand(
        self, i: int, future: TaskFuture[Any], base: dict[str, Any], backend: Backend
    ) -> tuple[tuple[str, ...], list[Any]]:
        """The fan-out's parameter names and its rows.

        A row is one value per element for a single name, else a tuple per element.
        """
        assert future.iterated is not None
        names = list(future.iterated)
        seqs = []
        dynamic = False
        for name in names:
            value = future.iterated[name]
            if isinstance(value, TaskFuture):
                dynamic = True
                value = _rows_of(self._substitute(value), backend)
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
            self._expanded(i, len(rows))
        return tuple(names), rows

    def _expanded(self, i: int, width: int) -> None:
        """Fan-out ``i``, whose width was not known when the graph was built, has ``width``."""
        self.node_count += width
        self.hooks.call(
            "on_graph_expand",
            root_id=self.run_id,
            key=self.graph.keys[i],
            added=width,
            node_count=self.node_count,
        )


def _link_follower(unit: _Unit, follower: _Unit, names: tuple[str, ...], owns: bool) -> None:
    """``follower`` runs in ``unit``'s job right after it, fed its result as ``names``."""
    follower.follows, follower.upstreams, follower.waiting = names, [unit], 1
    follower.owns_input = owns
    unit.follower = follower
    downstream = unit.downstream
    unit.downstream = [follower] if downstream is None else [*downstream, follower]


def _rows_of(value: Any, consumer: Backend) -> Any:
    """What a fan-out iterates over: a result kept in shared memory becomes handles.

    A worker process that runs an element maps that element from the
    producer's segment; nothing of it passes through the caller (gh-14).
    """
    if type(value) is not shared.SharedValue:
        return value
    if value.length is not None and consumer.shared_memory_threshold:
        return value.items()
    return value.value()
