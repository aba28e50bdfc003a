"""The bulk path: a wide fan-out's elements travel in a few slices.

Like ``Executor.map`` with a chunksize, a fan-out nobody watches element by
element at its start (``_Planning._schedule_elements`` asks ``_sliceable``)
becomes four slices per worker, each run as one call. When a slice comes home
each element's ``after_node_execute`` is called in order (with the run time
measured in the worker), and an element that failed, or a slice that could
not run, is taken apart and handled element by element as on the per-element
path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from daglite._job import shared
from daglite._job.records import Elements
from daglite._run.inbox import Inbox
from daglite._run.state import RunState
from daglite._run.unit import NOWHERE, At, _element_kwargs, _Unit
from daglite.backends.base import Backend
from daglite.graph.base import Graph
from daglite.plugins.reporters import _CallerReporter
from daglite.tasks import Task


class _Slicing:
    """The bulk-path part of ``_Run``: making slices, and finishing them."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _bulk: bool
    _any_shared: bool
    _call_after: Callable[..., None]
    _sees_result: bool
    _has_after: bool
    _keep_all: bool
    _orphans: dict[tuple[int, int], int]
    _sees_inputs: bool
    graph: Graph
    inbox: Inbox
    kept: dict[str, Any]
    reporter: _CallerReporter
    state: RunState

    if TYPE_CHECKING:  # provided by the other parts of ``_Run``

        def _adopt(self, i: int, e: int, value: Any, backend: Backend) -> None: ...

        def _back_in(self, unit: _Unit) -> None: ...

        def _element_fed(self, d: int) -> None: ...

        def _attempt_failed(
            self,
            unit: _Unit,
            error: BaseException,
            duration: float,
            timed_out: bool,
            at: At = NOWHERE,
        ) -> None: ...

        def _keeps_remote(self, backend: Backend) -> bool: ...

        def _ready(self, nodes: Iterable[int]) -> None: ...

        def _requeue(self, unit: _Unit) -> None: ...

    def _sliceable(self, task: Task[Any, Any], backend: Backend, width: int) -> bool:
        """Whether a fan-out may take the bulk path.

        Nobody waits for single elements to start (``_bulk``), they have no
        deadline of their own, and results come home (not Dask). Elements whose
        ``after_node_execute`` is watched go in slices only to other threads or
        processes: on the lane each element's hooks are called as it ends.
        """
        return (
            self._bulk
            and width > 1
            and task.timeout is None
            and not (self._has_after and backend.runs_in_caller)
            and not self._keeps_remote(backend)
        )

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
        size = self._slice_size(backend, len(rows))
        units = []
        for first in range(0, len(rows), size):
            unit = _Unit(i, first, key, base, task, meta, backend)
            unit.elems = self._elements(task, names, rows[first : first + size], first)
            units.append(unit)
        return units

    def _elements(
        self, task: Task[Any, Any], names: tuple[str, ...], rows: list[Any], first: int
    ) -> Elements:
        """The record of a slice of ``task``'s elements ``first``... with these ``rows``."""
        # A slice may end at its first failure only if that fails the run.
        stop = not self._keep_all and task.retries == 0
        sig = task._sig
        positional = len(names) == 1 and sig.call_style is None and sig.positional[:1] == names
        return Elements(names, rows, first, stop, positional, self._has_after)

    def _slice_size(self, backend: Backend, width: int) -> int:
        """How many elements of a ``width``-wide fan-out each slice takes."""
        parts = 1 if backend.runs_in_caller else 4 * (backend.max_workers or 1)
        return math.ceil(width / parts)

    def _element_unit(self, piece: _Unit, e: int) -> _Unit:
        """Element ``e`` of slice ``piece`` as a unit of its own."""
        assert piece.elems is not None
        names, rows, first = piece.elems[:3]
        kwargs = _element_kwargs(piece.kwargs, names, rows[e - first])
        key = f"{piece.key}[{e}]"
        return _Unit(piece.node, e, key, kwargs, piece.task, piece.meta, piece.backend)

    def _slice_finished(self, piece: _Unit, outcome: Any) -> None:
        whole = outcome.ok and not outcome.value.errors
        if piece.downstream and not whole:
            # The slices fused after it did not run: their elements run alone,
            # each once the element it maps is done (``_adopt``).
            self._back_in(piece)
        if not outcome.ok:  # the slice could not run (say, an element would not pickle)
            self._split(piece, isolate=False)
            return
        assert piece.elems is not None
        values, errors = outcome.value.values, outcome.value.errors
        i, first = piece.node, piece.elem
        starts = _element_starts(outcome.started, outcome.value.durations, len(values))
        if self._has_after:
            self._elements_returned(piece, values, errors, outcome, starts)
        if self._keep_all:
            for e, value in enumerate(values):
                if e not in errors:
                    self.kept[f"{piece.key}[{first + e}]"] = value
        for e, (error, duration) in errors.items():
            at = (starts[e], outcome.worker)
            self._attempt_failed(self._element_unit(piece, first + e), error, duration, False, at)
        if not self.state.aborting:  # elements a slice skipped after a failure still run
            for e in range(first + len(values), first + len(piece.elems.rows)):
                self._requeue(self._element_unit(piece, e))
        self._ready(self.state.slice_done(i, first, values, len(errors)))
        if piece.downstream or self._orphans:
            self._hand_on(piece, values, errors)

    def _hand_on(self, piece: _Unit, values: list[Any], errors: dict[int, Any]) -> None:
        """Pass a finished slice's values to what maps its elements, fused or not."""
        if piece.downstream:
            downstream, piece.downstream, piece.follower = piece.downstream, None, None
            for follower in downstream:
                self._slice_fed(follower, values)
            return
        for e, value in enumerate(values):
            if e not in errors:
                self._adopt(piece.node, piece.elem + e, value, piece.backend)

    def _slice_fed(self, follower: _Unit, values: list[Any]) -> None:
        """Slice ``follower``, fused after a slice that succeeded whole, is fed its values."""
        assert follower.elems is not None
        follower.elems = follower.elems._replace(rows=list(values))
        follower.upstreams = follower.follows = None
        follower.waiting = 0
        self._element_fed(follower.node)
        self.inbox.upstream_done(follower)

    def _elements_returned(
        self,
        piece: _Unit,
        values: list[Any],
        errors: dict[int, Any],
        outcome: Any,
        starts: Sequence[float],
    ) -> None:
        """``after_node_execute`` of each element a slice ran, in element order.

        Each gets its own key, inputs and result, and its run time and start as
        measured in the worker; failed elements go through ``_attempt_failed``.
        """
        assert piece.elems is not None
        names, rows = piece.elems.names, piece.elems.rows
        key, meta, base, first = piece.key, piece.meta, piece.kwargs, piece.elem
        call, reporter, sees_inputs = self._call_after, self.reporter, self._sees_inputs
        durations, worker = outcome.value.durations, outcome.worker
        # Hooks see values, not shared-memory handles (gh-14): looked for once
        # per slice, resolved per element only if there are any.
        resolve_inputs = resolve_values = False
        if self._any_shared:
            # One value per element for one name, else a tuple per element.
            row_values = rows if len(names) == 1 else itertools.chain.from_iterable(rows)
            resolve_inputs = sees_inputs and (
                shared.any_handle(base.values()) or shared.any_handle(row_values)
            )
            resolve_values = self._sees_result and shared.any_handle(values)
        for e, value in enumerate(values):
            if e in errors:
                continue
            # No implementation names ``inputs``: the element's own dict is not made.
            inputs = _element_kwargs(base, names, rows[e]) if sees_inputs else base
            if resolve_inputs:
                inputs = shared.resolve_all(inputs)
            if resolve_values:
                value = shared.resolve(value)
            call(
                f"{key}[{first + e}]",
                meta,
                inputs,
                reporter,
                value,
                durations[e],
                starts[e],
                worker,
            )

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


def _element_starts(started: float, durations: Sequence[float], count: int) -> list[float]:
    """When each element of a slice started.

    The slice's start plus the run times before it for a timed slice, else the
    slice's start for all.
    """
    if len(durations) < count:
        return [started] * count
    starts, t = [], started
    for d in durations[:count]:
        starts.append(t)
        t += d
    return starts
