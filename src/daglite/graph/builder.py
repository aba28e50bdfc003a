"""Turn a set of root futures into a ``Graph``: dedupe, order, key and check for cycles.

The walk is iterative, so a 10,000-long chain or a 100,000-wide fan-out needs no
recursion; keys are assigned in walk order, so the same DAG gets the same keys
on every run.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from daglite.exceptions import GraphError
from daglite.graph.base import Graph, GraphMetadata, NodeKind
from daglite.tasks import Task, TaskFuture

__all__ = ["build_graph", "iter_futures"]

_CONTAINERS = (list, tuple, dict, set, frozenset)
_SCANNED = (TaskFuture, *_CONTAINERS)
_VISITING, _DONE = 1, 2


def _may_hold_futures(values: Any) -> bool:
    """Cheap pre-check (one pass at C speed) before walking a container."""
    return any(issubclass(t, _SCANNED) for t in set(map(type, values)))


def iter_futures(value: Any) -> Iterator[TaskFuture[Any]]:
    """Yield every future in ``value``, looking inside lists, tuples, sets and dicts."""
    if isinstance(value, TaskFuture):
        yield value
    elif isinstance(value, _CONTAINERS):
        stack = [value]
        while stack:
            item = stack.pop()
            values = item.values() if isinstance(item, dict) else item
            if not _may_hold_futures(values):
                continue
            for v in values:
                if isinstance(v, TaskFuture):
                    yield v
                elif isinstance(v, _CONTAINERS):
                    stack.append(v)


def _argument_values(future: TaskFuture[Any]) -> Iterator[Any]:
    yield from future.kwargs.values()
    if future.iterated:
        yield from future.iterated.values()


def _children(future: TaskFuture[Any]) -> list[TaskFuture[Any]]:
    found: list[TaskFuture[Any]] = []
    values = list(_argument_values(future))
    if not _may_hold_futures(values):
        return found
    for value in values:
        if isinstance(value, TaskFuture):
            found.append(value)
        elif isinstance(value, _CONTAINERS):
            found.extend(iter_futures(value))
    return found


def _known_width(future: TaskFuture[Any]) -> int:
    """Number of calls a fan-out makes, or 0 when a future decides it at run time."""
    assert future.iterated is not None
    sizes = [len(v) for v in future.iterated.values() if not isinstance(v, TaskFuture)]
    if len(sizes) < len(future.iterated):
        return 0
    return math.prod(sizes) if future.mode == "product" else (sizes[0] if sizes else 0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building: the build allocates many long-lived,
    acyclic objects, and full collections over them make a big build quadratic."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_graph(
    roots: Sequence[TaskFuture[Any]], backend_name_of: Callable[[Task[Any, Any]], str]
) -> Graph:
    """Build the graph reachable from ``roots``.

    Args:
        roots: The futures whose results are wanted.
        backend_name_of: Tells the backend name a task will run on.

    Raises:
        GraphError: If the futures form a cycle.
    """
    with _gc_paused():
        return _build(roots, backend_name_of)


def _build(
    roots: Sequence[TaskFuture[Any]], backend_name_of: Callable[[Task[Any, Any]], str]
) -> Graph:
    graph = Graph()
    state: dict[int, int] = {}
    children_of: dict[int, list[TaskFuture[Any]]] = {}
    name_counts: dict[str, int] = {}
    meta_cache: dict[tuple[int, NodeKind], GraphMetadata] = {}
    stack: list[tuple[TaskFuture[Any], bool]] = [(f, False) for f in reversed(roots)]
    while stack:
        future, expanded = stack.pop()
        fid = id(future)
        if expanded:
            children = children_of.pop(fid)
            _add_node(graph, future, children, name_counts, meta_cache, backend_name_of)
            state[fid] = _DONE
            continue
        seen = state.get(fid)
        if seen == _DONE:
            continue
        if seen == _VISITING:
            raise GraphError(f"the graph has a cycle through task {future.task.name!r}")
        state[fid] = _VISITING
        stack.append((future, True))
        children = children_of[fid] = _children(future)
        for child in reversed(children):
            if state.get(id(child)) != _DONE:
                stack.append((child, False))
    graph.roots = [graph.index[id(f)] for f in roots]
    return graph


def _add_node(
    graph: Graph,
    future: TaskFuture[Any],
    children: list[TaskFuture[Any]],
    name_counts: dict[str, int],
    meta_cache: dict[tuple[int, NodeKind], GraphMetadata],
    backend_name_of: Callable[[Task[Any, Any]], str],
) -> None:
    i = len(graph.futures)
    graph.index[id(future)] = i
    task = future.task
    count = name_counts.get(task.name, 0) + 1
    name_counts[task.name] = count
    graph.keys.append(task.name if count == 1 else f"{task.name}-{count}")
    kind: NodeKind = "task" if future.iterated is None else "map"
    meta = meta_cache.get((id(task), kind))
    if meta is None:
        meta = GraphMetadata(
            task.name, task.description, kind, backend_name_of(task), task.retries, task.timeout
        )
        meta_cache[(id(task), kind)] = meta
    graph.metadata.append(meta)
    index = graph.index
    deps = tuple(dict.fromkeys([index[id(c)] for c in children])) if children else ()
    graph.deps.append(deps)
    graph.dependents.append(None)
    for d in deps:
        dependents = graph.dependents[d]
        if dependents is None:
            graph.dependents[d] = [i]
        else:
            dependents.append(i)
    graph.futures.append(future)
    graph.node_count += 1 if kind == "task" else _known_width(future)
