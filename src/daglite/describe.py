"""Inspect a DAG without running it: its nodes, edges and fan-out widths.

``describe(future)`` builds the graph exactly as ``evaluate`` would (same keys,
same backend names) and returns a ``GraphDescription``, which renders as a text
table (``to_text``) or as Graphviz DOT (``to_dot``). ``daglite describe`` prints
it from the command line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, final

from daglite.backends import backend_namer
from daglite.backends.base import Backend
from daglite.graph.base import Graph
from daglite.graph.builder import build_graph, iter_futures
from daglite.tasks import Task, TaskFuture

__all__ = ["GraphDescription", "NodeDescription", "describe"]


@final
@dataclass(frozen=True)
class NodeDescription:
    """One node of a DAG, as ``evaluate`` would run it.

    Attributes:
        key: The node's key (``name``, ``name-2``, ...); mapped elements run as ``key[i]``.
        task: The task's name.
        kind: ``"task"`` for a single call, ``"map"`` for a fan-out.
        backend: Name of the backend the node runs on.
        width: Calls the node makes: 1 for a task, the element count for a
            fan-out, or None when a future decides it at run time.
        description: The task's description.
        deps: Keys of the nodes whose results this node needs.
    """

    key: str
    task: str
    kind: str
    backend: str
    width: int | None
    description: str
    deps: tuple[str, ...]

    @property
    def width_text(self) -> str:
        """``"dynamic"`` for a width known only at run time, else the number ("" for tasks)."""
        if self.kind == "task":
            return ""
        return "dynamic" if self.width is None else str(self.width)


@final
class _Columns(NamedTuple):
    """A description's nodes as columns, in node order (``GraphDescription._columns``)."""

    keys: Sequence[str]
    tasks: Sequence[str]
    kinds: Sequence[str]
    backends: Sequence[str]
    widths: Sequence[int | None]
    descriptions: Sequence[str]
    deps: Sequence[tuple[int, ...]]  # positions of each node's dependencies


