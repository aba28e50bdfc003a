"""Pure data describing a DAG: node metadata and the ``Graph`` built from futures.

Nothing here runs tasks or touches threads; the engine reads these structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, final

if TYPE_CHECKING:
    from daglite.tasks import TaskFuture

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
    the nodes that take its result (``dependents``).
    """

    __slots__ = (
        "dependents",
        "deps",
        "futures",
        "index",
        "keys",
        "metadata",
        "node_count",
        "roots",
    )

    def __init__(self) -> None:
        self.futures: Final[list[TaskFuture[Any]]] = []
        self.keys: Final[list[str]] = []
        self.deps: Final[list[tuple[int, ...]]] = []
        # None (no dependent), one node index, or a list of them: most nodes
        # have at most one dependent, and a one-item list per node costs 64 bytes.
        self.dependents: Final[list[int | list[int] | None]] = []
        self.metadata: Final[list[GraphMetadata]] = []
        self.index: Final[dict[TaskFuture[Any], int]] = {}  # by identity
        self.roots: list[int] = []
        self.node_count = 0

    def __len__(self) -> int:
        return len(self.futures)

    def node_of(self, future: TaskFuture[Any]) -> int:
        """Index of the node built for ``future``."""
        return self.index[future]

    def dependents_of(self, i: int) -> list[int]:
        """Indices of the nodes that take node ``i``'s result."""
        users = self.dependents[i]
        if users is None:
            return []
        return [users] if isinstance(users, int) else list(users)
