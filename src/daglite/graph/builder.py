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


def _children(future: TaskFuture[Any]) -> list[TaskFuture[Any]]:
    """The futures ``future`` takes as arguments, in argument order."""
    found: list[TaskFuture[Any]] = []
    for values in (future.kwargs.values(), future.iterated.values() if future.iterated else ()):
        for value in values:
            if isinstance(value, TaskFuture):
                found.append(value)
            elif isinstance(value, _CONTAINERS):
                if type(value) is list and set(map(type, value)) == {TaskFuture}:
                    found.extend(value)  # a plain list of futures, the common join
                else:
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
    """Iterative depth-first walk; a node is added once all its children are.

    Stack entries are ``(future, None)`` when first met and ``(future, children)``
    once its children have been pushed; ``visiting`` holds the current path.
    """
    graph = Graph()
    index, keys, deps_of, dependents = graph.index, graph.keys, graph.deps, graph.dependents
    add_key, add_deps, add_dependents = keys.append, deps_of.append, dependents.append
    add_meta, add_future = graph.metadata.append, graph.futures.append
    visiting: set[int] = set()
    name_counts: dict[str, int] = {}
    used_keys: set[str] = set()
    metas: tuple[dict[int, GraphMetadata], dict[int, GraphMetadata]] = ({}, {})
    node_count = 0
    stack: list[tuple[TaskFuture[Any], list[TaskFuture[Any]] | None]] = [
        (f, None) for f in reversed(roots)
    ]
    pop, push = stack.pop, stack.append
    while stack:
        future, children = pop()
        fid = id(future)
        if children is None:  # first met: push it back, then its children
            if future in index:
                continue
            if fid in visiting:
                raise GraphError(f"the graph has a cycle through task {future.task.name!r}")
            for value in future.kwargs.values():  # a cheap look for arguments to walk
                if isinstance(value, _SCANNED):
                    break
            else:
                value = None
            if value is not None or future.iterated is not None:
                children = _children(future)
                if children:
                    visiting.add(fid)
                    push((future, children))
                    for child in reversed(children):
                        if child not in index:
                            push((child, None))
                    continue
        else:  # all its children are in the graph now
            visiting.discard(fid)
        # Add the node.
        i = len(keys)
        index[future] = i
        task = future.task
        name = task.name
        count = name_counts.get(name)
        if count is None:
            key = name if name not in used_keys and "[" not in name else None
            count = 1
        else:
            count += 1
            key = f"{name}-{count}"
            if key in used_keys:
                key = None
        if key is None:  # taken already (a task may be called 'load-2'), or holds '['
            key = _unique_key(name, name_counts, used_keys)
        else:
            name_counts[name] = count
            used_keys.add(key)
        add_key(key)
        mapped = future.iterated is not None
        meta = metas[mapped].get(id(task))
        if meta is None:
            meta = metas[mapped][id(task)] = _metadata(task, mapped, backend_name_of)
        add_meta(meta)
        if children:
            deps = tuple(dict.fromkeys([index[c] for c in children]))
            for d in deps:
                users = dependents[d]
                if users is None:
                    dependents[d] = i
                elif isinstance(users, int):
                    dependents[d] = [users, i]
                else:
                    users.append(i)
        else:
            deps = ()
        add_deps(deps)
        add_dependents(None)
        add_future(future)
        node_count += _known_width(future) if mapped else 1
    graph.node_count = node_count
    graph.roots = [index[f] for f in roots]
    return graph


def _unique_key(name: str, counts: dict[str, int], used: set[str]) -> str:
    """``name``, then ``name-2``, ``name-3``...: never a key given out already
    (a task may itself be called ``load-2``), never one with ``[`` (element keys)."""
    count = counts.get(name, 0)
    while True:
        count += 1
        key = name if count == 1 else f"{name}-{count}"
        if key not in used and not (count == 1 and "[" in name):
            break
    counts[name] = count
    used.add(key)
    return key


def _metadata(
    task: Task[Any, Any], mapped: bool, backend_name_of: Callable[[Task[Any, Any]], str]
) -> GraphMetadata:
    kind: NodeKind = "map" if mapped else "task"
    return GraphMetadata(
        task.name, task.description, kind, backend_name_of(task), task.retries, task.timeout
    )
