"""A trace file of each evaluation, in the Chrome trace event format.

``TracePlugin(path)`` records the run like ``TimelinePlugin`` and, when the
evaluation ends (successfully or not), writes ``path``: a JSON object with
``traceEvents`` that Perfetto (https://ui.perfetto.dev) and ``chrome://tracing``
open. The layout:

- one process per backend (``M`` ``process_name`` event: the backend's name)
  and one thread per worker within it (``thread_name``: ``pid 1234``, a
  thread's name, a Dask worker's address, ``caller``, ``cache``, ``worker
  lost``); process 0, ``daglite``, holds the evaluation itself;
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
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from daglite.plugins.builtin._files import checked_path, write_atomically
from daglite.plugins.builtin.timeline import RunTimeline, TimelinePlugin
from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from uuid import UUID

    from daglite.plugins.reporters import EventRegistry

__all__ = ["TracePlugin", "trace_plugin"]

_US: Final = 1e6  # trace time stamps are microseconds
_CALLER: Final = (0, 0)  # the track of the evaluation and of events without a task
_CACHE: Final = "cache"  # the worker of a result a cache plugin supplied (``Attempt.cached``)
# One attempt's complete event, as text: its name and track (one prefix per
# task and worker) then its times and args. For a 10,000-task run this takes
# ~10 ms, against ~50 ms for dicts passed to json.dumps.
_PREFIX: Final = '{"name":%s,"cat":"task","ph":"X","pid":%d,"tid":%d,"ts":'
_REST: Final = '%.3f,"dur":%.3f,"args":{"key":%s,"attempt":%d,"error":%s}}'


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
    rewrites ``path`` after each; ``runs`` keeps their timelines (without the
    DAG's description, which the trace does not show: ``graph`` is None).

    Args:
        path: The file to write (overwritten); its directory must exist.
        events: Also record the events tasks report, as instant events. This
            subscribes to every event type, which turns the bulk path of
            ``product``/``zip``/``map`` fan-outs off (each element becomes a call
            of its own, as with any event handler); ``events=False`` keeps it.

    Attributes:
        path: The trace file's path.
        events: Whether reported events are recorded.

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        ValueError: If ``path`` is empty, a directory, or in a missing directory.
    """

    def __init__(self, path: str | os.PathLike[str], *, events: bool = True) -> None:
        super().__init__()
        self.path: Path = checked_path(path, "path")
        self.events = events
        self._marks: list[_Mark] = []

    def register_event_handlers(self, registry: EventRegistry) -> None:
        """Subscribe to every event type (unless ``events=False``)."""
        if self.events:
            registry.on_any(self._on_event)

    # Without ``graph`` on purpose: the engine describes the DAG only for
    # implementations that name it, and the trace does not show it.
    @hook_impl
    def before_graph_execute(self, root_id: UUID) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        """An evaluation starts: a new trace (the DAG's description is not asked for)."""
        super().before_graph_execute(root_id, None)
        self._marks = []

    def run_ended(self, run: RunTimeline) -> None:
        """Write the trace of ``run`` to ``path``."""
        marks, self._marks = self._marks, []
        write_atomically(self.path, _document(run, marks))

    def _on_event(self, event: dict[str, Any]) -> None:
        key = event.get("key")
        # The attempt running now is the one after those whose hooks have run.
        attempt = self._attempt_number(key) if key is not None else 0
        self._marks.append(_Mark(time.time(), key, attempt, event))


def trace_plugin(trace: object, name: str = "trace") -> TracePlugin:
    """A ``TracePlugin`` for ``trace``, with errors that name the ``name`` parameter.

    Raises:
        TypeError: If ``trace`` is not a ``str`` or ``os.PathLike``.
        ValueError: If it is empty, a directory, or in a missing directory.
    """
    return TracePlugin(checked_path(trace, name))


def _document(run: RunTimeline, marks: list[_Mark]) -> str:
    """The trace file's text for ``run`` and the events received during it."""
    tracks = _Tracks()
    events = [_evaluation(run, run.started), *_instants(run, marks, tracks, run.started)]
    bars = _bars(run, tracks)
    dumped = [_dump(e) for e in events]
    other = json.dumps({"root_id": str(run.root_id), "error": run.error}, separators=(",", ":"))
    head = [json.dumps(e, separators=(",", ":")) for e in tracks.metadata()]
    return (
        '{"traceEvents":['
        + ",".join(head + dumped + bars)
        + '],"displayTimeUnit":"ms","otherData":'
        + other
        + "}"
    )


def _dump(event: dict[str, Any]) -> str:
    """``event`` as JSON; what JSON cannot hold in its ``args`` becomes its ``repr``."""
    try:
        return json.dumps(event, separators=(",", ":"), default=repr, allow_nan=False)
    except (TypeError, ValueError):  # keys that are not strings, NaN, a cycle
        args = {str(k): v if isinstance(v, str) else repr(v) for k, v in event["args"].items()}
        return json.dumps({**event, "args": args}, separators=(",", ":"))


def _bars(run: RunTimeline, tracks: _Tracks) -> list[str]:
    """The complete event of every attempt, as JSON text.

    Read from the run's columns (no object per attempt). An attempt that never
    started (its worker died first) sits at the run's end.
    """
    origin, end = run.started, run.ended or time.time()
    columns = run.columns()
    prefixes: dict[tuple[str, str, str], str] = {}
    out = []
    rows = zip(
        columns.keys,
        columns.tasks,
        columns.backends,
        columns.workers,
        columns.started,
        columns.durations,
        columns.attempts,
        columns.errors,
        columns.retried,
    )
    for key, task, backend, worker, started, duration, attempt, error, retried in rows:
        prefix = prefixes.get((task, backend, worker))
        if prefix is None:
            track = tracks.of(backend, worker)
            prefix = prefixes[(task, backend, worker)] = _PREFIX % (_quote(task), *track)
        text = "null" if error is None else _quote(error)
        if retried:
            text += ',"retried":true'
        elif worker == _CACHE:
            text += ',"cached":true'
        ts = max((started or end) - origin, 0.0) * _US
        out.append(prefix + _REST % (ts, duration * _US, _quote(key), attempt, text))
    return out


def _instants(
    run: RunTimeline, marks: list[_Mark], tracks: _Tracks, origin: float
) -> list[dict[str, Any]]:
    """The instant events of ``marks``, each inside the bar of its attempt."""
    if not marks:
        return []
    columns = run.columns()
    rows = zip(
        columns.keys,
        columns.attempts,
        columns.backends,
        columns.workers,
        columns.started,
        columns.durations,
    )
    bars = {
        (key, attempt): (tracks.of(backend, worker), _us(started - origin), _us(duration))
        for key, attempt, backend, worker, started, duration in rows
        if started
    }
    return [_instant(mark, bars, origin) for mark in marks]


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
            out.append(_meta("thread_name", pid, tid, worker or "worker lost"))
            out.append(_meta("thread_sort_index", pid, tid, tid))
        return out


def _meta(name: str, pid: int, tid: int, value: str | int) -> dict[str, Any]:
    arg = "sort_index" if name.endswith("sort_index") else "name"
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {arg: value}}


def _us(seconds: float) -> float:
    return round(max(seconds, 0.0) * _US, 3)


def _evaluation(run: RunTimeline, origin: float) -> dict[str, Any]:
    return {
        "name": "evaluate",
        "cat": "evaluation",
        "ph": "X",
        "pid": _CALLER[0],
        "tid": _CALLER[1],
        "ts": _us(run.started - origin),
        "dur": _us(run.ended - run.started),
        "args": {"root_id": str(run.root_id), "error": run.error},
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
