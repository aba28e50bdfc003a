"""A trace file of each evaluation, in the Chrome trace event format.

``TracePlugin(path)`` records the run like ``TimelinePlugin`` and, when the
evaluation ends (successfully or not), writes ``path``: a JSON object with
``traceEvents`` that Perfetto (https://ui.perfetto.dev) and ``chrome://tracing``
open. The layout:

- one process per backend (``M`` ``process_name`` event: the backend's name)
  and one thread per worker within it (``thread_name``: ``pid 1234``, a
  thread's name, a Dask worker's address, ``caller``, ``cache``); process 0,
  ``daglite``, holds the evaluation itself;
- one complete event (``"ph": "X"``, category ``task``) per task attempt, on
  its worker's track, ``ts``/``dur`` in microseconds from the run's start, with
  the key, attempt number and error in ``args``; one ``evaluate`` event
  (category ``evaluation``) spans the whole run;
- one instant event (``"ph": "i"``, category ``event``) per event a task
  reported (``get_reporter().report``), on the track of the attempt that
  reported it, with the event's data in ``args``.

Events carry no time stamp of their own: an event is placed when the caller
received it, moved into the bar of the attempt that reported it (a short task's
events travel home with its result, so they sit at the bar's end).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final

from daglite.plugins.builtin.timeline import Attempt, RunTimeline, TimelinePlugin

if TYPE_CHECKING:
    from daglite.plugins.reporters import EventRegistry

__all__ = ["TracePlugin"]

_US: Final = 1e6  # trace time stamps are microseconds
_CALLER: Final = (0, 0)  # the track of the evaluation and of events without a task


@final
@dataclass(slots=True)
class _Mark:
    """An event as the caller received it."""

    received: float
    key: str | None
    attempt: int
    event: dict[str, Any]


class TracePlugin(TimelinePlugin):
    """Writes a Chrome trace file (Perfetto, ``chrome://tracing``) of each evaluation.

    ``evaluate(dag, trace="run.json")`` and ``daglite run ... --trace run.json``
    add one for a single evaluation. An instance used for several evaluations
    rewrites ``path`` after each; ``runs`` keeps their timelines.

    Args:
        path: The file to write (overwritten).
        events: Also record the events tasks report, as instant events. This
            subscribes to every event type, which turns the bulk path of
            ``product``/``zip``/``map`` fan-outs off (each element becomes a call
            of its own, as with any event handler); ``events=False`` keeps it.
    """

    def __init__(self, path: str | os.PathLike[str], *, events: bool = True) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.events = events
        self._marks: list[_Mark] = []

    def register_event_handlers(self, registry: EventRegistry) -> None:
        """Subscribe to every event type (unless ``events=False``)."""
        if self.events:
            registry.on_any(self._on_event)

    def run_ended(self, run: RunTimeline) -> None:
        """Write the trace of ``run`` to ``path``."""
        marks, self._marks = self._marks, []
        text = json.dumps(_chrome_trace(run, marks), separators=(",", ":"), default=repr)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def _on_event(self, event: dict[str, Any]) -> None:
        key = event.get("key")
        # The attempt running now is the one after those whose hooks have run.
        attempt = self._tries.get(key, 0) + 1 if key is not None else 0
        self._marks.append(_Mark(time.time(), key, attempt, event))


def _chrome_trace(run: RunTimeline, marks: list[_Mark] | None = None) -> dict[str, Any]:
    """The Chrome trace document (``traceEvents`` and friends) of ``run``.

    Args:
        run: The evaluation's timeline.
        marks: Events the caller received during it, in order.

    Returns:
        A JSON-ready dict (event data that JSON cannot hold is left for the writer).
    """
    origin = min([run.started, *(a.started for a in run.attempts if a.started)])
    end = run.ended or time.time()
    tracks = _Tracks()
    events: list[dict[str, Any]] = [_evaluation(run, origin, end)]
    bars: dict[tuple[str, int], tuple[tuple[int, int], float, float]] = {}
    for attempt in run.attempts:
        track = tracks.of(attempt.backend, attempt.worker)
        event = _bar(attempt, track, origin, end)
        events.append(event)
        bars[(attempt.key, attempt.attempt)] = (track, event["ts"], event["dur"])
    events.extend(_instant(mark, bars, origin) for mark in marks or ())
    return {
        "traceEvents": tracks.metadata() + events,
        "displayTimeUnit": "ms",
        "otherData": {"root_id": str(run.root_id), "error": run.error},
    }


@final
class _Tracks:
    """A process per backend and a thread per worker, numbered in order of appearance."""

    __slots__ = ("_backends", "_workers")

    def __init__(self) -> None:
        self._backends: dict[str, int] = {}
        self._workers: dict[tuple[str, str], tuple[int, int]] = {}

    def of(self, backend: str, worker: str) -> tuple[int, int]:
        """The (pid, tid) of ``worker`` of ``backend``."""
        track = self._workers.get((backend, worker))
        if track is None:
            pid = self._backends.setdefault(backend, len(self._backends) + 1)
            track = self._workers[(backend, worker)] = (pid, len(self._workers) + 1)
        return track

    def metadata(self) -> list[dict[str, Any]]:
        """``M`` events naming every process and thread, in order of appearance."""
        out = [_meta("process_name", *_CALLER, "daglite"), _meta("thread_name", *_CALLER, "run")]
        for backend, pid in self._backends.items():
            out.append(_meta("process_name", pid, 0, backend))
        for (_, worker), (pid, tid) in self._workers.items():
            out.append(_meta("thread_name", pid, tid, worker or "not started"))
            out.append(_meta("thread_sort_index", pid, tid, tid))
        return out


def _meta(name: str, pid: int, tid: int, value: str | int) -> dict[str, Any]:
    arg = "sort_index" if name.endswith("sort_index") else "name"
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {arg: value}}


def _us(seconds: float) -> float:
    return round(max(seconds, 0.0) * _US, 3)


def _evaluation(run: RunTimeline, origin: float, end: float) -> dict[str, Any]:
    return {
        "name": "evaluate",
        "cat": "evaluation",
        "ph": "X",
        "pid": _CALLER[0],
        "tid": _CALLER[1],
        "ts": _us(run.started - origin),
        "dur": _us(end - run.started),
        "args": {"root_id": str(run.root_id), "error": run.error},
    }


def _bar(attempt: Attempt, track: tuple[int, int], origin: float, end: float) -> dict[str, Any]:
    """The complete event of one attempt (one that never started sits at the run's end)."""
    started = attempt.started or end
    args: dict[str, Any] = {"key": attempt.key, "attempt": attempt.attempt, "error": attempt.error}
    if attempt.retried:
        args["retried"] = True
    if attempt.cached:
        args["cached"] = True
    return {
        "name": attempt.task,
        "cat": "task",
        "ph": "X",
        "pid": track[0],
        "tid": track[1],
        "ts": _us(started - origin),
        "dur": _us(attempt.duration),
        "args": args,
    }


def _instant(
    mark: _Mark, bars: dict[tuple[str, int], tuple[tuple[int, int], float, float]], origin: float
) -> dict[str, Any]:
    """The instant event of ``mark``, inside its attempt's bar when there is one."""
    ts = _us(mark.received - origin)
    bar = bars.get((mark.key, mark.attempt)) if mark.key is not None else None
    if bar is None:
        track, scope = _CALLER, "g" if mark.key is None else "t"
    else:
        track, scope = bar[0], "t"
        ts = min(max(ts, bar[1]), bar[1] + bar[2])
    return {
        "name": str(mark.event.get("type")),
        "cat": "event",
        "ph": "i",
        "s": scope,
        "pid": track[0],
        "tid": track[1],
        "ts": ts,
        "args": mark.event,
    }
