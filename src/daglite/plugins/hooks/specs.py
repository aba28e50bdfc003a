"""Hook specifications: signatures and contracts, no logic.

Every hook runs in the process that called ``evaluate``, on the plugin
instances the user registered, from one thread at a time. For one node,
``before_node_execute`` comes before ``after_node_execute`` / ``on_node_error``;
for an edge u -> v, u's ``after_node_execute`` comes before v's
``before_node_execute``. Graph hooks bracket everything else. An implementation
may declare any subset of a hook's parameters, with or without defaults, and
gets every one it names; ``wrapper``, ``hookwrapper``, ``tryfirst`` and
``trylast`` behave as pluggy documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from daglite.plugins.hooks.markers import hook_spec

if TYPE_CHECKING:
    from daglite.describe import GraphDescription
    from daglite.graph.base import GraphMetadata
    from daglite.plugins.reporters import Reporter
    from daglite.tasks import Task


class NodeSpecs:
    """Hooks called once per node (each mapped element is a node)."""

    @hook_spec
    def before_node_execute(
        self, key: str, metadata: GraphMetadata, inputs: dict[str, Any], reporter: Reporter
    ) -> None:
        """Called when the task really starts on its worker (not when it is queued).

        The start travels from the worker through the backend's reporter channel;
        the hook itself runs in the caller. Fired again for each retry attempt.
        """

    @hook_spec
    def after_node_execute(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        result: Any,
        duration: float,
        reporter: Reporter,
        started: float,
        worker: str,
    ) -> None:
        """Called after the task returned; ``duration`` was measured where it ran.

        Every event the task reported has been delivered before this hook runs.
        ``started`` is when the attempt started (``time.time()`` where it ran)
        and ``worker`` names where: ``caller`` (inline), a thread's name
        (threads), ``pid N`` (processes), a Dask worker's address, or
        ``cache`` when a cache plugin supplied the result.
        """

    @hook_spec
    def on_node_error(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        error: BaseException,
        duration: float,
        reporter: Reporter,
        started: float,
        worker: str,
    ) -> None:
        """Called once when a task has failed for good (after its last retry).

        ``error`` is the task's own exception (a ``TimeoutError`` for a timeout,
        a ``WorkerLostError`` when its worker died), not a daglite wrapper.
        ``started`` and ``worker`` are those of the last attempt (as for
        ``after_node_execute``; 0.0 and ``""`` when it never ran, say its worker
        died before it reported).
        """

    @hook_spec
    def before_node_retry(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        error: BaseException,
        attempt: int,
        duration: float,
        reporter: Reporter,
        started: float,
        worker: str,
    ) -> None:
        """Called when an attempt failed and the task will be run again.

        ``attempt`` is the number of the attempt about to start (2 for the first
        retry). ``on_node_error`` is not called for attempts that are retried.
        ``started`` and ``worker`` are those of the attempt that failed.
        """

    @hook_spec(firstresult=True)
    def lookup_node_result(
        self, key: str, metadata: GraphMetadata, inputs: dict[str, Any], task: Task[Any, Any]
    ) -> Any:
        """Offer a result for a node before it is submitted, to skip running it.

        Return ``daglite.plugins.hooks.CachedResult(value)`` to supply the
        result, or None to let the task run. The first plugin that returns a
        result wins. A skipped node still gets ``before_node_execute`` and
        ``after_node_execute`` (with ``duration`` 0.0), so counts add up.
        ``task`` is the node's ``Task`` (its function and options), for keys
        that follow the code.
        """


class GraphSpecs:
    """Hooks called once per ``evaluate`` call."""

    @hook_spec
    def before_graph_execute(
        self, root_id: UUID, node_count: int, is_async: bool, graph: GraphDescription
    ) -> None:
        """Called first, before any node hook.

        ``node_count`` counts every node that will run, mapped elements
        included, as far as it is known now (see ``on_graph_expand``).
        ``graph`` describes the DAG (``daglite.describe.GraphDescription``:
        nodes with their keys, tasks, backends, widths and inputs); it is made
        only when an implementation declares it.
        """

    @hook_spec
    def on_graph_expand(self, root_id: UUID, key: str, added: int, node_count: int) -> None:
        """Called when a fan-out over a future learns its width at run time.

        ``added`` nodes were added under ``key``; ``node_count`` is the new total.
        """

    @hook_spec
    def after_graph_execute(
        self, root_id: UUID, result: Any, duration: float, is_async: bool
    ) -> None:
        """Called last when the evaluation succeeded; every node hook has run."""

    @hook_spec
    def on_graph_error(
        self, root_id: UUID, error: BaseException, duration: float, is_async: bool
    ) -> None:
        """Called last when the evaluation failed or was interrupted."""
