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
from typing import Any, final

from daglite.exceptions import GraphError
from daglite.graph.base import Graph
from daglite.graph.walk import CONTAINERS, find
from daglite.tasks import Task, TaskFuture

__all__ = ["build_graph", "iter_futures"]

# What may hold a future: a future, or a container to look inside.
_SCANNED = (TaskFuture, *CONTAINERS)


def iter_futures(value: Any) -> Iterator[TaskFuture[Any]]:
    """Yield every future in ``value``, looking inside lists, tuples, sets and dicts."""
    return find(value, TaskFuture)


def _children(future: TaskFuture[Any]) -> list[TaskFuture[Any]]:
    """The futures ``future`` takes as arguments, in argument order."""
    found: list[TaskFuture[Any]] = []
    for values in (future.kwargs.values(), future.iterated.values() if future.iterated else ()):
        for value in values:
            if isinstance(value, TaskFuture):
                found.append(value)
            elif isinstance(value, CONTAINERS):
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
    """Pause the cyclic GC while building a graph.

    The build allocates many long-lived, acyclic objects, and full collections
    over them make a big build quadratic.
    """
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
    Children that take no futures themselves (leaves, as in a wide fan-in) are
    added on the spot, in argument order, without a trip through the stack:
    the order, and so the keys, are those of the plain walk.
    """
    builder = _Builder(backend_name_of)
    index, add, add_leaf = builder.graph.index, builder.add, builder.add_leaf
    add_leaves = builder.add_leaves
    visiting: set[int] = set()
    stack: list[tuple[TaskFuture[Any], list[TaskFuture[Any]] | None]] = [
        (f, None) for f in reversed(roots)
    ]
    pop, push = stack.pop, stack.append
    while stack:
        future, children = pop()
        fid = id(future)
        if children is not None:  # all its children are in the graph now
            visiting.discard(fid)
            add(future, children)
            continue
        if future in index:
            continue
        if fid in visiting:
            raise GraphError(f"the graph has a cycle through task {future.task.name!r}")
        children = _children(future) if _takes_futures(future) else None
        if not children:
            add_leaf(future)
            continue
        n = add_leaves(children)
        if n == len(children):
            add(future, children)
            continue
        # children[n] takes futures: walk it (and the rest, in order) first
        visiting.add(fid)
        push((future, children))
        for later in reversed(children[n:]):
            if later not in index:
                push((later, None))
    graph = builder.graph
    graph.node_count = builder.node_count
    graph.roots = [index[f] for f in roots]
    return graph


def _takes_futures(future: TaskFuture[Any]) -> bool:
    """Whether ``future``'s arguments may hold futures (a cheap look first)."""
    if future.iterated is not None:
        return True
    for value in future.kwargs.values():  # noqa: SIM110 - a loop: no generator per node
        if isinstance(value, _SCANNED):
            return True
    return False


@final
class _Builder:
    """Appends nodes and their edges to a ``Graph``.

    Keys and metadata come later, from the graph itself, when first asked for.
    """

    __slots__ = ("graph", "node_count")

    def __init__(self, backend_name_of: Callable[[Task[Any, Any]], str]) -> None:
        self.graph = Graph(backend_name_of)
        self.node_count = 0

    def add(self, future: TaskFuture[Any], children: list[TaskFuture[Any]]) -> None:
        """Add ``future`` as the next node; its ``children`` are in the graph already."""
        self.add_leaf(future)
        graph = self.graph
        index, dependents = graph.index, graph.dependents
        i = len(graph.deps) - 1
        deps = graph.deps[i] = tuple(dict.fromkeys([index[c] for c in children]))
        for d in deps:
            users = dependents[d]
            if users is None:
                dependents[d] = i
            elif isinstance(users, int):
                dependents[d] = [users, i]
            else:
                users.append(i)

    def add_leaves(self, children: list[TaskFuture[Any]]) -> int:
        """Add ``children`` that take no futures, in order, up to the first that does.

        Children in the graph already are passed over. This loop runs once per
        leaf of a wide fan-in, so ``_takes_futures`` and ``add_leaf`` are inlined.

        Returns:
            The position of the first child that takes futures
            (``len(children)`` if there is none).
        """
        graph = self.graph
        index, futures, deps, dependents = graph.index, graph.futures, graph.deps, graph.dependents
        for n, child in enumerate(children):
            if child in index:
                continue
            if child.iterated is not None:
                return n
            for value in child.kwargs.values():
                if isinstance(value, _SCANNED):
                    return n
            index[child] = len(futures)
            futures.append(child)
            deps.append(())
            dependents.append(None)
            self.node_count += 1
        return len(children)

    def add_leaf(self, future: TaskFuture[Any]) -> None:
        """Add ``future``, which takes no futures, as the next node."""
        graph = self.graph
        futures = graph.futures
        graph.index[future] = len(futures)
        futures.append(future)
        graph.deps.append(())
        graph.dependents.append(None)
        self.node_count += 1 if future.iterated is None else _known_width(future)
