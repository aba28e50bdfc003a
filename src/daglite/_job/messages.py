"""The messages a worker sends home while its job runs, in the engine's own terms.

Both cross the channel (``daglite._job.channel``) from any worker to the
engine of the evaluation they belong to, which orders them per call
(``daglite._run.inbox``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["EarlyOutcome", "Event", "Events"]

# One reported event: its type and its data.
Event = tuple[str, dict[str, Any]]


class Events(NamedTuple):
    """Events of the running call ``token``, in the order it reported them."""

    token: int
    events: list[Event]


class EarlyOutcome(NamedTuple):
    """A call of a job that is still running finished: its ``Outcome``, sent ahead."""

    outcome: Any
