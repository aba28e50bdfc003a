"""The messages a worker sends home while its job runs, and how events pickle.

Both cross the channel (``daglite._job.channel``) from any worker to the
engine of the evaluation they belong to, which orders them per call
(``daglite._run.inbox``).
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

from daglite.plugins.reporters import DROPPED_EVENT

__all__ = [
    "EarlyOutcome",
    "Event",
    "Events",
    "dumps_events",
    "loads_events",
    "picklable_events",
]

# One reported event: its type and its data.
Event = tuple[str, dict[str, Any]]


class Events(NamedTuple):
    """Events of the running call ``token``, in the order it reported them."""

    token: int
    events: list[Event]


class EarlyOutcome(NamedTuple):
    """A call of a job that is still running finished: its ``Outcome``, sent ahead."""

    outcome: Any


class _WireEvents(NamedTuple):
    """``Events`` on the socket, with the events pickled apart from the envelope.

    A caller that cannot unpickle the events still knows how many were lost,
    and whose.
    """

    token: int
    n_events: int
    payload: bytes


def dumps_events(events: list[Event]) -> bytes:
    """Pickle events; an event that cannot be pickled becomes a 'dropped' marker."""
    try:
        return pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps(picklable_events(events), protocol=pickle.HIGHEST_PROTOCOL)


def loads_events(count: int, payload: bytes) -> list[Event]:
    """Unpickle events; if that fails, ``count`` 'dropped' markers keep the tally right."""
    try:
        events: list[Event] = pickle.loads(payload)
        return events
    except Exception as exc:
        reason = f"could not be unpickled in the caller: {exc!r}"
        return [(DROPPED_EVENT, {"event_type": "?", "reason": reason})] * count


def picklable_events(events: list[Event]) -> list[Event]:
    """``events`` with each unpicklable one replaced by a 'dropped' marker."""
    kept: list[Event] = []
    for event_type, data in events:
        try:
            pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
            kept.append((event_type, data))
        except Exception as exc:
            kept.append((DROPPED_EVENT, {"event_type": event_type, "reason": repr(exc)}))
    return kept
