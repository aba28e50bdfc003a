"""What tasks and plugins see of the event system.

``get_reporter()`` returns the reporter of the task running in this context:
in a worker, the call's ``_NodeContext`` (``daglite._job.channel``), whose
events travel home through the channel; on the engine's own thread (the
inline lane), a ``_CallerContext``, whose events go straight to the engine.
``EventRegistry`` maps event types to the handlers plugins register, and the
reporter handed to hooks (``_CallerReporter``) dispatches to the same handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Final, Protocol, final

__all__ = ["EventRegistry", "Reporter", "get_reporter"]

logger = logging.getLogger("daglite.plugins")

# Buffered events of a task that runs longer than this are sent home while it
# runs; shorter tasks send theirs with the result (one message per job).
FLUSH_INTERVAL = 0.05
# daglite's own event types; a task cannot report these (``_check_event_type``).
_RESERVED_PREFIX: Final = "daglite."
START_EVENT: Final = "daglite.start"
DROPPED_EVENT: Final = "daglite.dropped"
LOG_EVENT: Final = "daglite.log"

_Event = tuple[str, dict[str, Any]]
_Message = tuple[Any, ...]


class Reporter:
    """Sends events to the caller's event handlers."""

    __slots__ = ()

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        """Send ``{**data, "type": event_type}`` to the handlers of ``event_type``."""
        raise NotImplementedError


@final
class _NullReporter(Reporter):
    """What ``get_reporter()`` returns outside a running task: events go nowhere."""

    __slots__ = ()

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        _check_event_type(event_type)


_NULL_REPORTER: Final = _NullReporter()


def _check_event_type(event_type: object) -> None:
    if not isinstance(event_type, str) or not event_type:
        raise TypeError(f"event_type must be a non-empty string, got {event_type!r}")
    if event_type.startswith(_RESERVED_PREFIX):
        raise ValueError(
            f"event types starting with {_RESERVED_PREFIX!r} are daglite's own, got {event_type!r}"
        )


# ``_CallerContext.events`` once its task has returned.
_CLOSED: Final[list[Any]] = []


class _CallerRun(Protocol):
    """What a ``_CallerContext`` needs of the evaluation running its task."""

    def key_of(self, node: int, elem: int) -> str: ...

    def caller_event(self, ctx: _CallerContext, event_type: str, data: dict[str, Any]) -> None: ...


@final
class _CallerContext(Reporter):
    """Context of a task the engine runs on its own thread (the inline lane).

    Nothing to send: each event goes straight to the engine, which dispatches
    it at once; events from other threads wait in ``events`` until the task
    returns. The key is looked up only if asked for (a log record, an event).
    """

    __slots__ = ("elem", "events", "name", "node", "run")

    @property
    def direct(self) -> bool:
        """Always true: the task runs in the engine's process."""
        return True

    def __init__(self, run: _CallerRun, name: str, node: int, elem: int) -> None:
        self.run = run
        self.name = name
        self.node = node
        self.elem = elem
        # Events reported from other threads, and all after the first of
        # those: they are delivered, in order, when the task returns.
        self.events: list[_Event] | None = None

    @property
    def key(self) -> str:
        """Key of the running node."""
        return self.run.key_of(self.node, self.elem)

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        _check_event_type(event_type)
        self.run.caller_event(self, event_type, dict(data) if data else {})


class _TaskContext(Protocol):
    """What runs a task in this context: its name, key and reporter."""

    name: str

    @property
    def direct(self) -> bool: ...

    @property
    def key(self) -> str: ...

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None: ...


_current: ContextVar[_TaskContext | None] = ContextVar("daglite_current_node", default=None)


def get_reporter() -> Reporter:
    """The reporter of the task running in this context.

    Outside a running task it returns a reporter that discards events, so task
    functions can still be called directly (``my_task.func(...)``).
    """
    current = _current.get()
    return _NULL_REPORTER if current is None else current  # type: ignore[return-value]


# -- caller-side registry -----------------------------------------------------------


@final
class EventRegistry:
    """Event handlers of one evaluation, filled by plugins' ``register_event_handlers``.

    ``on(event_type, handler)`` subscribes to one event type; ``on_any(handler)``
    to every event a task or a hook reports (a trace file records them all).
    Either turns the bulk path of fan-outs off for the evaluation (each element
    is a call of its own, so its events find their key).
    """

    __slots__ = ("_any", "_handlers")

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}
        # Handlers of every event type; empty unless someone subscribed to all,
        # and then the only cost ``handlers`` adds is this list's truth test.
        self._any: list[Callable[[dict[str, Any]], Any]] = []

    def on(self, event_type: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(event)`` in the caller's process for each ``event_type`` event.

        The event dict holds the reported data plus ``"type"`` (and ``"key"`` of
        the reporting task, when a task reported it).
        """
        _check_event_type(event_type)
        if not callable(handler):
            raise TypeError(f"handler for {event_type!r} must be callable, got {handler!r}")
        self._handlers.setdefault(event_type, []).append(handler)

    def on_any(self, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(event)`` in the caller's process for every reported event.

        The event dict is the same as for ``on``; ``event["type"]`` tells the
        types apart. daglite's own messages (``daglite.*``) are not events and
        never reach it. It runs after the handlers of the event's own type.
        """
        if not callable(handler):
            raise TypeError(f"handler for every event type must be callable, got {handler!r}")
        self._any.append(handler)

    def handlers(self, event_type: str) -> list[Callable[[dict[str, Any]], Any]]:
        """The handlers of an ``event_type`` event: its own, then those of every type."""
        own = self._handlers.get(event_type, [])
        return [*own, *self._any] if self._any else own

    def __bool__(self) -> bool:
        return bool(self._handlers or self._any)


@final
class _CallerReporter(Reporter):
    """The reporter handed to hooks: dispatches in the caller right away."""

    __slots__ = ("_dispatch",)

    def __init__(self, dispatch: Callable[[str, dict[str, Any], str | None], None]) -> None:
        self._dispatch = dispatch

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        _check_event_type(event_type)
        self._dispatch(event_type, dict(data) if data else {}, None)


Reporter.__module__ = "daglite.plugins.reporters"
