"""Pure data describing a DAG: node metadata and the ``Graph`` built from futures.

Nothing here runs tasks or touches threads; the engine reads these structures.
A graph makes its nodes' keys and metadata on first use, the latter with the
backend-naming function it was built with.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, final

if TYPE_CHECKING:
    from daglite.tasks import Task, TaskFuture

__all__ = ["Graph", "GraphMetadata", "NodeKind"]

NodeKind = Literal["task", "map"]


@final
@dataclass(frozen=True, slots=True)
class GraphMetadata:
    """What plugins learn about a node.

    Attributes:
        name: The task's name.
        description: The task's description (first docstring line by default).
        kind: ``"task"`` for a single call, ``"map"`` for one element of a fan-out.
        backend_name: Name of the backend the node runs on.
        retries: The task's ``retries`` option.
        timeout: The task's ``timeout`` option, in seconds, or None.
    """

    name: str
    description: str
    kind: NodeKind
    backend_name: str
    retries: int = 0
    timeout: float | None = None


@final
class Graph:
    """A DAG of futures in topological order (dependencies before dependents).

    Node ``i`` is described by the ``i``-th entry of each list: its future
    (whose arguments the engine fills in from upstream results, found through
    ``index``), key, metadata, the nodes it takes results from (``deps``) and
    the nodes that take its result (``dependents``). Keys and metadata are
    made for all nodes on first use: a run that nobody watches never needs them.
    """

    __slots__ = (
        "_keys",
        "_metadata",
        "backend_name_of",
        "dependents",
        "deps",
        "futures",
        "index",
        "node_count",
        "roots",
    )

    def __init__(self, backend_name_of: Callable[[Task[Any, Any]], str]) -> None:
        self.backend_name_of = backend_name_of
        self.futures: Final[list[TaskFuture[Any]]] = []
        self.deps: Final[list[tuple[int, ...]]] = []
        # None (no dependent), one node index, or a list of them: most nodes
        # have at most one dependent, and a one-item list per node costs 64 bytes.
        self.dependents: Final[list[int | list[int] | None]] = []
        self.index: Final[dict[TaskFuture[Any], int]] = {}  # by identity
        self.roots: list[int] = []
        self.node_count = 0
        self._keys: list[str] | None = None
        self._metadata: list[GraphMetadata] | None = None

    def __len__(self) -> int:
        return len(self.futures)

    @property
    def keys(self) -> list[str]:
        """Each node's key; the same DAG gets the same keys every run.

        A name's first node is ``name``, later ones ``name-2``, ``name-3``...
        in node order.
        """
        if self._keys is None:
            self._keys = _node_keys([f.task.name for f in self.futures])
        return self._keys

    @property
    def metadata(self) -> list[GraphMetadata]:
        """Each node's ``GraphMetadata`` (shared by the nodes of one task)."""
        if self._metadata is None:
            self._metadata = _node_metadata(self.futures, self.backend_name_of)
        return self._metadata

    def node_of(self, future: TaskFuture[Any]) -> int:
        """Index of the node built for ``future``."""
        return self.index[future]

    def dependents_of(self, i: int) -> list[int]:
        """Indices of the nodes that take node ``i``'s result."""
        users = self.dependents[i]
        if users is None:
            return []
        return [users] if isinstance(users, int) else list(users)


# A name another name's later keys could equal: ``load-2`` is also the second
# key of ``load``.
_SUFFIXED: Final = re.compile(r"-\d+$")


def _node_keys(names: list[str]) -> list[str]:
    """Keys for nodes named ``names``, in order: ``name``, ``name-2``, ``name-3``...

    Keys may collide only when a name looks like a later key of another
    (``load-2``) or holds ``[`` (kept for element keys): from the first such
    name on, every key given out is remembered and checked.
    """
    counts: dict[str, int] = {}
    keys: list[str] = []
    used: set[str] | None = None
    for name in names:
        count = counts.get(name)
        if count is not None and used is None:  # the common case
            counts[name] = count = count + 1
            keys.append(f"{name}-{count}")
            continue
        if used is None:
            if "[" not in name and not _SUFFIXED.search(name):
                counts[name] = 1
                keys.append(name)
                continue
            used = set(keys)
        keys.append(_unique_key(name, counts, used))
    return keys


def _unique_key(name: str, counts: dict[str, int], used: set[str]) -> str:
    """The next key for ``name``: ``name``, then ``name-2``, ``name-3``...

    Never a key given out already, and never a bare ``name`` with ``[`` in it.
    """
    count = counts.get(name, 0)
    while True:
        count += 1
        key = name if count == 1 else f"{name}-{count}"
        if key not in used and not (count == 1 and "[" in name):
            break
    counts[name] = count
    used.add(key)
    return key


def _node_metadata(
    futures: list[TaskFuture[Any]], backend_name_of: Callable[[Task[Any, Any]], str]
) -> list[GraphMetadata]:
    made: dict[tuple[int, bool], GraphMetadata] = {}
    out = []
    for future in futures:
        task, mapped = future.task, future.iterated is not None
        meta = made.get((id(task), mapped))
        if meta is None:
            meta = made[(id(task), mapped)] = GraphMetadata(
                task.name,
                task.description,
                "map" if mapped else "task",
                backend_name_of(task),
                task.retries,
                task.timeout,
            )
        out.append(meta)
    return out
