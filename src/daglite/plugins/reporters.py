"""The event channel between tasks and the caller's plugins.

Worker half (runs wherever a task runs):
    ``get_reporter()`` returns the running node's ``_NodeContext``; its
    ``report()`` appends to a per-node buffer. The buffer travels home with the
    task's result, so a quick task costs no extra message. A task that runs
    longer than ``FLUSH_INTERVAL`` has its buffer sent home by the process's
    flusher thread, so progress events and the node's start arrive while it runs.
    (A task the engine runs on its own thread, inline, gets a ``_CallerContext``
    instead, whose events go straight to the engine.)

Caller half:
    ``EventRegistry`` maps event types to handlers. ``_Hub`` is a listener
    (a Unix socket, authenticated) that worker processes connect to; its reader
    threads hand messages to the engine of the evaluation they belong to. The
    engine thread is the one coordinator that turns messages into hook and
    handler calls, so plugins never see two calls at once.

    task.report()            flusher thread / result          engine thread
    [node buffer] ---------> _Home.send() --socket/queue--> run queue --> hooks, handlers

``_Home`` is the callable-carried way back: it is pickled inside every job, so a
custom backend that ships jobs to its own processes needs no extra code.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, Final, Protocol, final

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
                self.home.send(("events", self.token, [event]))
                return
            if not self._start_buffering():
                return  # the task is over: nobody waits for this event any more
        self.events.append(event)

    def _start_buffering(self) -> bool:
        """An inline task reports from another thread (a timeout's helper, a
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
                self.home.send(("events", self.token, events))
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
        """The task has returned or raised: stop watching its buffer, and drop
        what a thread it left behind may report from now on."""
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

    direct: ClassVar[bool] = True

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


_current: ContextVar[_NodeContext | _CallerContext | None] = ContextVar(
    "daglite_current_node", default=None
)


def get_reporter() -> Reporter:
    """The reporter of the task running in this context.

    Outside a running task it returns a reporter that discards events, so task
    functions can still be called directly (``my_task.func(...)``).
    """
    return _current.get() or _NULL_REPORTER


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
        self._running: dict[int, _Flushable] = {}
        self._idle = True
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, ctx: _Flushable) -> None:
        self._running[id(ctx)] = ctx
        # Stored before the check, and the flusher marks itself idle before it
        # re-checks the dict: a wake-up cannot be lost.
        if self._idle or self._pid != os.getpid():
            self._wake()

    def remove(self, ctx: _Flushable) -> None:
        self._running.pop(id(ctx), None)

    def _wake(self) -> None:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="daglite-flusher", daemon=True
                )
                self._thread.start()
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
            running = tuple(self._running.values())
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


# -- the way home -------------------------------------------------------------------


def dumps_events(events: list[_Event]) -> bytes:
    """Pickle events; an event that cannot be pickled becomes a 'dropped' marker."""
    try:
        return pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps(picklable_events(events), protocol=pickle.HIGHEST_PROTOCOL)


def loads_events(count: int, payload: bytes) -> list[_Event]:
    """Unpickle events; if that fails, ``count`` 'dropped' markers keep the tally right."""
    try:
        events: list[_Event] = pickle.loads(payload)
        return events
    except Exception as exc:
        reason = f"could not be unpickled in the caller: {exc!r}"
        return [(DROPPED_EVENT, {"event_type": "?", "reason": reason})] * count


def picklable_events(events: list[_Event]) -> list[_Event]:
    """``events`` with each unpicklable one replaced by a 'dropped' marker."""
    kept: list[_Event] = []
    for event_type, data in events:
        try:
            pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
            kept.append((event_type, data))
        except Exception as exc:
            kept.append((DROPPED_EVENT, {"event_type": event_type, "reason": repr(exc)}))
    return kept


class Transport:
    """How a worker process sends messages to the caller (picklable).

    The default is the caller's ``_Hub`` socket; a backend with its own
    worker-to-client channel (Dask) supplies another.
    """

    def send(self, run_id: str, message: _Message) -> None:
        """Deliver ``message`` to the evaluation ``run_id`` in the caller."""
        raise NotImplementedError

    def close(self) -> None:
        """Called in the caller when the evaluation ends; release subscriptions."""


@final
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
            transport = self.transport = _hub().transport()
            if self.sink is not None:
                _hub().route(self.run_id, self.sink)
        return (_remote_home, (self.run_id, transport, self.log_level, self.wants_start))

    def close(self) -> None:
        """Stop routing messages for this run (late ones are dropped)."""
        if _HUB is not None:
            _HUB.unroute(self.run_id)
        if self.transport is not None:
            self.transport.close()


