"""What runs in Ray workers for the ray backend, and what travels there and back.

A daglite job runs in a Ray worker as ``_run_job``: it swaps the values Ray
handed it in for the ``RemoteResult`` stand-ins and ``PendingResult`` markers
among its arguments (skipping a call whose pending input failed or did not
run), runs the calls, and returns two values: the outcomes the caller fetches
(big results, and those the caller does not need, replaced by stand-ins) and
those values by token, which stay in Ray's object store for later jobs.
``_RayWorker`` is what the job's calls do on a timeout: ask the caller,
through the channel home (``_RayTransport``: the hub socket or the
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

from daglite._job.records import Outcome, Outcomes, PendingResult
from daglite._job.transport import Transport
from daglite.backends._claims import claim
from daglite.exceptions import BackendError, ResultNotPicklableError
from daglite.graph.walk import replace

logger = logging.getLogger("daglite.backends.ray")

_INSTALL_HINT: Final = (
    "the 'ray' backend needs the 'ray' package; install it with `pip install daglite[ray]`"
)
_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
# A Ray worker running a daglite job shows this title and the job's key (ps,
# top), so the caller kills only a process still running the job it stops,
# and waits for it to be gone (``RayBackend._after_exit``). Ray sets its own
# title back after.
TITLE_PREFIX: Final = "ray::daglite-"
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


class _Wiring(NamedTuple):
    """Which of a job's Ray arguments is which (plain values: Ray leaves them alone).

    ``*inputs`` of ``_run_job`` are, in order, the second return (kept values
    by token) of each job in ``values``, then the first return (outcomes) of
    each job in ``outcomes``. ``pending`` gives, for each call token a
    ``PendingResult`` marker stands for, the key of the job that runs it.
    """

    values: tuple[str, ...]
    outcomes: tuple[str, ...]
    pending: Mapping[int, str]


def _run_job(
    job_key: str,
    payload: bytes,
    threshold: int,
    authkey: bytes,
    claims: str | None,
    wiring: _Wiring | None,
    *inputs: Any,
) -> tuple[Outcomes, dict[int, Any]]:
    """Run a daglite job in a Ray worker: its outcomes, and the values kept apart.

    ``inputs`` are what Ray resolved for this job's ``ObjectRef`` arguments
    (see ``_Wiring``). The second return holds, by token, the values later
    jobs may take that are not among the outcomes the caller fetches: big
    ones, those the caller does not need (``job.keep_remote``), and those
    sent home early on the event channel. A job the caller stopped before
    it started returns no outcomes (see ``_claims``).
    """
    from daglite._job import call

    if not _begin(job_key, claims):
        return Outcomes(), {}
    if not call.process_label:
        ray = _import_ray()
        call.process_label = f"ray {ray.util.get_node_ip_address()} pid {os.getpid()}"
    if authkey:
        # As in a process pool: the caller's multiprocessing.Manager proxies work here.
        multiprocessing.current_process().authkey = authkey
    job = pickle.loads(payload)
    if wiring is not None:
        _with_inputs(job, wiring, inputs)
    early: dict[int, Any] = {}
    job.home.early = partial(_goes_home_early, threshold, job.keep_remote, early)
    call.worker = _RayWorker(job.home, job_key)
    try:
        outcomes = job()
    finally:
        call.worker = None
    return _keep_apart(outcomes, early, job_key, threshold, job.keep_remote)


class _InputMissing(Exception):
    """A call's pending input failed or did not run: the call is skipped."""


def _with_inputs(job: Any, wiring: _Wiring, inputs: tuple[Any, ...]) -> None:
    """Swap the values Ray handed over into ``job``'s calls; skip calls whose input is missing.

    gh-18: a call whose pending input failed or did not run is left out of
    the job: the caller drops it, and plans it again once the input is
    retried (or skips it for good).
    """
    n = len(wiring.values)
    values: dict[str, Mapping[int, Any]] = dict(zip(wiring.values, inputs[:n]))
    outcomes: dict[str, Outcomes] = dict(zip(wiring.outcomes, inputs[n:]))
    pending = wiring.pending

    def pending_value(marker: PendingResult) -> Any:
        key = pending[marker.token]
        kept = values.get(key)
        if kept is not None and marker.token in kept:
            return kept[marker.token]
        for outcome in outcomes.get(key, ()):
            if outcome.token == marker.token and outcome.ok:
                return outcome.value
        raise _InputMissing(marker.token)

    calls = []
    for c in job.calls:
        kwargs = getattr(c, "kwargs", None)
        if kwargs:
            try:
                kwargs = _swap_in(kwargs, values)
                if pending:
                    kwargs = replace(kwargs, PendingResult, pending_value)
            except _InputMissing:
                continue
            c = c._replace(kwargs=kwargs)
        calls.append(c)
    job.calls = calls


def _swap_in(value: Any, kept: Mapping[str, Mapping[int, Any]]) -> Any:
    """``value`` with its stand-ins replaced by the values Ray handed this task."""
    return replace(value, RemoteResult, lambda r: kept[r.key][r.token])


def _goes_home_early(
    threshold: int, keep_remote: frozenset[int], early: dict[int, Any], outcome: Outcome
) -> bool:
    """Whether a finished call may go home on the event channel before its job ends.

    Failures and small results the caller needs may; a value that goes is
    also noted in ``early``, for later jobs on the cluster that take it.
    """
    if not outcome.ok:
        return True
    if outcome.token in keep_remote or _sizeof(outcome.value) > threshold:
        return False
    early[outcome.token] = outcome.value
    return True


def _keep_apart(
    outcomes: Outcomes,
    early: dict[int, Any],
    job_key: str,
    threshold: int,
    keep_remote: frozenset[int],
) -> tuple[Outcomes, dict[int, Any]]:
    """The outcomes the caller fetches, and the values kept in the object store by token.

    A value stays apart (a stand-in among the outcomes) if it is big or the
    caller does not need it; values sent home early are kept too, for later
    jobs that take them.
    """
    out = Outcomes()
    out.sent_early = outcomes.sent_early
    kept: dict[int, Any] = dict(early)
    for outcome in outcomes:
        if outcome.ok:
            nbytes = _sizeof(outcome.value)
            if nbytes > threshold or outcome.token in keep_remote:
                outcome = _kept_outcome(outcome, job_key, nbytes, kept)
        out.append(outcome)
    return out, kept


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


def _run_plain(
    key: str,
    claims: str | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run a callable that is not a daglite job (``Backend.submit``'s general contract)."""
    if not _begin(key, claims):
        return None
    return fn(*args, **kwargs)


def _begin(key: str, claims: str | None) -> bool:
    """Start Ray task ``key`` here: title this process, claim the task; False if stopped.

    The title comes first, so a caller that finds the claim finds the title
    too, and kills only a process still running ``key``.
    """
    set_title = getattr(_import_ray()._raylet, "setproctitle", None)
    if set_title is not None:  # Ray's own helper; absent, the caller has no claims
        set_title(TITLE_PREFIX + key)
    return claims is None or claim(claims, key)


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
