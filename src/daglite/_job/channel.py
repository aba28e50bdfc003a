"""The channel home: how what a running task reports reaches the caller's engine.

Worker half (runs wherever a task runs):
    A running task's ``_NodeContext`` is what ``get_reporter()`` returns; its
    ``report()`` appends to a per-call buffer. The buffer travels home with the
    call's outcome, so a quick task costs no extra message. A task that runs
    longer than ``FLUSH_INTERVAL`` has its buffer sent home by the process's
    flusher thread (``_Flusher``), so progress events and the call's start
    arrive while it runs; the same thread sends a long job's finished outcomes
    ahead (``EarlyOutcome``).

Caller half:
    ``_Hub`` (``daglite._job.transport``) listens for worker processes and
    hands their messages to the engine of the evaluation they belong to.

    task.report()            flusher thread / result          engine thread
    [call buffer] ---------> _Home.send() --socket/queue--> run queue --> hooks, handlers

``_Home`` is the callable-carried way back: it is pickled inside every job, so
a custom backend that ships jobs to its own processes needs no extra code. A
backend with its own channel (Dask) supplies a ``Transport``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, final

from daglite._job import transport as _transport
from daglite._job.messages import Event, Events
from daglite._job.shared import SharedMemory
from daglite._job.transport import Transport
from daglite.plugins.reporters import (
    FLUSH_INTERVAL,
    Reporter,
    _check_event_type,
)

__all__ = ["Transport"]

logger = logging.getLogger("daglite.plugins")

# What crosses: ``Events`` or ``EarlyOutcome`` (``daglite._job.messages``).
_Message = Any
_Event = Event

# Guards a task's buffer against the flusher taking it at the same moment; one
# lock for all tasks, as a flush is rare and short.
_FLUSH_LOCK: Final = threading.Lock()


_NO_BUFFER: Final[deque[Any]] = deque(maxlen=0)


@final
class _NodeContext(Reporter):
    """Worker-side state of one running task; also its reporter."""

    __slots__ = (
        "_key",
        "closed",
        "direct",
        "elem",
        "events",
        "home",
        "name",
        "sent",
        "started",
        "token",
    )

    def __init__(self, home: _Home, token: int, direct: bool, name: str, key: str) -> None:
        self.home = home
        self.token = token
        self.name = name
        self._key = key
        # The element running now when this context serves a slice of a fan-out.
        self.elem = -1
        self.direct = direct
        # Direct (inline) tasks deliver each event at once and never buffer.
        self.events: deque[_Event] = _NO_BUFFER if direct else deque()
        self.sent = 0
        self.started = 0.0 if direct else time.monotonic()
        self.closed = False

    @property
    def key(self) -> str:
        """Key of the running node (of the running element, for a slice)."""
        return self._key if self.elem < 0 else f"{self._key}[{self.elem}]"

    def report(self, event_type: str, data: Mapping[str, Any] | None = None) -> None:
        _check_event_type(event_type)
        self.send_event(event_type, dict(data) if data else {})

    def send_event(self, event_type: str, data: dict[str, Any]) -> None:
        """Report an event of any type, daglite's own included (no checks)."""
        event = (event_type, data)
        if self.direct and self.events is _NO_BUFFER:
            if threading.get_ident() == self.home.engine_thread:
                # The task runs on the engine thread itself (inline): deliver now.
                self.sent += 1
                self.home.send(Events(self.token, [event]))
                return
            if not self._start_buffering():
                return  # the task is over: nobody waits for this event any more
        self.events.append(event)

    def _start_buffering(self) -> bool:
        """Buffer this task's events from now on, as a worker does.

        An inline task reports from another thread (a timeout's helper, a
        thread it started): from now on its events are buffered and flushed
        like a worker's, so they keep their order and none is lost.

        Returns:
            False if the context is closed already.
        """
        with _FLUSH_LOCK:
            if self.closed:
                return False
            if self.events is _NO_BUFFER:
                self.events = deque()
                self.started = time.monotonic()
                _flusher.add(self)
            return True

    def flush(self) -> None:
        """Send the buffered events home now (flusher thread, or before a hard exit)."""
        with _FLUSH_LOCK:
            events = _drain(self.events)
            if not events:
                return
            try:
                self.home.send(Events(self.token, events))
            except BaseException:
                # Not sent: keep them, in order, to travel with the result.
                self.events.extendleft(reversed(events))
                raise
            self.sent += len(events)

    def finish(self) -> tuple[list[_Event], int]:
        """Events still buffered (they travel with the result) and how many were sent."""
        if self.events is _NO_BUFFER:
            return [], self.sent
        with _FLUSH_LOCK:
            return (_drain(self.events) if self.events else []), self.sent

    def close(self) -> None:
        """Close the context: the task has returned or raised.

        Stops watching its buffer, and drops what a thread it left behind may
        report from now on.
        """
        with _FLUSH_LOCK:
            self.closed = True
        _flusher.remove(self)


def _drain(events: deque[_Event]) -> list[_Event]:
    out = []
    try:
        while True:
            out.append(events.popleft())
    except IndexError:
        return out


# -- worker-side flusher ------------------------------------------------------------


class _Flushable(Protocol):
    """What the flusher watches: a running task's events, or a running job's outcomes."""

    started: float

    def flush(self) -> None: ...


