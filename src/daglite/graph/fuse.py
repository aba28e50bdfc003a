"""Chain fusion, decided once per run by a static pass over a built graph.

A node can run in the same worker job right after the node before it when
that node is its only input, it is that node's only consumer, it takes the
result directly as one or more parameters (not nested in a container, which
the caller resolves), it is a single call (not a fan-out), and both run in the
same place (the caller says which pairs do). Like Dask's ``fuse_linear``, the
pass only finds the links; the engine decides at run time how far to follow
them (batch size, failures).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from daglite.graph.base import Graph
from daglite.graph.walk import CONTAINERS, find
from daglite.tasks import Task, TaskFuture

__all__ = ["Link", "fusable_links"]

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
        link = _link(graph, i, d)
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