@final
class GraphDescription:
    """A DAG's shape: nodes in topological order, edges, and the wanted roots.

    Immutable. The description ``evaluate`` hands to hooks makes its
    ``NodeDescription`` objects on first use of ``nodes`` (about 1 µs per node;
    a report of a large run reads the columns instead, gh-19).

    Args:
        nodes: Every node, dependencies before dependents.
        roots: Keys of the nodes whose results ``evaluate`` returns.

    Attributes:
        nodes: Every node, dependencies before dependents.
        roots: Keys of the nodes whose results ``evaluate`` returns.
    """

    __slots__ = ("_columns_made", "_nodes", "_roots")

    def __init__(self, nodes: Iterable[NodeDescription], roots: Iterable[str]) -> None:
        self._nodes: tuple[NodeDescription, ...] | None = tuple(nodes)
        self._roots: tuple[str, ...] = tuple(roots)
        self._columns_made: _Columns | None = None

    @classmethod
    def _of_columns(cls, columns: _Columns, roots: tuple[str, ...]) -> GraphDescription:
        """A description whose nodes are made from ``columns`` when first asked for."""
        made = object.__new__(cls)
        made._nodes, made._roots, made._columns_made = None, roots, columns
        return made

    @property
    def nodes(self) -> tuple[NodeDescription, ...]:
        """Every node, dependencies before dependents."""
        if self._nodes is None:
            assert self._columns_made is not None
            self._nodes = _nodes_of(self._columns_made)
        return self._nodes

    @property
    def roots(self) -> tuple[str, ...]:
        """Keys of the nodes whose results ``evaluate`` returns."""
        return self._roots

    @property
    def node_count(self) -> int:
        """How many nodes the DAG has (a fan-out counts once), without making them."""
        if self._nodes is None:
            assert self._columns_made is not None
            return len(self._columns_made.keys)
        return len(self._nodes)

    def _columns(self) -> _Columns:
        """The nodes as columns: what a summary of a large DAG reads (no objects per node)."""
        if self._columns_made is None:
            nodes = self.nodes
            at = {n.key: i for i, n in enumerate(nodes)}
            self._columns_made = _Columns(
                [n.key for n in nodes],
                [n.task for n in nodes],
                [n.kind for n in nodes],
                [n.backend for n in nodes],
                [n.width for n in nodes],
                [n.description for n in nodes],
                [tuple(at[d] for d in n.deps) for n in nodes],
            )
        return self._columns_made

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GraphDescription):
            return NotImplemented
        return self.roots == other.roots and self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash((self.nodes, self.roots))

    def __repr__(self) -> str:
        return f"GraphDescription(nodes={self.nodes!r}, roots={self.roots!r})"

    @property
    def edges(self) -> list[tuple[str, str]]:
        """``(upstream, downstream)`` key pairs."""
        return [(dep, node.key) for node in self.nodes for dep in node.deps]

    @property
    def call_count(self) -> int:
        """Task calls known before running (fan-outs of dynamic width count 0)."""
        return sum(node.width or 0 for node in self.nodes)

    @property
    def is_dynamic(self) -> bool:
        """True when some fan-out learns its width only at run time."""
        return any(node.width is None for node in self.nodes)

    def node(self, key: str) -> NodeDescription:
        """The node with ``key``.

        Raises:
            KeyError: If there is no such node.
        """
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(key)

    def to_text(self) -> str:
        """A plain-text summary: a node table, the edges and the roots."""
        calls = f"{self.call_count} calls" + (" + dynamic fan-outs" if self.is_dynamic else "")
        lines = [f"{len(self.nodes)} nodes, {len(self.edges)} edges, {calls}", ""]
        header = ("key", "task", "kind", "backend", "width")
        rows = [(n.key, n.task, n.kind, n.backend, n.width_text) for n in self.nodes]
        lines += _table([header, *rows])
        lines += ["", "edges:"]
        lines += [f"  {a} -> {b}" for a, b in self.edges] or ["  (none)"]
        lines += ["", "roots: " + ", ".join(self.roots)]
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The DAG in Graphviz DOT (``dot -Tsvg``): fan-outs are drawn as stacks."""
        lines = [
            "digraph daglite {",
            "  rankdir=LR;",
            '  node [shape=box, style=rounded, fontname="Helvetica"];',
        ]
        roots = set(self.roots)
        for n in self.nodes:
            detail = n.backend if n.kind == "task" else f"map x{n.width_text} · {n.backend}"
            attrs = [f"label={_dot_quote(n.key + chr(10) + detail)}"]
            if n.kind == "map":
                attrs.append("shape=box3d")
            if n.key in roots:
                attrs.append("peripheries=2")
            if n.description:
                attrs.append(f"tooltip={_dot_quote(n.description)}")
            lines.append(f"  {_dot_quote(n.key)} [{', '.join(attrs)}];")
        lines += [f"  {_dot_quote(a)} -> {_dot_quote(b)};" for a, b in self.edges]
        lines.append("}")
        return "\n".join(lines) + "\n"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def _dot_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _width(future: TaskFuture[Any]) -> int | None:
    if future.iterated is None:
        return 1
    values = list(future.iterated.values())
    if any(isinstance(v, TaskFuture) for v in values):
        return None
    sizes = [len(v) for v in values]
    return math.prod(sizes) if future.mode == "product" else min(sizes, default=0)


def _roots(value: Any) -> list[TaskFuture[Any]]:
    roots = list(dict.fromkeys(iter_futures(value)))
    if not roots:
        raise TypeError(
            "describe() needs a TaskFuture (or a list, tuple or dict of them), got "
            f"{type(value).__name__}"
            + ("; did you call the task?" if isinstance(value, Task) else "")
        )
    return roots


def _describe_graph(graph: Graph) -> GraphDescription:
    """The description of a built graph (``describe``, and hooks that ask for it).

    Its nodes are made on first use: the columns taken here are the graph's
    own lists (keys, dependencies) and one pass over its metadata, so a run
    whose plugin reads only a summary never pays for 10,000 node objects.
    The description keeps no future, so no task argument stays alive with it.
    """
    metas = graph.metadata
    columns = _Columns(
        graph.keys,
        [m.name for m in metas],
        [m.kind for m in metas],
        [m.backend_name for m in metas],
        [_width(f) for f in graph.futures],
        [m.description for m in metas],
        graph.deps,
    )
    return GraphDescription._of_columns(columns, tuple(graph.keys[r] for r in graph.roots))


def _nodes_of(columns: _Columns) -> tuple[NodeDescription, ...]:
    """The ``NodeDescription`` of every node of ``columns``.

    Each is made without the frozen dataclass's ``__init__``, which sets each
    field through ``object.__setattr__``: the fields go into the instance's
    dict in one step (same object, same equality).
    """
    keys, tasks, kinds, backends, widths, descriptions, deps = columns
    new, key_at = object.__new__, keys.__getitem__
    nodes = []
    for i, key in enumerate(keys):
        node = new(NodeDescription)
        node.__dict__.update(
            key=key,
            task=tasks[i],
            kind=kinds[i],
            backend=backends[i],
            width=widths[i],
            description=descriptions[i],
            deps=tuple(map(key_at, deps[i])),
        )
        nodes.append(node)
    return tuple(nodes)


def describe(future: Any, *, backend: str | Backend | None = None) -> GraphDescription:
    """Describe the DAG behind ``future`` without running anything.

    Args:
        future: A ``TaskFuture``, or a list, tuple or dict of them.
        backend: The backend ``evaluate`` would be given (name, instance or
            None for the default); it decides the backend names shown.

    Raises:
        TypeError: If ``future`` holds no futures.
        BackendError: For an unknown backend name.
        GraphError: If the futures form a cycle.
    """
    return _describe_graph(build_graph(_roots(future), backend_namer(backend)))
