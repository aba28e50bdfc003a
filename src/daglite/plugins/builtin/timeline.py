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

import operator
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, final
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


# How a run keeps its attempts until they are read: one flat list, ``_STRIDE``
# items an attempt (key, metadata, worker, started, duration), and the failed
# ones' error, retried flag and attempt number on the side. The hook of every
# task then extends one list with a tuple that is freed at once: ~0.1 µs and
# no object that stays (an ``Attempt`` each cost ~0.6 µs, and the garbage
# collector ran a third more often: gh-19).
_STRIDE: Final = 5
_NAME: Final = operator.attrgetter("name")
_BACKEND: Final = operator.attrgetter("backend_name")


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

    __slots__ = (
        "_attempts",
        "_base",
        "_failures",
        "_flat",
        "_tries",
        "ended",
        "error",
        "graph",
        "root_id",
        "started",
    )

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
        # Attempts not made into ``Attempt`` objects yet (``_STRIDE`` items each),
        # the failed ones' (error, retried, attempt) by row, counting from ``_base``.
        self._flat: list[Any] = []
        self._failures: dict[int, tuple[str, bool, int]] = {}
        self._base = 0
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
        return len(self._attempts) + len(self._flat) // _STRIDE

    @property
    def attempts(self) -> list[Attempt]:
        """Every task attempt, in the order their hooks ran (append to add one)."""
        if self._flat:
            self._attempts.extend(map(Attempt, *self._pending()))
            self._base += len(self._flat) // _STRIDE
            self._flat.clear()  # in place: the plugin extends this very list
            self._failures.clear()
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
        pending = self._pending()
        if not self._attempts:
            return pending
        made = self._attempts
        return AttemptColumns(
            [a.key for a in made] + list(pending.keys),
            [a.task for a in made] + list(pending.tasks),
            [a.backend for a in made] + list(pending.backends),
            [a.worker for a in made] + list(pending.workers),
            [a.started for a in made] + list(pending.started),
            [a.duration for a in made] + list(pending.durations),
            [a.attempt for a in made] + list(pending.attempts),
            [a.error for a in made] + list(pending.errors),
            [a.retried for a in made] + list(pending.retried),
        )

    def _record(self, key: str, meta: GraphMetadata, worker: str, *times: float) -> None:
        """Add a failed attempt (after its ``_fail``); ``times``: its start and duration."""
        self._flat.extend((key, meta, worker, *times))

    def _fail(self, key: str, error: str, retried: bool) -> None:
        """The attempt about to be recorded for ``key`` failed."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        self._failures[self._base + len(self._flat) // _STRIDE] = (error, retried, tries)

    def _pending(self) -> AttemptColumns:
        """The attempts not made into objects yet, as columns (C-level slices of the list)."""
        flat = self._flat
        keys, metas = flat[0::_STRIDE], flat[1::_STRIDE]
        n = len(keys)
        tries = self._tries
        # A key's attempt that returned comes after all its failed ones.
        attempts = [tries.get(k, 0) + 1 for k in keys] if tries else [1] * n
        errors: list[str | None] = [None] * n
        retried = [False] * n
        for row, (error, was_retried, number) in self._failures.items():
            at = row - self._base
            errors[at], retried[at], attempts[at] = error, was_retried, number
        return AttemptColumns(
            keys,
            list(map(_NAME, metas)),
            list(map(_BACKEND, metas)),
            flat[2::_STRIDE],
            flat[3::_STRIDE],
            flat[4::_STRIDE],
            attempts,
            errors,
            retried,
        )


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
        # The latest run, its list of attempts and failure counts (hooks add there).
        self._run: RunTimeline | None = None
        self._flat: list[Any] = []
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
        self._run, self._flat, self._tries = run, run._flat, run._tries

    @hook_impl
    def after_node_execute(
        self, key: str, metadata: GraphMetadata, duration: float, started: float, worker: str
    ) -> None:
        """An attempt returned (the hook of every task: it extends one list, nothing else)."""
        self._flat.extend((key, metadata, worker, started, duration))

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
        if self._run is not None:
            self._run._fail(key, _text(error), True)
            self._run._record(key, metadata, worker, started, duration)

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
        if self._run is not None:
            self._run._fail(key, _text(error), False)
            self._run._record(key, metadata, worker, started, duration)

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

    def _close(self, root_id: UUID, error: str | None) -> None:
        run = self._open.pop(root_id, None)
        if run is None:
            return
        run.ended = time.time()
        run.error = error
        self.run_ended(run)


def _text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
