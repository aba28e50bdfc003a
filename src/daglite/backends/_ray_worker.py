"""What runs in Ray workers for the ray backend, and what travels there and back.

A daglite job runs in a Ray worker as ``_run_job``: it swaps the values Ray
handed it in for the ``RemoteResult`` stand-ins among its arguments, runs the
calls, and returns two values: the outcomes the caller fetches (big results
replaced by stand-ins) and the big results by token, which stay in Ray's
object store. ``_RayWorker`` is what the job's calls do on a timeout: ask the
caller, through the channel home (``_RayTransport``: the hub socket or the
``_Relay`` actor), to kill this worker with ``ray.cancel(force=True)``.

Imported by ``daglite.backends.ray`` (the caller's side) and by Ray workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final, NamedTuple, NoReturn, final

from daglite._job.records import Outcome, Outcomes
from daglite._job.transport import Transport
from daglite.exceptions import BackendError, ResultNotPicklableError
from daglite.graph.walk import replace

logger = logging.getLogger("daglite.backends.ray")

_INSTALL_HINT: Final = (
    "the 'ray' backend needs the 'ray' package; install it with `pip install daglite[ray]`"
)
_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
# Seconds a worker whose call timed out waits for the caller to kill it
# (``ray.cancel(force=True)``) before it ends itself. Only reached when the
# caller is gone or unreachable; the job then reads as a lost worker.
_OVERDUE_GRACE: Final = 60.0


def _import_ray() -> Any:
    """The ``ray`` module, or ``BackendError`` with the install hint."""
    try:
        import ray
    except ImportError:
        raise BackendError(_INSTALL_HINT) from None
    return ray


# -- stand-ins for results kept in the object store -----------------------------------------


@final
class RemoteResult:
    """A task result that stayed in Ray's object store because it is large.

    Hooks (``after_node_execute``'s ``result``) and ``EvaluationError.results``
    see this stand-in for results over the backend's ``remote_threshold``;
    downstream tasks and ``evaluate``'s return value get the real value.

    Attributes:
        key: Key of the Ray task (daglite job) that produced the value.
        token: Which call of that job produced it.
        nbytes: The value's estimated size in bytes.
        type_name: The value's type, ``module.qualname``.
    """

    __slots__ = ("__weakref__", "_ref", "key", "nbytes", "token", "type_name")
    __module__ = "daglite.backends.ray"  # its public home (re-exported there)

    def __init__(self, key: str, token: int, nbytes: int, type_name: str) -> None:
        self.key = key
        self.token = token
        self.nbytes = nbytes
        self.type_name = type_name
        # The ObjectRef keeping the value alive; only in the caller's process.
        self._ref: Any = None

    def result(self, timeout: float | None = None) -> Any:
        """Fetch the value from the object store (blocking).

        Raises:
            BackendError: If this stand-in is a copy not attached to an ``ObjectRef``.
        """
        if self._ref is None:
            raise BackendError(
                f"the remote result {self.key!r} is not attached to a Ray object; "
                "only the stand-ins handed out in the caller's process can fetch their value"
            )
        return _import_ray().get(self._ref, timeout=timeout)[self.token]

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteResult, (self.key, self.token, self.nbytes, self.type_name))

    def __repr__(self) -> str:
        return f"<RemoteResult {self.type_name} of {self.nbytes} bytes, key {self.key!r}>"


def _sizeof(value: Any) -> int:
    """A cheap estimate of ``value``'s size in bytes (buffers exact, containers sampled)."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)  # numpy, pyarrow, torch, memoryview
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)  # pandas
    if callable(usage):
        try:
            total: Any = usage(index=True, deep=False)
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:  # not pandas after all
            pass
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.values() if isinstance(value, dict) else value)
        if not items:
            return sys.getsizeof(value)
        sample = items[:: max(1, len(items) // 16)][:16]
        per_item = sum(_sizeof(v) for v in sample) / len(sample)
        return sys.getsizeof(value) + int(per_item * len(items))
    return sys.getsizeof(value)


# -- worker side ----------------------------------------------------------------------------


class _Overdue(NamedTuple):
    """A worker's call ``token`` of job ``job_key`` ran past its timeout: kill me."""

    job_key: str
    token: int


@final
class _RayWorker:
    """What a Ray worker does around a job's calls (``daglite._job.call.worker``)."""

    __slots__ = ("home", "job_key")

    def __init__(self, home: Any, job_key: str) -> None:
        self.home = home
        self.job_key = job_key

    def running(self, token: int, memory: int = 0) -> None:
        """Nothing to record: Ray does not say which call a dead worker ran."""

    def timed_out(self, token: int) -> NoReturn:
        """Ask the caller to kill this worker (``ray.cancel(force=True)``), and wait for it."""
        try:
            self.home.send(_Overdue(self.job_key, token))
        except Exception:  # the caller is unreachable: end here, a lost worker
            logger.debug("could not report a timeout home", exc_info=True)
        else:
            threading.Event().wait(_OVERDUE_GRACE)
        os._exit(1)


def _run_job(
    job_key: str,
    payload: bytes,
    threshold: int,
    authkey: bytes,
    keys: tuple[str, ...],
    *kept: Any,
) -> tuple[Outcomes, dict[int, Any]]:
    """Run a daglite job in a Ray worker: its outcomes, and its big values apart."""
    from daglite._job import call

    if not call.process_label:
        ray = _import_ray()
        call.process_label = f"ray {ray.util.get_node_ip_address()} pid {os.getpid()}"
    if authkey:
        # As in a process pool: the caller's multiprocessing.Manager proxies work here.
        multiprocessing.current_process().authkey = authkey
    job = pickle.loads(payload)
    if keys:
        found = dict(zip(keys, kept))
        job.calls = [
            c._replace(kwargs=_swap_in(c.kwargs, found)) if getattr(c, "kwargs", None) else c
            for c in job.calls
        ]
    job.home.early = partial(_goes_home_early, threshold)
    call.worker = _RayWorker(job.home, job_key)
    try:
        outcomes = job()
    finally:
        call.worker = None
    return _keep_big(outcomes, job_key, threshold)


def _swap_in(value: Any, kept: Mapping[str, Mapping[int, Any]]) -> Any:
    """``value`` with its stand-ins replaced by the values Ray handed this task."""
    return replace(value, RemoteResult, lambda r: kept[r.key][r.token])


def _goes_home_early(threshold: int, outcome: Outcome) -> bool:
    """Whether a finished call may go home on the event channel before its job ends."""
    return not outcome.ok or _sizeof(outcome.value) <= threshold


def _keep_big(outcomes: Outcomes, job_key: str, threshold: int) -> tuple[Outcomes, dict[int, Any]]:
    """Outcomes with stand-ins for the big values, and those values by token."""
    out = Outcomes()
    out.sent_early = outcomes.sent_early
    big: dict[int, Any] = {}
    for outcome in outcomes:
        nbytes = _sizeof(outcome.value) if outcome.ok else 0
        if nbytes > threshold:
            outcome = _kept_outcome(outcome, job_key, nbytes, big)
        out.append(outcome)
    return out, big


def _kept_outcome(outcome: Outcome, job_key: str, nbytes: int, big: dict[int, Any]) -> Outcome:
    """The stand-in outcome for a big value (put in ``big``), or a pickling failure."""
    value = outcome.value
    problem = _pickling_problem(value)
    if problem is not None:
        error = ResultNotPicklableError(
            f"the result ({type(value).__name__}) cannot be pickled to store it in "
            f"Ray's object store: {problem}"
        )
        return outcome._replace(ok=False, value=error)
    big[outcome.token] = value
    cls = type(value)
    stand_in = RemoteResult(job_key, outcome.token, nbytes, f"{cls.__module__}.{cls.__qualname__}")
    return outcome._replace(value=stand_in)


def _pickling_problem(value: Any) -> Exception | None:
    """Why ``value`` cannot be pickled, or None (out-of-band buffers are not copied)."""
    try:
        pickle.dumps(value, protocol=5, buffer_callback=lambda _: False)
        return None
    except Exception:
        pass
    import cloudpickle

    try:
        cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _: False)
    except Exception as exc:
        return exc
    return None


def _run_plain(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a callable that is not a daglite job (``Backend.submit``'s general contract)."""
    return fn(*args, **kwargs)


# -- events: the channel home ----------------------------------------------------------------


@final
class _RayTransport(Transport):
    """Worker messages to one evaluation, through the hub socket or the relay actor.

    Routed by its own id, so the backend sees every message first and takes
    its own (``_Overdue``) before the run's engine gets the rest.
    """

    __slots__ = ("_backend", "inner", "route")

    def __init__(self, inner: Any, route: str, backend: Any = None) -> None:
        self.inner = inner  # a socket transport, or the relay actor's handle
        self.route = route
        self._backend = backend  # the RayBackend, in the caller's copy only

    def send(self, run_id: str, message: tuple[Any, ...]) -> None:
        inner = self.inner
        if isinstance(inner, Transport):
            inner.send(self.route, message)
            return
        from daglite._job.messages import Events, picklable_events

        if type(message) is Events:
            message = Events(message.token, picklable_events(message.events))
        inner.put.remote(pickle.dumps((self.route, message), protocol=_PICKLE_PROTOCOL))

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend._unroute(self.route)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RayTransport, (self.inner, self.route))


class _Relay:
    """Ray actor that holds worker messages until the caller drains them (remote clusters).

    Single-threaded on purpose: Ray runs a sync actor's calls from one sender in
    the order they were sent, so the events of a task keep their order.
    """

    def __init__(self) -> None:
        self._messages: list[bytes] = []

    def put(self, data: bytes) -> None:
        """Keep one message."""
        self._messages.append(data)

    def take(self) -> list[bytes]:
        """Every message held, oldest first (none: an empty list)."""
        out, self._messages = self._messages, []
        return out
