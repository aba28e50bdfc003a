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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, final
from uuid import UUID

from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from daglite.describe import GraphDescription
    from daglite.graph.base import GraphMetadata

__all__ = ["Attempt", "AttemptColumns", "RunTimeline", "TimelinePlugin"]


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


# One attempt as the hooks saw it: key, metadata, worker, started, duration,
# error, retried, attempt number (0: one more than the key's failed attempts,
# known when the run is read). A tuple per attempt, not an ``Attempt``: the
# hook of a 10,000-task run then costs ~0.1 µs instead of ~0.6 µs (gh-19).
_Row = tuple[str, "GraphMetadata", str, float, float, "str | None", bool, int]


@final
class AttemptColumns(NamedTuple):
    """A run's attempts as columns, in the order their hooks ran (``RunTimeline.columns``).

    Attributes:
        keys: Each attempt's node key.
        tasks: Its task's name.
        backends: The name of the backend it ran on.
        workers: Where it ran (as ``Attempt.worker``).
        started: Its wall-clock start where it ran (0.0: it never started).
        durations: Its run time in seconds.
        attempts: 1 for a first attempt, 2 for the first retry, ...
        errors: ``"TypeName: message"`` for a failed attempt, else None.
        retried: Whether it failed and the task ran again.
    """

    keys: Sequence[str]
    tasks: Sequence[str]
    backends: Sequence[str]
    workers: Sequence[str]
    started: Sequence[float]
    durations: Sequence[float]
    attempts: Sequence[int]
    errors: Sequence[str | None]
    retried: Sequence[bool]


@final
class RunTimeline:
    """Everything one evaluation did, in the order the hooks saw it.

    ``TimelinePlugin`` records attempts as plain rows; ``attempts`` turns them
    into ``Attempt`` objects when first read, and ``columns()`` reads them as
    columns without making any (what the report and the trace file use).

    Args:
        root_id: The evaluation's id.
        graph: The DAG's description, or None.
        started: Wall-clock start of the evaluation (``time.time()``).
        ended: Wall-clock end, or 0.0 while it runs.
        attempts: Attempts to start with.
        error: ``"TypeName: message"`` when the evaluation failed.

    Attributes:
        root_id: The evaluation's id (as in every graph hook).
        graph: The DAG's description (nodes, their tasks, backends, inputs).
        started: Wall-clock start of the evaluation (``time.time()``).
        ended: Wall-clock end, or 0.0 while it runs.
        error: ``"TypeName: message"`` when the evaluation failed.
    """

    __slots__ = ("_attempts", "_rows", "_tries", "ended", "error", "graph", "root_id", "started")

    def __init__(
        self,
        root_id: UUID,
        graph: GraphDescription | None,
        started: float,
        ended: float = 0.0,
        attempts: Iterable[Attempt] = (),
        error: str | None = None,
    ) -> None:
        self.root_id = root_id
        self.graph = graph
        self.started = started
        self.ended = ended
        self.error = error
        self._attempts: list[Attempt] = list(attempts)
        self._rows: list[_Row] = []
        # Failed attempts per key so far: the number of the attempt running now.
        self._tries: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"RunTimeline(root_id={self.root_id!r}, started={self.started!r}, "
            f"ended={self.ended!r}, attempts={self.attempt_count}, error={self.error!r})"
        )

    @property
    def attempt_count(self) -> int:
        """How many attempts were recorded (without making ``Attempt`` objects)."""
        return len(self._attempts) + len(self._rows)

    @property
    def attempts(self) -> list[Attempt]:
        """Every task attempt, in the order their hooks ran (append to add one)."""
        if self._rows:  # emptied in place: the plugin appends to this very list
            self._attempts.extend(self._attempt(row) for row in self._rows)
            self._rows.clear()
        return self._attempts

    @property
    def wall_time(self) -> float:
        """Seconds from start to end (to now while it runs)."""
        return (self.ended or time.time()) - self.started

    def workers(self) -> list[str]:
        """The workers that ran attempts, in order of their first attempt."""
        return list(dict.fromkeys(self.columns().workers))

    def columns(self) -> AttemptColumns:
        """The attempts as columns, without making an ``Attempt`` per row."""
        rows = self._rows
        if self._attempts:
            made = [_as_row(a) for a in self._attempts]
            rows = made + rows
        if not rows:
            return AttemptColumns((), (), (), (), (), (), (), (), ())
        keys, metas, workers, started, durations, errors, retried, tries = zip(*rows)
        known = self._tries
        return AttemptColumns(
            keys,
            [m.name for m in metas],
            [m.backend_name for m in metas],
            workers,
            started,
            durations,
            [t or known.get(k, 0) + 1 for k, t in zip(keys, tries)] if known else _ones(tries),
            errors,
            retried,
        )

    def _attempt(self, row: _Row) -> Attempt:
        key, meta, worker, started, duration, error, retried, tries = row
        tries = tries or self._tries.get(key, 0) + 1
        return Attempt(
            key, meta.name, meta.backend_name, worker, started, duration, tries, error, retried
        )


@final
class _Named(NamedTuple):
    """What a row needs of a node's metadata, for an ``Attempt`` made elsewhere."""

    name: str
    backend_name: str


def _as_row(a: Attempt) -> _Row:
    meta: Any = _Named(a.task, a.backend)
    return (a.key, meta, a.worker, a.started, a.duration, a.error, a.retried, a.attempt)


def _ones(tries: Sequence[int]) -> Sequence[int]:
    """Attempt numbers when nothing failed: every row's number is 1 (or its own)."""
    return [t or 1 for t in tries]


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
        # The latest run's rows and failure counts (the hooks append here).
        self._rows: list[_Row] = []
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
        self._rows, self._tries = run._rows, run._tries

    @hook_impl
    def after_node_execute(
        self, key: str, metadata: GraphMetadata, duration: float, started: float, worker: str
    ) -> None:
        """An attempt returned (the hook of every task: one tuple, nothing else)."""
        self._rows.append((key, metadata, worker, started, duration, None, False, 0))

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
        self._failed(key, metadata, worker, started, duration, _text(error), True)

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
        self._failed(key, metadata, worker, started, duration, _text(error), False)

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

    def _attempt_number(self, key: str) -> int:
        """The number of ``key``'s attempt running now (its failed attempts so far, plus one)."""
        return self._tries.get(key, 0) + 1

    def _failed(self, key: str, *fields: Any) -> None:
        """A failed attempt: ``metadata, worker, started, duration, error, retried``."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        meta, worker, started, duration, error, retried = fields
        self._rows.append((key, meta, worker, started, duration, error, retried, tries))

    def _close(self, root_id: UUID, error: str | None) -> None:
        run = self._open.pop(root_id, None)
        if run is None:
            return
        run.ended = time.time()
        run.error = error
        self.run_ended(run)


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
