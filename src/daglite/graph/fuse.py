"""Chain fusion, decided once per run by a static pass over a built graph.

A node can run in the same worker job right after the node before it when
that node is its only input, it is that node's only consumer, it takes the
result directly as one or more parameters (not nested in a container, which
the caller resolves), it is a single call (not a fan-out), and both run in the
same place (the caller says which pairs do). Like Dask's ``fuse_linear``, the
pass only finds the links; the engine decides at run time how far to follow
them (batch size, failures).

Element-wise links are the same idea one level down: a map over a fan-out
(``load.product(...).map(etl)``) whose only input is that fan-out, and which
is its only consumer, takes element ``e`` of it as element ``e`` of its own.
Each element of the map can then run in the job of the element it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daglite.graph.base import Graph
from daglite.graph.walk import CONTAINERS, find
from daglite.tasks import Task, TaskFuture

__all__ = ["Link", "elementwise_links", "fusable_links"]

# The consumer fused after a node, and the parameters that take the node's result.
Link = tuple[int, tuple[str, ...]]


def fusable_links(graph: Graph, place_of: Callable[[Task[Any, Any]], object]) -> dict[int, Link]:
    """Every node that can be followed in its job by its sole consumer.

    Args:
        graph: The built graph.
        place_of: Where a task's calls run, if a job there can carry a chain
            (its backend), else None. Asked once per task.

    Returns:
        ``{node: (consumer, parameter names)}`` for each fusable link.
    """
    return _links(graph, place_of, _link)


def elementwise_links(
    graph: Graph, place_of: Callable[[Task[Any, Any]], object]
) -> dict[int, Link]:
    """Every fan-out each of whose elements can be followed in its job by the map over it.

    Args:
        graph: The built graph.
        place_of: As for ``fusable_links``.

    Returns:
        ``{fan-out: (map, (the map's fanned-out parameter,))}`` for each link.
    """
    return _links(graph, place_of, _element_link)


def _links(
    graph: Graph,
    place_of: Callable[[Task[Any, Any]], object],
    link_of: Callable[[Graph, int, int], Link | None],
) -> dict[int, Link]:
    """The links ``link_of`` finds between a node and its sole consumer, both in one place."""
    links: dict[int, Link] = {}
    places: dict[int, object] = {}
    deps, dependents, futures = graph.deps, graph.dependents, graph.futures
    for i, d in enumerate(dependents):
        if type(d) is not int or deps[d] != (i,):
            continue
        here, there = futures[i].task, futures[d].task
        place = places.get(id(here), places)  # ``places`` itself: not asked yet
        if place is places:
            place = places[id(here)] = place_of(here)
        if place is None:
            continue
        if there is not here:
            other = places.get(id(there), places)
            if other is places:
                other = places[id(there)] = place_of(there)
            if other is not place:
                continue
        link = link_of(graph, i, d)
        if link is not None:
            links[i] = link
    return links


def _link(graph: Graph, i: int, d: int) -> Link | None:
    """The link ``i`` -> ``d``: ``d`` and the parameters ``i`` feeds, or None.

    None unless ``d`` takes ``i``'s result directly and is a single call.
    """
    consumer = graph.futures[d]
    if consumer.iterated is not None:
        return None
    upstream = graph.futures[i]
    names = tuple(n for n, v in consumer.kwargs.items() if v is upstream)
    if not names:
        return None
    for value in consumer.kwargs.values():
        if isinstance(value, CONTAINERS) and next(find(value, TaskFuture), None) is not None:
            return None  # the result is nested in an argument: resolved in the caller
    return d, names


def _element_link(graph: Graph, i: int, d: int) -> Link | None:
    """The element-wise link ``i`` -> ``d``, or None.

    None unless ``i`` is a fan-out, ``d`` fans out over ``i``'s result alone
    (one fanned-out parameter), and no other argument of ``d`` holds a future.
    """
    upstream, consumer = graph.futures[i], graph.futures[d]
    if upstream.iterated is None or consumer.iterated is None or len(consumer.iterated) != 1:
        return None
    ((name, over),) = consumer.iterated.items()
    if over is not upstream:
        return None
    for value in consumer.kwargs.values():
        if isinstance(value, TaskFuture) or (
            isinstance(value, CONTAINERS) and next(find(value, TaskFuture), None) is not None
        ):
            return None
    return d, (name,)
