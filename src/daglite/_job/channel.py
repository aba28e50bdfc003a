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
    ``_Hub`` is a listener (a Unix socket, authenticated) that worker
    processes connect to; its reader threads hand messages to the engine of the
    evaluation they belong to (by run id).

    task.report()            flusher thread / result          engine thread
    [call buffer] ---------> _Home.send() --socket/queue--> run queue --> hooks, handlers

``_Home`` is the callable-carried way back: it is pickled inside every job, so
a custom backend that ships jobs to its own processes needs no extra code. A
backend with its own channel (Dask) supplies a ``Transport``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, Protocol, final

from daglite._job.messages import Event, Events
from daglite.plugins.reporters import (
    DROPPED_EVENT,
    FLUSH_INTERVAL,
    Reporter,
    _check_event_type,
)

__all__ = [
    "Transport",
    "dumps_events",
    "loads_events",
    "picklable_events",
]

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
        if type(message) is Events:
            message = _WireEvents(message.token, len(message.events), dumps_events(message.events))
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
                    if type(message) is _WireEvents:
                        events = loads_events(message.n_events, message.payload)
                        message = Events(message.token, events)
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


class _WireEvents(NamedTuple):
    """``Events`` on the socket: the events pickled apart from the envelope, so a
    caller that cannot unpickle them still knows how many were lost, and whose."""

    token: int
    n_events: int
    payload: bytes
