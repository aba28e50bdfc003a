"""How messages from worker processes reach the caller: transports and the hub.

``Transport`` is what a worker process sends through; the default is the
caller's ``_Hub``, a listener (a Unix socket, authenticated) that worker
processes connect to. Its reader threads hand each message to the engine of
the evaluation it belongs to (by run id). A backend whose workers cannot reach
the caller's socket (Dask on a remote cluster) supplies its own ``Transport``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any, final

from daglite._job.messages import Events, _WireEvents, dumps_events, loads_events

__all__ = ["Transport"]

logger = logging.getLogger("daglite.plugins")

_Message = Any


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