@final
class _Flusher:
    """One daemon thread per process that sends what long-running work holds home.

    Watched are running tasks (their buffered events) and running jobs (the
    outcomes of their finished calls).

    It sleeps on a condition while no task runs, and wakes every
    ``FLUSH_INTERVAL`` while some do. Registering a task is a plain dict store
    (atomic under the GIL); the lock is taken only to wake an idle flusher.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set[_Flushable] = set()
        self._idle = True
        self._thread: threading.Thread | None = None

    def add(self, ctx: _Flushable) -> None:
        self._running.add(ctx)
        # Stored before the check, and the flusher marks itself idle before it
        # re-checks the set: a wake-up cannot be lost.
        if self._idle:
            self._wake()

    def remove(self, ctx: _Flushable) -> None:
        self._running.discard(ctx)

    def forked(self) -> None:
        """In a forked child: the thread stayed in the parent, start afresh when needed."""
        self._cond = threading.Condition()
        self._running = set()
        self._idle = True
        self._thread = None

    def _wake(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="daglite-flusher", daemon=True
                )
                self._thread.start()
                # Ticking from now on: later adds need not wake it (it marks
                # itself idle again before it sleeps on the condition).
                self._idle = False
            self._cond.notify()

    def _loop(self) -> None:
        quiet_since = time.monotonic()
        while True:
            if not self._running and time.monotonic() - quiet_since > _FLUSHER_GRACE:
                with self._cond:
                    self._idle = True
                    while not self._running:
                        self._cond.wait()
                    self._idle = False
            time.sleep(FLUSH_INTERVAL)  # the batching window, not a synchronisation
            now = time.monotonic()
            running = tuple(self._running)
            if running:
                quiet_since = now
            for ctx in running:
                if now - ctx.started < FLUSH_INTERVAL:
                    continue
                try:
                    ctx.flush()
                except Exception:  # the channel is gone: the result path still works
                    logger.debug("could not flush events home", exc_info=True)


# The flusher keeps ticking this long after the last task ends before it sleeps
# on its condition: waking it for every short task would cost a thread switch each.
_FLUSHER_GRACE: Final = 1.0


_flusher: Final = _Flusher()
os.register_at_fork(after_in_child=_flusher.forked)


class _Home:
    """The way back to one evaluation's engine, carried by every job.

    In the caller's process ``send`` puts straight onto the engine's queue; a
    pickled copy (in a worker process) sends through its transport instead.
    """

    __slots__ = (
        "abort",
        "early",
        "engine_thread",
        "log_level",
        "pid",
        "run_id",
        "shared",
        "sink",
        "transport",
        "wants_start",
    )

    def __init__(
        self,
        run_id: str,
        sink: Callable[[_Message], None] | None,
        transport: Transport | None = None,
        log_level: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.sink = sink
        self.transport = transport
        # Worker processes log at the lowest level the caller listens to, so
        # records the caller would drop anyway are not shipped.
        self.log_level = _lowest_log_level() if log_level is None else log_level
        # Whether tasks should report their start (someone implements
        # before_node_execute); otherwise the start is implied by the result.
        self.wants_start = True
        self.pid = os.getpid()
        self.engine_thread = threading.get_ident()
        # Set by the engine when the run fails fast: in-process jobs skip what is left.
        self.abort = False
        # Which finished outcomes of a running job may go home early on the
        # channel (None: all). Set where the job runs, by a backend whose
        # channel must not carry big results (Dask keeps those on the cluster).
        self.early: Callable[[Any], bool] | None = None
        # Where large buffers of this run go between processes (None: the pipe).
        self.shared: SharedMemory | None = None

    def local(self) -> bool:
        """True when running in the process that owns the engine."""
        return self.sink is not None and self.pid == os.getpid()

    def on_engine_thread(self) -> bool:
        """True when running on the engine thread itself (inline backend)."""
        return self.local() and threading.get_ident() == self.engine_thread

    def send(self, message: _Message) -> None:
        if self.sink is not None and self.pid == os.getpid():
            self.sink(message)
        elif self.transport is not None:
            self.transport.send(self.run_id, message)

    def __reduce__(self) -> tuple[Any, ...]:
        transport = self.transport
        if transport is None:
            transport = self.transport = _transport._hub().transport()
            if self.sink is not None:
                _transport._hub().route(self.run_id, self.sink)
        args = (self.run_id, transport, self.log_level, self.wants_start, self.shared)
        return (_remote_home, args)

    def close(self) -> None:
        """Stop routing messages for this run (late ones are dropped)."""
        hub = _transport._HUB
        if hub is not None:
            hub.unroute(self.run_id)
        if self.transport is not None:
            self.transport.close()


def _lowest_log_level() -> int:
    """The lowest level any logger of this process is set to (root included)."""
    levels = [logging.getLogger().getEffectiveLevel()]
    for logger_ in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger_, logging.Logger) and logger_.level:
            levels.append(logger_.level)
    return min(levels)


def _remote_home(
    run_id: str,
    transport: Transport,
    log_level: int,
    wants_start: bool,
    shared: SharedMemory | None = None,
) -> _Home:
    home = _Home(run_id, None, transport, log_level)
    home.wants_start = wants_start
    home.shared = shared
    return home
