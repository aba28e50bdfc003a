"""``_Unit``: one call the engine tracks, with its attempts and place in a fused chain.

The call is a node's, a fan-out element's, or a slice of elements.
"""

from __future__ import annotations

import itertools
from typing import Any, Final, Literal, final

from daglite._job.records import Elements, _Call, _new_call
from daglite.backends.base import Backend
from daglite.graph.base import GraphMetadata
from daglite.tasks import Task


@final
class _Unit:
    """One call of one node (or of one element of a fan-out) and its attempts.

    On the bulk path a unit is a slice of a fan-out's elements instead
    (``elems``; ``elem`` is then the index of its first element).

    What a job runs is not the unit but its record (``call_of``): a plain value
    the engine's later bookkeeping cannot change under a running job.
    """

    __slots__ = (
        "attempt",
        "awaited",
        "backend",
        "delivered",
        "done",
        "downstream",
        "elem",
        "elems",
        "follower",
        "follows",
        "isolate",
        "key",
        "kwargs",
        "meta",
        "node",
        "owns_input",
        "parked",
        "resubmits",
        "started",
        "stash",
        "task",
        "token",
        "upstreams",
        "waiting",
    )

    def __init__(
        self,
        node: int,
        elem: int,
        key: str,
        kwargs: dict[str, Any],
        task: Task[Any, Any],
        meta: GraphMetadata,
        backend: Backend,
    ) -> None:
        self.node = node
        self.elem = elem
        self.key = key
        self.kwargs = kwargs
        self.task = task
        self.meta = meta
        self.backend = backend
        self.attempt = 1
        self.resubmits = 0
        self.token = 0
        self.started = False
        self.delivered = 0
        self.parked: Any = None
        self.awaited = False
        self.isolate = False
        # A slice of a fan-out run as one call (bulk path), else None.
        self.elems: Elements | None = None
        # Calls handed out ahead of their inputs (claimed nodes): a fused
        # follower, which runs in its job right after the call that feeds it,
        # or a call sent to a backend that takes pending inputs
        # (``Backend.accepts_pending_inputs``). Such a unit knows the units
        # whose results it takes and that are not done in the caller yet
        # (``upstreams``, ``waiting`` of them left); each of those knows it
        # (``downstream``). Its messages that arrive before its inputs are done
        # wait in its ``stash``. In a fused job each unit also knows the unit
        # right after it (``follower``), which names the parameters the call
        # before it feeds (``follows``).
        self.follower: _Unit | None = None
        self.follows: tuple[str, ...] | None = None
        self.upstreams: list[_Unit] | None = None
        self.waiting = 0
        self.downstream: list[_Unit] | None = None
        self.stash: list[Any] | None = None
        # A follower that is the only use of its input: the worker need not send
        # that result home (``_Call.owns_input``).
        self.owns_input = False
        self.done = False


def call_of(unit: _Unit, memory: int | None = None) -> _Call:
    """The record a job runs for ``unit``'s current attempt.

    ``memory`` is the run's limit for tasks that set none (``memory_per_task``).
    """
    task = unit.task
    return _new_call(
        (
            unit.token,
            task.name,
            unit.key,
            task.func,
            unit.kwargs,
            task.timeout,
            task._sig.call_style,
            unit.elems,
            unit.follows,
            unit.owns_input,
            task.memory or memory,
        )
    )


def _chain_of(head: _Unit) -> list[_Unit]:
    """``head`` and the units fused after it, in order."""
    units = [head]
    while units[-1].follower:
        units.append(units[-1].follower)
    return units


def _element_kwargs(base: dict[str, Any], names: tuple[str, ...], row: Any) -> dict[str, Any]:
    """One fan-out element's arguments: ``base`` plus the element's values."""
    if len(names) == 1:
        return {**base, names[0]: row}
    kwargs = dict(base)
    kwargs.update(zip(names, row))
    return kwargs


OnError = Literal["raise", "continue"]
# When an attempt started (wall clock, ``time.time()``) and where it ran (its
# worker's label): what the node hooks get as ``started`` and ``worker``.
At = tuple[float, str]
NOWHERE: Final[At] = (0.0, "")
# The worker label of a result a cache plugin supplied (nothing ran).
CACHE_LABEL: Final = "cache"
# A plain call of the inline lane: node, element (-1: none), kwargs, backend.
_LaneCall = tuple[int, int, dict[str, Any], Backend]
_token_counter = itertools.count(1)


def next_token() -> int:
    """A token no other call of this process has had: how messages find their call."""
    return next(_token_counter)
