"""What happened in a run, attempt by attempt: the record behind reports and traces.

``TimelinePlugin`` listens to the node and graph hooks (in the caller, like
every hook) and keeps, per evaluation, a ``RunTimeline``: the DAG's
description, the run's wall-clock start and end, and one ``Attempt`` per
task attempt (when it started where it ran, how long it took, on which worker,
whether it failed, was retried or came from a cache). The run report
(``ReportPlugin``), the trace file (``TracePlugin``) and OpenTelemetry spans are
built from these records; subclass it, or read ``runs`` after ``evaluate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final
from uuid import UUID

from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from daglite.describe import GraphDescription
    from daglite.graph.base import GraphMetadata

__all__ = ["Attempt", "RunTimeline", "TimelinePlugin"]


@final
@dataclass(slots=True)
class Attempt:
    """One attempt of one node (a mapped element is a node).

    Attributes:
        key: The node's key (``name[i]`` for a mapped element).
        task: The task's name.
        backend: Name of the backend the node ran on.
        worker: Where it ran (``caller``, a thread's name, ``pid N``, a Dask
            worker's address, or ``cache``).
        started: Wall-clock start where it ran (``time.time()``), or 0.0 if
            it never started (its worker died first).
        duration: Its run time in seconds, measured where it ran.
        attempt: 1 for the first attempt, 2 for the first retry, ...
        error: ``"TypeName: message"`` when the attempt failed, else None.
        retried: True when it failed and the task was run again.
    """

    key: str
    task: str
    backend: str
    worker: str
    started: float
    duration: float
    attempt: int
    error: str | None = None
    retried: bool = False

    @property
    def ok(self) -> bool:
        """Whether the attempt returned a result."""
        return self.error is None

    @property
    def cached(self) -> bool:
        """Whether a cache plugin supplied the result (nothing ran)."""
        return self.worker == "cache"


@final
@dataclass(slots=True)
class RunTimeline:
    """Everything one evaluation did, in the order the hooks saw it.

    Attributes:
        root_id: The evaluation's id (as in every graph hook).
        graph: The DAG's description (nodes, their tasks, backends, inputs).
        started: Wall-clock start of the evaluation (``time.time()``).
        ended: Wall-clock end, or 0.0 while it runs.
        attempts: Every task attempt, in the order their hooks ran.
        error: ``"TypeName: message"`` when the evaluation failed.
    """

    root_id: UUID
    graph: GraphDescription | None
    started: float
    ended: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    error: str | None = None

    @property
    def wall_time(self) -> float:
        """Seconds from start to end (to now while it runs)."""
        return (self.ended or time.time()) - self.started

    def workers(self) -> list[str]:
        """The workers that ran attempts, in order of their first attempt."""
        return list(dict.fromkeys(a.worker for a in self.attempts))


class TimelinePlugin:
    """Records a ``RunTimeline`` per evaluation from the hooks.

    Node hooks do not say which evaluation they belong to, so one instance
    records one evaluation at a time: give an evaluation started inside a task
    (a nested ``evaluate``) a plugin of its own.

    Attributes:
        runs: The timelines of the evaluations seen, oldest first.
    """

    def __init__(self) -> None:
        self.runs: list[RunTimeline] = []
        self._open: dict[UUID, RunTimeline] = {}
        self._tries: dict[str, int] = {}

    @property
    def last(self) -> RunTimeline:
        """The timeline of the latest evaluation.

        Raises:
            LookupError: If no evaluation was seen yet.
        """
        if not self.runs:
            raise LookupError("no evaluation has run with this plugin yet")
        return self.runs[-1]

    # -- hooks -------------------------------------------------------------------

    @hook_impl
    def before_graph_execute(self, root_id: UUID, graph: GraphDescription | None) -> None:
        """An evaluation starts: open its timeline."""
        run = RunTimeline(root_id, graph, time.time())
        self._open[root_id] = run
        self.runs.append(run)
        self._tries = {}

    @hook_impl
    def after_node_execute(
        self, key: str, metadata: GraphMetadata, duration: float, started: float, worker: str
    ) -> None:
        """An attempt returned."""
        self._add(Attempt(key, metadata.name, metadata.backend_name, worker, started, duration, 1))

    @hook_impl
    def before_node_retry(
        self,
        key: str,
        metadata: GraphMetadata,
        error: BaseException,
        duration: float,
        started: float,
        worker: str,
    ) -> None:
        """An attempt failed and the task runs again."""
        attempt = Attempt(
            key, metadata.name, metadata.backend_name, worker, started, duration, 1, _text(error)
        )
        attempt.retried = True
        self._add(attempt)

    @hook_impl
    def on_node_error(
        self,
        key: str,
        metadata: GraphMetadata,
        error: BaseException,
        duration: float,
        started: float,
        worker: str,
    ) -> None:
        """The last attempt failed."""
        self._add(
            Attempt(
                key,
                metadata.name,
                metadata.backend_name,
                worker,
                started,
                duration,
                1,
                _text(error),
            )
        )

    @hook_impl
    def after_graph_execute(self, root_id: UUID) -> None:
        """The evaluation succeeded: close its timeline."""
        self._close(root_id, None)

    @hook_impl
    def on_graph_error(self, root_id: UUID, error: BaseException) -> None:
        """The evaluation failed or was interrupted: close its timeline."""
        self._close(root_id, _text(error))

    # -- for subclasses ------------------------------------------------------------

    def run_ended(self, run: RunTimeline) -> None:
        """Called when ``run`` is complete (write a file here); does nothing by default."""

    def _add(self, attempt: Attempt) -> None:
        tries = self._tries.get(attempt.key, 0) + 1
        self._tries[attempt.key] = tries
        attempt.attempt = tries
        if self.runs:
            self.runs[-1].attempts.append(attempt)

    def _close(self, root_id: UUID, error: str | None) -> None:
        run = self._open.pop(root_id, None)
        if run is None:
            return
        run.ended = time.time()
        run.error = error
        self.run_ended(run)


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