def _lowest_log_level() -> int:
    """The lowest level any logger of this process is set to (root included)."""
    levels = [logging.getLogger().getEffectiveLevel()]
    for logger_ in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger_, logging.Logger) and logger_.level:
            levels.append(logger_.level)
    return min(levels)


def _remote_home(run_id: str, transport: Transport, log_level: int, wants_start: bool) -> _Home:
    home = _Home(run_id, None, transport, log_level)
    home.wants_start = wants_start
    return home


# -- caller-side hub ----------------------------------------------------------------


@final
class _SocketTransport(Transport):
    """Sends to the caller's hub over one cached connection per worker process."""

    __slots__ = ("address", "authkey")

    def __init__(self, address: Any, authkey: bytes) -> None:
        self.address = address
        self.authkey = authkey

    def send(self, run_id: str, message: _Message) -> None:
        if message[0] == "events":
            # Envelope and events pickled apart: if the caller cannot unpickle the
            # events, it still knows how many were lost, for whom.
            events = dumps_events(message[2])
            message = ("events", message[1], len(message[2]), events)
        data = pickle.dumps((run_id, message), protocol=pickle.HIGHEST_PROTOCOL)
        conn, lock = _connection(self.address, self.authkey)
        with lock:
            conn.send_bytes(data)


_connections: dict[Any, tuple[int, Any, threading.Lock]] = {}
_connections_lock = threading.Lock()


def _connection(address: Any, authkey: bytes) -> tuple[Any, threading.Lock]:
    from multiprocessing.connection import Client

    key = (str(address), authkey)
    entry = _connections.get(key)
    if entry is None or entry[0] != os.getpid():
        with _connections_lock:
            entry = _connections.get(key)
            if entry is None or entry[0] != os.getpid():
                entry = (os.getpid(), Client(address, authkey=authkey), threading.Lock())
                _connections[key] = entry
    return entry[1], entry[2]


@final
class _Hub:
    """Listens for worker processes of this process's evaluations.

    One accept thread, and one reader thread per connected worker process, each
    blocked on its socket (no polling). Messages are routed by run id.
    """

    def __init__(self) -> None:
        from multiprocessing.connection import Listener

        self._authkey = os.urandom(32)
        family = "AF_UNIX" if hasattr(__import__("socket"), "AF_UNIX") else "AF_INET"
        self._listener = Listener(family=family, authkey=self._authkey, backlog=128)
        self._routes: dict[str, Callable[[_Message], None]] = {}
        self._lock = threading.Lock()
        self.pid = os.getpid()
        threading.Thread(target=self._accept_loop, name="daglite-hub", daemon=True).start()

    def transport(self) -> _SocketTransport:
        return _SocketTransport(self._listener.address, self._authkey)

    def route(self, run_id: str, sink: Callable[[_Message], None]) -> None:
        with self._lock:
            self._routes[run_id] = sink

    def unroute(self, run_id: str) -> None:
        with self._lock:
            self._routes.pop(run_id, None)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except Exception:  # a client failed the handshake; keep listening
                logger.debug("hub: rejected a connection", exc_info=True)
                continue
            threading.Thread(
                target=self._read_loop, args=(conn,), name="daglite-hub-reader", daemon=True
            ).start()

    def _read_loop(self, conn: Any) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    run_id, message = pickle.loads(data)
                    if message[0] == "events":
                        message = ("events", message[1], loads_events(message[2], message[3]))
                except Exception:
                    logger.warning(
                        "hub: dropped a message that could not be unpickled", exc_info=True
                    )
                    continue
                sink = self._routes.get(run_id)
                if sink is not None:
                    sink(message)


_HUB: _Hub | None = None
_HUB_LOCK = threading.Lock()


def _hub() -> _Hub:
    global _HUB
    hub = _HUB
    if hub is None or hub.pid != os.getpid():  # none yet, or inherited through fork
        with _HUB_LOCK:
            if _HUB is None or _HUB.pid != os.getpid():
                _HUB = _Hub()
            hub = _HUB
    return hub


# -- caller-side registry -----------------------------------------------------------


@final
class EventRegistry:
    """Event handlers of one evaluation, filled by plugins' ``register_event_handlers``."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[dict[str, Any]], Any]]] = {}

    def on(self, event_type: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``handler(event)`` in the caller's process for each ``event_type`` event.

        The event dict holds the reported data plus ``"type"`` (and ``"key"`` of
        the reporting task, when a task reported it).
        """
        _check_event_type(event_type)
        if not callable(handler):
            raise TypeError(f"handler for {event_type!r} must be callable, got {handler!r}")
        self._handlers.setdefault(event_type, []).append(handler)

    def handlers(self, event_type: str) -> list[Callable[[dict[str, Any]], Any]]:
        return self._handlers.get(event_type, [])

    def __bool__(self) -> bool:
        return bool(self._handlers)


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
