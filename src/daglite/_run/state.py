"""The run's scheduling state and its transitions, as plain code.

This module holds what one evaluation knows about its nodes: how many inputs
each still waits for, how many consumers each result still has, the results
themselves, the elements of fan-outs still to come, the nodes that failed or
were skipped, and what ``on_error="continue"`` keeps. It runs nothing and
imports nothing that runs anything (no threads, queues, executors, plugins or
backends), so it is tested on hand-built graphs without ``evaluate``
(``tests/engine/``).

Transitions *return* the nodes they made ready; the loop
(``daglite._run.loop``) decides how to run them. Nothing here schedules.

Node indices are those of ``Graph``; an element is ``(node, index)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, final

from daglite.graph.base import Graph

__all__ = ["NO_NODES", "RunState"]

# What a transition returns when it made no node ready (shared, never mutated).
NO_NODES: Final[tuple[int, ...]] = ()


@final
class RunState:
    """Bookkeeping of one evaluation over ``graph``.

    Attributes:
        graph: The DAG being run.
        waiting: Per node, how many inputs are not done yet.
        consumers: Per node, how many dependents have not taken its result yet.
        results: Per node, its result once done (``None`` again once released).
        roots: Nodes whose results ``evaluate`` returns: never released.
        elements_left: Per running fan-out, how many elements are not done yet.
        element_results: Per running fan-out, its elements' results so far.
        claimed: Nodes handed out before their inputs were done (fused
            followers); readiness skips them.
        failed: Nodes that failed, and (``on_error="continue"``) the nodes
            downstream of them, which will not run.
        skipped: Keys of the nodes that will not run because an input failed.
        aborting: Set by ``abort`` (fail fast): no node becomes ready any more.
    """

    __slots__ = (
        "aborting",
        "claimed",
        "consumers",
        "element_results",
        "elements_left",
        "failed",
        "graph",
        "results",
        "roots",
        "skipped",
        "waiting",
    )

    def __init__(self, graph: Graph) -> None:
        self.graph: Final = graph
        self.waiting = [len(d) for d in graph.deps]
        self.consumers = [
            0 if d is None else 1 if isinstance(d, int) else len(d) for d in graph.dependents
        ]
        self.results: list[Any] = [None] * len(graph)
        self.roots: Final = frozenset(graph.roots)
        self.elements_left: dict[int, int] = {}
        self.element_results: dict[int, list[Any]] = {}
        self.claimed: set[int] = set()
        self.failed: set[int] = set()
        self.skipped: list[str] = []
        self.aborting = False

    def initial(self) -> list[int]:
        """The nodes ready before anything ran (no inputs), in node order."""
        return [i for i, waiting in enumerate(self.waiting) if waiting == 0]

    def node_done(self, i: int, value: Any) -> Sequence[int]:
        """Node ``i`` produced ``value``; returns the dependents it made ready."""
        self.results[i] = value
        users = self.graph.dependents[i]
        if users is None or self.aborting:
            return NO_NODES
        waiting, failed, claimed = self.waiting, self.failed, self.claimed
        if type(users) is int:  # one consumer, the common case: no list
            waiting[users] -= 1
            if waiting[users] == 0 and users not in failed and users not in claimed:
                return (users,)
            return NO_NODES
        ready = []
        for d in (users,) if isinstance(users, int) else users:
            waiting[d] -= 1
            if waiting[d] == 0 and d not in failed and d not in claimed:
                ready.append(d)
        return ready

    def fan_out(self, i: int, width: int) -> Sequence[int]:
        """Fan-out ``i`` runs ``width`` elements; with none it is done at once."""
        if width == 0:
            return self.node_done(i, [])
        self.elements_left[i] = width
        self.element_results[i] = [None] * width
        return NO_NODES

    def element_done(self, i: int, e: int, value: Any) -> Sequence[int]:
        """Element ``e`` of fan-out ``i`` returned ``value``; returns the nodes made ready.

        Nodes are made ready only once the fan-out's last element is done.
        """
        self.element_results[i][e] = value
        left = self.elements_left[i] - 1  # elements_done(i, 1), inlined: the hot path
        if left:
            self.elements_left[i] = left
            return NO_NODES
        return self._fan_out_done(i)

    def slice_done(self, i: int, first: int, values: list[Any], failures: int) -> Sequence[int]:
        """Elements ``first``... of fan-out ``i`` ran as one slice and gave ``values``.

        ``values`` are in order; ``failures`` of them failed (their places hold
        no result).
        """
        self.element_results[i][first : first + len(values)] = values
        return self.elements_done(i, len(values) - failures)

    def elements_done(self, i: int, n: int) -> Sequence[int]:
        """``n`` more elements of fan-out ``i`` succeeded.

        After the last, the fan-out is done (unless one of its elements failed).
        """
        left = self.elements_left[i] - n
        if left:
            self.elements_left[i] = left
            return NO_NODES
        return self._fan_out_done(i)

    def _fan_out_done(self, i: int) -> Sequence[int]:
        """Every element of fan-out ``i`` is done: the node is, unless one failed."""
        del self.elements_left[i]
        values = self.element_results.pop(i)
        if i in self.failed:
            return NO_NODES
        return self.node_done(i, values)

    def release_inputs(self, i: int) -> None:
        """Node ``i`` took its inputs: drop the results nobody needs any more."""
        consumers, results, roots = self.consumers, self.results, self.roots
        for d in self.graph.deps[i]:
            consumers[d] -= 1
            if consumers[d] == 0 and d not in roots:
                results[d] = None

    def fail(self, i: int) -> list[str]:
        """Node ``i`` failed for good (``on_error="continue"``): nothing downstream runs.

        Returns:
            The keys newly skipped.
        """
        if i in self.failed:
            return []
        self.failed.add(i)
        graph, failed = self.graph, self.failed
        newly: list[str] = []
        stack = graph.dependents_of(i)
        while stack:
            d = stack.pop()
            if d in failed:
                continue
            failed.add(d)
            newly.append(graph.keys[d])
            stack.extend(graph.dependents_of(d))
        self.skipped.extend(newly)
        return newly

    def abort(self) -> None:
        """Fail fast: from now on nothing becomes ready."""
        self.aborting = True

    def claim(self, i: int) -> None:
        """Node ``i`` is handed out ahead of its input (a fused follower)."""
        self.claimed.add(i)

    def unclaim(self, i: int) -> None:
        """Node ``i`` is no longer handed out ahead: it becomes ready as usual."""
        self.claimed.discard(i)
