"""Runs tasks on a Dask ``distributed`` cluster; the only importer of ``distributed``.

Data flow::

    engine ──submit(job)──> DaskBackend ──client.submit(_run_job, payload, *kept)──> worker
       ^                                                                             │
       │<── outcomes (small results and buffered events) ─────────── future result ─┤
       │<── outcomes with RemoteResult stand-ins <── _summarize task (big results) ─┤
       │<── client.subscribe_topic handler <── scheduler <── worker.log_event ──────┘
                                                      (events of long-running tasks)

gh-17: the engine hands a job to this backend as soon as the jobs of its
inputs were submitted (``accepts_pending_inputs``): their Dask futures are
the job's arguments, so the scheduler chains jobs on the cluster; on the
worker, each ``PendingResult`` marker becomes its call's value. Results the
caller does not need (``_Job.keep_remote``) stay on the worker whatever
their size: the job then sends its outcomes home as one ``_JobSummary`` on
the event channel and returns ``_Announced``, and the caller settles it from
that message once the scheduler reports the task done (no fetch). Dask drops a
worker's messages while it is not connected to the scheduler: a summary not
there ``_SUMMARY_GRACE`` seconds after the task's end is asked for instead.

Jobs are pickled in the caller (cloudpickle for task functions, see
``daglite._job``) and reach the scheduler as opaque bytes. A result whose
``dask.sizeof`` exceeds ``remote_threshold`` stays in the worker's memory: the
job's return value is then a ``_Kept`` wrapper, the caller sees that from the
future's type (no data moves) and asks a tiny ``_summarize`` task, run next to
the data, for the outcomes with ``RemoteResult`` stand-ins. A later job that
receives a stand-in gets the Dask future of the kept value as an argument, so
Dask moves the data between workers itself; ``materialize`` fetches the final
results. A stand-in holds its future: the data lives as long as the stand-in.

A worker that dies fails its job with ``WorkersLost`` naming no call: Dask
fails the tasks queued on a dying worker just like the one it ran. The engine
reruns those calls one at a time, alone (quarantine), and a call that loses
its worker there fails with ``WorkerLostError``. The embedded cluster sets
``distributed.scheduler.allowed-failures`` to 0 so a death surfaces at once
instead of Dask rerunning the task on the next worker to kill.

When a run gives up on a job (fail fast, Ctrl-C, a cancelled
``evaluate_async``), the engine cancels its future. Dask can only forget a
task: one already running goes on in its worker thread. So cancelling a
``_Watched`` future asks the backend to stop its task and reads as done only
once that is over (the engine waits for it, as for a running call of a
pool)::

    outer.cancel() ──> _Stopper ──> client.cancel(task); wait until the scheduler forgot it
                                       │ (embedded cluster only)
                                       v
      _abandon_on_worker on every worker: "which of these run here?"
      (the rest get a tombstone: such a job returns at once if it starts later)
                                       │
                                       v
      the nanny of each worker running one kills it and starts a fresh one;
      then outer reads as cancelled

Workers of a cluster daglite did not start are never restarted: there, a call
already running goes on to its end and its result is dropped; the calls after
it in its job (a fused chain) are skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as wait_for_futures
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, final

from daglite._job.messages import Events, picklable_events
from daglite._job.records import Outcome, Outcomes, PendingResult
from daglite._job.transport import Transport
from daglite.backends.base import Backend, WorkersLost
from daglite.exceptions import BackendError
from daglite.graph.walk import find, replace
from daglite.settings import usable_cpu_count

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

__all__ = ["DaskBackend", "RemoteResult"]

logger = logging.getLogger("daglite.backends.dask")

# Results larger than this (bytes, per ``dask.sizeof``) stay on the cluster.
# Lower: less data through the caller, more stand-ins and fetches; higher: the
# reverse. 1 MiB keeps ordinary values (numbers, small frames) direct.
DEFAULT_REMOTE_THRESHOLD: Final = 1 << 20
ADDRESS_ENV: Final = "DAGLITE_DASK_ADDRESS"
_INSTALL_HINT: Final = (
    "the 'dask' backend needs the 'distributed' package; install it with "
    "`pip install daglite[dask]`"
)
_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL
# Seconds a worker running an abandoned task gets to close on its own before its
# nanny kills it. Its task thread never returns in time, so this only lets the
# worker say goodbye to the scheduler; longer just delays ``evaluate``'s raise.
_KILL_GRACE: Final = 0.5
# Upper bound (seconds) on each wait while stopping abandoned tasks: for the
# scheduler to forget them, for restarted workers to come back. Past it the
# backend logs a warning and lets ``evaluate`` go on instead of hanging.
_STOP_TIMEOUT: Final = 30.0
# Tombstones kept per worker process (keys of jobs abandoned before they
# started); the oldest go first. Dask drops such a job long before this many
# newer ones pile up, and a worker restarted by daglite starts with none.
_MAX_TOMBSTONES: Final = 10_000
# Seconds the caller waits, after Dask reports an announced job done, for its
# summary on the event channel before asking ``_summarize`` for it instead.
# The worker sends it before it returns, so it normally comes first; Dask drops
# worker messages while the worker is not connected to the scheduler.
_SUMMARY_GRACE: Final = 2.0


def _import_distributed() -> Any:
    """The ``distributed`` module, or ``BackendError`` with the install hint."""
    try:
        import distributed
    except ImportError:
        raise BackendError(_INSTALL_HINT) from None
    return distributed


# -- stand-ins for results kept on the cluster ------------------------------------------


@final
class RemoteResult:
    """A task result that stayed on the Dask cluster because it is large.

    Hooks (``after_node_execute``'s ``result``) and ``EvaluationError.results``
    see this stand-in for results over the backend's ``remote_threshold``;
    downstream tasks and ``evaluate``'s return value get the real value.

    Attributes:
        key: Dask key of the job that produced the value.
        token: Which call of that job produced it.
        nbytes: The value's size as estimated by ``dask.sizeof``.
        type_name: The value's type, ``module.qualname``.
    """

    __slots__ = ("_future", "key", "nbytes", "token", "type_name")

    def __init__(self, key: str, token: int, nbytes: int, type_name: str) -> None:
        self.key = key
        self.token = token
        self.nbytes = nbytes
        self.type_name = type_name
        # The Dask future keeping the value alive; only in the caller's process.
        self._future: Any = None

    def result(self, timeout: float | None = None) -> Any:
        """Fetch the value from the cluster (blocking).

        Raises:
            BackendError: If this stand-in is a copy not attached to a client.
        """
        if self._future is None:
            raise BackendError(
                f"the remote result {self.key!r} is not attached to a Dask client; "
                "only the stand-ins handed out in the caller's process can fetch their value"
            )
        return self._future.result(timeout=timeout).value_of(self.token)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteResult, (self.key, self.token, self.nbytes, self.type_name))

    def __repr__(self) -> str:
        return f"<RemoteResult {self.type_name} of {self.nbytes} bytes, key {self.key!r}>"


class _Kept:
    """A job's outcomes, some of them kept here instead of sent home; lives on a worker.

    ``outcomes`` are all of the job's (the later jobs that take its results
    read them here), ``big`` the kept ones' sizes by token, ``sent_early``
    the tokens whose outcomes went home on the channel while the job ran.
    The caller learns this type's name from the scheduler and asks the
    ``_summarize`` task for the outcomes with stand-ins for the kept values.
    """

    __slots__ = ("big", "outcomes", "sent_early")

    def __init__(self, outcomes: list[Any], big: dict[int, int], sent_early: list[int]) -> None:
        self.outcomes = outcomes
        self.big = big  # token -> nbytes
        self.sent_early = sent_early

    def value_of(self, token: int) -> Any:
        for outcome in self.outcomes:
            if outcome.token == token:
                return outcome.value
        raise KeyError(token)  # pragma: no cover - a bug, never user input

    def __sizeof__(self) -> int:
        return sum(self.big.values()) + 64 * len(self.outcomes)


@final
class _Announced(_Kept):
    """A ``_Kept`` whose summary went home on the event channel (``_JobSummary``).

    The caller settles the job from that message once Dask reports the task
    finished: no task, no fetch per job.
    """

    __slots__ = ()


@final
class _JobSummary(NamedTuple):
    """What a job that keeps results sends home: its outcomes, kept values as stand-ins."""

    key: str
    outcomes: Outcomes


# -- worker side -------------------------------------------------------------------------


# Which daglite jobs run in this worker process, and which ones the caller gave up
# on before they started (tombstones). One lock orders both, so an abandoned job
# either started before the caller asked (``_abandon_on_worker``) and is seen
# running, or starts after it and finds its tombstone.
_jobs_lock = threading.Lock()
# A running job's value is its ``_Home`` once unpickled: setting its ``abort``
# makes the job skip its calls not started yet (the rest of a fused chain).
_running_jobs: dict[str, Any] = {}
_abandoned_jobs: dict[str, None] = {}


_ABANDONED: Final = object()


def _run_job(job_key: str, payload: bytes, threshold: int, wiring: bytes, *kept: Any) -> Any:
    """Run a daglite job on a Dask worker; results the caller does not get stay here.

    ``kept`` are the results of earlier jobs this one takes values from (Dask
    hands them over); ``wiring`` (pickled, empty if none) gives their keys,
    in order, and the key of the job of each call whose result a
    ``PendingResult`` marker stands for. A call whose pending input failed or
    did not run is skipped. A job the caller abandoned before it started
    returns at once, running nothing.
    """
    with _jobs_lock:
        if job_key in _abandoned_jobs:
            del _abandoned_jobs[job_key]
            return []
        _running_jobs[job_key] = None
    try:
        _name_this_worker()
        job = pickle.loads(payload)
        with _jobs_lock:
            if _running_jobs.get(job_key) is _ABANDONED:
                job.home.abort = True
            _running_jobs[job_key] = job.home
        if wiring:
            keys, pending = pickle.loads(wiring)
            _with_kept_inputs(job, dict(zip(keys, kept)), pending)
        early: dict[int, Outcome] = {}
        job.home.early = partial(_goes_home_early, threshold, job.keep_remote, early)
        held = job()
    finally:
        with _jobs_lock:
            _running_jobs.pop(job_key, None)
    return _result_of(job, job_key, held, early, threshold)


def _result_of(
    job: Any, job_key: str, held: Outcomes, early: dict[int, Outcome], threshold: int
) -> Any:
    """The job's Dask result: every outcome, for later jobs; what the caller needs, for it.

    Without kept values, the plain outcomes (those sent early, small, too,
    which the caller skips); else a ``_Kept`` holding them, whose summary goes
    home on the event channel (``_Announced``) or, failing that, is asked for.
    """
    sent_early = held.sent_early
    every = [early[t] for t in sent_early if t in early]
    every.extend(held)
    kept = _kept_results(every, threshold, job.keep_remote)
    if not kept:
        out = Outcomes(every)
        out.sent_early = sent_early
        return out
    try:
        job.home.send(_JobSummary(job_key, _summary(held, kept, job_key, sent_early)))
    except Exception:  # no channel: the caller asks ``_summarize`` instead
        logger.debug("could not send the summary of %r home", job_key, exc_info=True)
        return _Kept(every, kept, sent_early)
    return _Announced(every, kept, sent_early)


def _name_this_worker() -> None:
    """Worker labels of calls run here name the Dask worker (its address)."""
    from daglite._job import call

    if not call.process_label:
        from distributed import get_worker

        try:
            call.process_label = get_worker().address
        except ValueError:  # not inside a worker (a local test of the job)
            call.process_label = f"pid {os.getpid()}"


def _abandon_on_worker(keys: list[str]) -> list[str]:
    """Which of the jobs ``keys`` run in this worker now; the others may not start here.

    A running one runs no call it has not started yet (gh-17: the rest of a
    fused chain). Called through ``Client.run``, on the worker's event loop.
    """
    with _jobs_lock:
        running = [k for k in keys if k in _running_jobs]
        for key in keys:
            home = _running_jobs.get(key, _ABANDONED)
            if home is _ABANDONED:
                _abandoned_jobs[key] = None
            elif home is None:  # still unpickling: told when it is done
                _running_jobs[key] = _ABANDONED
            else:
                home.abort = True
        while len(_abandoned_jobs) > _MAX_TOMBSTONES:
            del _abandoned_jobs[next(iter(_abandoned_jobs))]
    return running


def _scheduler_view(keys: list[str], dask_scheduler: Any) -> tuple[list[str], list[str]]:
    """Which of ``keys`` the scheduler still knows, and its workers' addresses.

    Called through ``Client.run_on_scheduler``, on the scheduler's event loop.
    """
    return [k for k in keys if k in dask_scheduler.tasks], list(dask_scheduler.workers)


class _InputMissing(Exception):
    """A call's pending input failed or did not run: the call is skipped."""


def _with_kept_inputs(job: Any, kept: dict[str, Any], pending: dict[int, str]) -> None:
    """Swap the values kept on the cluster into ``job``'s calls (a fresh copy, unpickled here).

    Stand-ins (``RemoteResult``) and pending inputs (``PendingResult``) are
    replaced by the values in the results of the jobs that made them; a call
    whose pending input failed or did not run is left out (skipped).
    """
    calls = []
    for call in job.calls:
        kwargs = getattr(call, "kwargs", None)
        if kwargs:
            try:
                call = call._replace(kwargs=_swap_in(kwargs, kept, pending))
            except _InputMissing:
                continue
        calls.append(call)
    job.calls = calls


def _swap_in(value: Any, kept: dict[str, Any], pending: dict[int, str] | None = None) -> Any:
    """``value`` with its stand-ins replaced; containers without any are kept as is."""
    value = replace(value, RemoteResult, lambda r: kept[r.key].value_of(r.token))
    if pending:
        value = replace(value, PendingResult, lambda p: _value_in(kept[pending[p.token]], p.token))
    return value


def _value_in(result: Any, token: int) -> Any:
    """The value call ``token`` returned, from its job's result (``_InputMissing`` if none)."""
    outcomes = result.outcomes if isinstance(result, _Kept) else result
    for outcome in outcomes:
        if outcome.token == token:
            if outcome.ok:
                return outcome.value
            break
    raise _InputMissing(token)


def _goes_home_early(
    threshold: int, keep_remote: frozenset[int], early: dict[int, Outcome], outcome: Outcome
) -> bool:
    """Whether a finished call may go home on the event channel before its job ends.

    Failures and small results the caller needs may (they are noted in
    ``early``); the others stay here with the job's result.
    """
    from dask.sizeof import sizeof

    if outcome.ok and (outcome.token in keep_remote or int(sizeof(outcome.value)) > threshold):
        return False
    early[outcome.token] = outcome
    return True


def _kept_results(
    outcomes: list[Outcome], threshold: int, keep_remote: frozenset[int]
) -> dict[int, int]:
    """Sizes, by token, of the results that stay here: big, or not needed by the caller."""
    from dask.sizeof import sizeof

    kept = {}
    for outcome in outcomes:
        if outcome.ok:
            nbytes = int(sizeof(outcome.value))
            if nbytes > threshold or outcome.token in keep_remote:
                kept[outcome.token] = nbytes
    return kept


def _summary(
    outcomes: list[Outcome], kept: dict[int, int], key: str, sent_early: list[int]
) -> Outcomes:
    """``outcomes`` with stand-ins for the kept values: what the caller gets of the job."""
    out = Outcomes()
    out.sent_early = list(sent_early)
    for o in outcomes:
        nbytes = kept.get(o.token)
        if nbytes is None:
            out.append(o)
            continue
        cls = type(o.value)
        stand_in = RemoteResult(key, o.token, nbytes, f"{cls.__module__}.{cls.__qualname__}")
        out.append(o._replace(value=stand_in))
    return out


def _summarize(kept: _Kept, key: str) -> Outcomes:
    """The summary of ``kept`` (a task run next to the data, when no message brought it)."""
    early = set(kept.sent_early)
    held = [o for o in kept.outcomes if o.token not in early]
    return _summary(held, kept.big, key, kept.sent_early)


# -- events: Dask's worker-to-client channel ----------------------------------------------


@final
class _DaskTransport(Transport):
    """Sends worker messages through ``Worker.log_event`` to the caller's subscription.

    One topic per backend (the scheduler keeps a bounded log per topic, forever),
    and one route per evaluation inside it. Only the caller's copy holds the
    backend; a copy unpickled in a task's thread holds that task's worker, since
    ``get_worker()`` does not work in the reporter's flusher thread.
    """

    __slots__ = ("_backend", "_worker", "route", "topic")

    def __init__(self, topic: str, route: str, backend: DaskBackend | None = None) -> None:
        self.topic = topic
        self.route = route
        self._backend = backend
        self._worker: Any = None

    def send(self, run_id: str, message: tuple[Any, ...]) -> None:
        if type(message) is Events:
            message = Events(message.token, picklable_events(message.events))
        data = pickle.dumps((self.route, message), protocol=_PICKLE_PROTOCOL)
        worker = self._worker
        if worker is None:
            from distributed import get_worker

            worker = self._worker = get_worker()
        worker.log_event(self.topic, data)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend._routes.pop(self.route, None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_worker_transport, (self.topic, self.route))


def _worker_transport(topic: str, route: str) -> _DaskTransport:
    """Unpickle a transport, binding it to the worker whose task unpickles it."""
    from distributed import get_worker

    transport = _DaskTransport(topic, route)
    try:
        transport._worker = get_worker()
    except ValueError:  # not in a task's thread: looked up when sending
        pass
    return transport


# -- the futures the engine holds ---------------------------------------------------------


@final
class _Watched(Future[Any]):
    """The future the engine holds for one Dask task.

    ``cancel()`` does not cancel it on the spot: it hands the task to its backend
    to be stopped and returns False, like a running call of a process pool, so
    the engine waits. Once the task is stopped, the backend cancels the future
    for real (``stopped``). An abandoned future takes no result.
    """

    def __init__(self, backend: DaskBackend, job_key: str | None) -> None:
        super().__init__()
        self.backend = backend
        # The job's Dask future, then the summary's once there is one.
        self.dask_futures: list[Any] = []
        self.job_key = job_key  # None: not a daglite job, nothing on workers to stop
        self.abandoned = False
        # A job that announced its summary: settled once both the summary
        # (event channel) and the task's end (scheduler) are here.
        self.summary: Outcomes | None = None
        self.finished = False

    def cancel(self) -> bool:
        """Ask the backend to stop the task; False until it is stopped."""
        if self.done():
            return self.cancelled()
        self.backend._stopper.abandon(self)
        return False

    def settle(self, ok: bool, value: Any) -> None:
        """Set the result (``ok``) or the exception, unless abandoned or done."""
        if self.abandoned:
            return
        try:
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except InvalidStateError:  # done meanwhile
            pass

    def stopped(self) -> None:
        """The task is stopped: read as cancelled (if not done meanwhile)."""
        if not self.done() and super().cancel():
            # What an executor does with a cancelled future: ``futures.wait`` and
            # ``as_completed`` see it only from here on.
            self.set_running_or_notify_cancel()


@final
class _Stopper:
    """Stops the Dask tasks runs gave up on (``_Watched.cancel``), batch by batch.

    Runs on the client's event loop; ``where`` tells the client in use and the
    embedded cluster (None when the cluster is the user's), or no client once
    the backend stopped.
    """

    def __init__(self, where: Callable[[], tuple[Any, Any]]) -> None:
        self._where = where
        self._lock = threading.Lock()
        self._abandoned: list[_Watched] = []  # waiting for ``_stop_batches``
        self._stopping = False

    def abandon(self, outer: _Watched) -> None:
        """The engine gave up on ``outer``: stop its task."""
        client = self._where()[0]
        with self._lock:
            if outer.abandoned:
                return
            outer.abandoned = True
            if client is not None:
                self._abandoned.append(outer)
                if self._stopping:
                    return  # the running ``_stop_batches`` takes it in its next batch
                self._stopping = True
        if client is None:  # the backend was stopped: nothing of it runs any more
            outer.stopped()
            return
        try:
            client.loop.add_callback(self._stop_batches)
        except RuntimeError:  # the client's event loop is closed: so is the client
            self.give_up()

    def give_up(self) -> None:
        """Read every abandoned future as stopped: there is no client to stop them with."""
        with self._lock:
            batch, self._abandoned = self._abandoned, []
            self._stopping = False
        for outer in batch:
            outer.stopped()

    async def _stop_batches(self) -> None:
        """Stop the abandoned tasks, batch after batch (on the client's event loop)."""
        while True:
            client, cluster = self._where()
            with self._lock:
                batch, self._abandoned = self._abandoned, []
                if not batch or client is None:
                    self._stopping = False
            if not batch or client is None:
                for outer in batch:
                    outer.stopped()
                return
            try:
                await _stop_tasks(client, cluster, batch)
            except Exception:
                # Expected if the backend is being stopped meanwhile: it ends them all.
                log = logger.warning if self._where()[0] is client else logger.debug
                log(
                    "could not stop %d abandoned Dask task(s); they may go on running",
                    len(batch),
                    exc_info=True,
                )
            for outer in batch:
                outer.stopped()


# -- the backend -------------------------------------------------------------------------


class DaskBackend(Backend):
    """Runs tasks on a Dask cluster: an embedded local one, or yours.

    Args:
        address: Scheduler address (``"tcp://host:8786"``); default
            ``DAGLITE_DASK_ADDRESS``, else an embedded ``LocalCluster``.
        client: An existing ``distributed.Client`` to use (never closed by daglite).
        max_workers: Worker processes of the embedded cluster (default: usable
            CPUs, at least 2). With a remote cluster: informational only.
        remote_threshold: Results larger than this many bytes stay on the cluster
            and reach hooks as ``RemoteResult`` stand-ins.

    Raises:
        BackendError: If ``distributed`` is not installed.
    """

    name: ClassVar[str] = "dask"
    # Ready calls are packed up to this many per Dask task: Dask's own per-task
    # cost (milliseconds) dwarfs a trivial call. A chain runs one per task.
    max_batch: ClassVar[int] = 32
    # gh-17: a call goes to Dask as soon as its inputs' jobs did, with their
    # Dask futures as arguments: the scheduler chains them on the cluster.
    accepts_pending_inputs: ClassVar[bool] = True

    def __init__(
        self,
        address: str | None = None,
        *,
        client: Client | None = None,
        max_workers: int | None = None,
        remote_threshold: int = DEFAULT_REMOTE_THRESHOLD,
    ) -> None:
        _import_distributed()
        if address is not None and client is not None:
            raise ValueError("give either address= or client= to DaskBackend, not both")
        if max_workers is not None and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        if remote_threshold < 0:
            raise ValueError(f"remote_threshold must be 0 or more, got {remote_threshold!r}")
        if address is None and client is None:
            address = os.environ.get(ADDRESS_ENV) or None
        self.address = address
        self.max_workers = max_workers
        self.remote_threshold = remote_threshold
        self._user_client = client
        self._client: Any = None
        self._cluster: LocalCluster | None = None
        self._topic = f"daglite-{uuid.uuid4().hex}"
        # Job keys: the task's name, this backend's id, a count (a uuid4 per job
        # costs a read of the OS's entropy, a tenth of a millisecond here).
        self._key_prefix = uuid.uuid4().hex[:16]
        self._job_count = itertools.count(1)
        self._routes: dict[str, Callable[[Any], None]] = {}
        self._in_flight: dict[int, _Watched] = {}
        self._by_key: dict[str, _Watched] = {}  # daglite jobs in flight, by Dask key
        self._to_fetch: list[tuple[_Watched, Any, Any]] = []
        self._fetching = False
        self._stopper = _Stopper(lambda: (self._client, self._cluster))
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect a client: yours, one to ``address``, or one to an embedded ``LocalCluster``."""
        distributed = _import_distributed()
        client: Any
        if self._user_client is not None:
            client = self._user_client
        elif self.address is not None:
            client = distributed.Client(self.address, set_as_default=False)
        else:
            self._cluster = self._local_cluster(distributed)
            client = distributed.Client(self._cluster, set_as_default=False)
        client.subscribe_topic(self._topic, self._on_event)
        self._client = client
        if self.max_workers is None:
            nthreads = client.nthreads()
            self.max_workers = max(1, sum(nthreads.values())) if nthreads else None

    def _local_cluster(self, distributed: Any) -> Any:
        import dask.config

        n = self.max_workers or max(2, usable_cpu_count())
        self.max_workers = n
        # A task that kills its worker fails at once instead of killing more workers.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            return distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",  # loopback, no fixed port: no clash
            )

    def stop(self) -> None:
        """Fail pending result fetches, then close the client and cluster daglite opened."""
        client, self._client = self._client, None
        cluster, self._cluster = self._cluster, None
        with self._lock:
            self._in_flight.clear()
            pending, self._to_fetch = self._to_fetch, []
        _fail_all(pending, BackendError("the dask backend was stopped"))
        self._stopper.give_up()  # closing the client ends what daglite can end
        if client is None:
            return
        try:
            client.unsubscribe_topic(self._topic)
        except Exception:  # the connection is already gone
            logger.debug("could not unsubscribe from %r", self._topic, exc_info=True)
        if client is not self._user_client:
            client.close()
        if cluster is not None:
            cluster.close()

    def cancel_running(self) -> None:
        """Stop every task this backend has in flight, and wait until they are stopped.

        On the embedded cluster a task already running is stopped by restarting
        its worker; on a cluster of yours it is only cancelled. The cluster stays up.
        """
        with self._lock:
            outers = list(self._in_flight.values())
        for outer in outers:
            outer.cancel()
        _, late = wait_for_futures(outers, timeout=3 * _STOP_TIMEOUT)
        if late:
            logger.warning("%d Dask task(s) were not stopped in time", len(late))

    def starts_processes(self) -> bool:
        """True when it would start an embedded cluster (gh-15: not inside a worker)."""
        return self.address is None and self._user_client is None

    @property
    def client(self) -> Client:
        """The ``distributed.Client`` in use (starts the backend)."""
        self.ensure_started()
        return self._client  # type: ignore[no-any-return]

    def worker_pids(self) -> list[int]:
        """Pids of the cluster's worker processes."""
        pids: dict[str, int] = self.client.run(os.getpid)  # pyright: ignore[reportAssignmentType]
        return list(pids.values())

    # -- events ------------------------------------------------------------------

    def event_transport(self, sink: Callable[[Any], None]) -> Transport:
        """A transport that brings worker events to ``sink`` on this backend's Dask event topic."""
        route = uuid.uuid4().hex
        self._routes[route] = sink
        return _DaskTransport(self._topic, route, self)

    def _on_event(self, event: tuple[float, bytes]) -> None:
        """Subscription handler (client's event loop): hand a message to its run."""
        try:
            route, message = pickle.loads(event[1])
        except Exception:
            logger.warning("dropped a worker message that could not be unpickled", exc_info=True)
            return
        if type(message) is _JobSummary:  # for this backend, not for a run
            with self._lock:
                outer = self._by_key.get(message.key)
            if outer is not None:
                self._announced(outer, summary=message.outcomes)
            return
        sink = self._routes.get(route)
        if sink is not None:
            sink(message)

    # -- submit ------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn`` as one Dask task; remote results it takes go in as Dask futures.

        Raises:
            BackendError: If ``fn`` takes a remote result of another Dask client.
        """
        self.ensure_started()
        client = self._client
        from daglite._job.job import _Job

        if not isinstance(fn, _Job):
            return self._watch(None, lambda: client.submit(fn, *args, pure=False, **kwargs))
        kept, pending = self._kept_inputs(fn)
        payload: Any = pickle.dumps(fn, protocol=_PICKLE_PROTOCOL)
        if len(payload) > self.remote_threshold:
            # Big inputs from the caller go straight to a worker, not into the graph
            # the scheduler receives (and Dask's "large graph" warning).
            payload = client.scatter(payload, hash=False)
        name = getattr(fn.calls[0], "name", "daglite") if fn.calls else "daglite"
        key = f"{name}-{self._key_prefix}-{next(self._job_count)}"
        # Which argument is which, as bytes: Dask would walk a tuple looking for futures.
        wiring = pickle.dumps((tuple(kept), pending), protocol=_PICKLE_PROTOCOL) if kept else b""
        args = (key, payload, self.remote_threshold, wiring)
        resources = self._resources_for(fn)
        return self._watch(
            key,
            lambda: client.submit(_run_job, *args, *kept.values(), key=key, resources=resources),
        )

    def _resources_for(self, job: Any) -> dict[str, float] | None:
        """gh-15: a job's named resources, as Dask worker resources on a cluster of yours.

        The embedded cluster's workers declare none (a task asking would wait
        forever): there daglite's own gate in the caller is the only limit.
        """
        return None if self.starts_processes() else job.resources

    def _kept_inputs(self, job: Any) -> tuple[dict[str, Any], dict[int, str]]:
        """The Dask futures the job takes values from, by key, and the key of each pending input.

        Raises:
            BackendError: If a stand-in belongs to another client, or a pending
                input was not submitted to this backend.
        """
        found: dict[str, Any] = {}
        markers: list[PendingResult] = []
        for call in job.calls:
            kwargs = getattr(call, "kwargs", None)
            if kwargs:
                _collect_stand_ins(kwargs, found)
                markers.extend(find(kwargs, PendingResult))
        client = self._client
        out = {}
        for key, stand_in in found.items():
            if stand_in._future is None or stand_in._future.client is not client:
                raise BackendError(
                    f"the remote result {key!r} belongs to another Dask client; "
                    "fetch it with .result() before passing it on"
                )
            out[key] = stand_in._future
        pending = {}
        for marker in markers:
            source = marker.future
            if not isinstance(source, _Watched) or source.backend is not self or not source.job_key:
                raise BackendError(
                    f"a pending input (call {marker.token}) was not submitted to this Dask backend"
                )
            out[source.job_key] = source.dask_futures[0]
            pending[marker.token] = source.job_key
        return out, pending

    def _watch(self, job_key: str | None, submit: Callable[[], Any]) -> Future[Any]:
        """The future the engine holds for the Dask task ``submit()`` makes.

        A daglite job is known by its key before it is submitted: its summary
        may come home before ``submit`` returns.
        """
        outer = _Watched(self, job_key)
        with self._lock:
            self._in_flight[id(outer)] = outer
            if job_key is not None:
                self._by_key[job_key] = outer
        try:
            dfut = submit()
        except BaseException:
            self._forget(outer)
            raise
        outer.dask_futures.append(dfut)
        dfut.add_done_callback(partial(self._relay, outer))
        outer.add_done_callback(self._forget)
        return outer

    def _forget(self, outer: Future[Any]) -> None:
        with self._lock:
            self._in_flight.pop(id(outer), None)
            key = getattr(outer, "job_key", None)
            if key is not None and self._by_key.get(key) is outer:
                del self._by_key[key]

    def _announced(
        self, outer: _Watched, summary: Outcomes | None = None, finished: bool = False
    ) -> bool:
        """Half of an announced job's end: its summary, or its task's; settle on both.

        Returns:
            Whether both halves are here (``outer`` settled).
        """
        with self._lock:
            if summary is not None:
                outer.summary = summary
            outer.finished = outer.finished or finished
            summary = outer.summary
            ready = summary is not None and outer.finished
        if ready and summary is not None:
            _attach(summary, outer.dask_futures[0])
            outer.settle(True, summary)
        return ready

    def _relay(self, outer: _Watched, dfut: Any) -> None:
        """Dask future done (callback thread): settle ``outer`` from it."""
        if outer.done() or outer.abandoned:
            return
        try:
            if dfut.status != "finished":
                outer.settle(False, _failure_of(dfut))
            elif _is_type(dfut.type, _Announced):
                if not self._announced(outer, finished=True):
                    self._client.loop.add_callback(self._await_summary, outer, dfut)
            elif _is_type(dfut.type, _Kept):
                self._ask_summary(outer, dfut)
            else:
                self._fetch(outer, dfut, None)
        except BaseException as exc:  # never leave the engine waiting
            outer.settle(False, exc)

    def _ask_summary(self, outer: _Watched, dfut: Any) -> None:
        """Run ``_summarize`` next to a job's kept results; settle ``outer`` from it."""
        summary = self._client.submit(_summarize, dfut, dfut.key, key=f"daglite-summary-{dfut.key}")
        outer.dask_futures.append(summary)
        summary.add_done_callback(partial(self._relay_summary, outer, dfut))

    async def _await_summary(self, outer: _Watched, dfut: Any) -> None:
        """An announced job is done but its summary is not here: ask for it if it stays away."""
        await asyncio.sleep(_SUMMARY_GRACE)  # a grace period, not a synchronisation
        with self._lock:
            lost = outer.summary is None and not outer.done() and not outer.abandoned
        if lost:
            logger.debug("the summary of %r did not come; asking for it", dfut.key)
            try:
                self._ask_summary(outer, dfut)
            except BaseException as exc:  # never leave the engine waiting
                outer.settle(False, exc)

    def _relay_summary(self, outer: _Watched, kept: Any, summary: Any) -> None:
        if outer.done() or outer.abandoned:
            return
        try:
            if summary.status != "finished":
                outer.settle(False, _failure_of(summary))
            else:
                self._fetch(outer, summary, kept)
        except BaseException as exc:
            outer.settle(False, exc)

    def _fetch(self, outer: _Watched, dfut: Any, kept: Any) -> None:
        """Queue a finished future's result for the next batched gather."""
        with self._lock:
            self._to_fetch.append((outer, dfut, kept))
            if self._fetching:
                return
            self._fetching = True
        self._client.loop.add_callback(self._drain)

    async def _drain(self) -> None:
        """Gather every queued result, batch after batch (on the client's event loop).

        One ``gather`` per batch instead of one round trip per task: results that
        finish while a batch is in transit travel together in the next one.
        """
        client = self._client
        while True:
            with self._lock:
                batch, self._to_fetch = self._to_fetch, []
                if not batch or client is None:
                    self._fetching = False
                    _fail_all(batch, BackendError("the dask backend was stopped"))
                    return
            try:
                values = await client.gather([b[1] for b in batch], asynchronous=True)
                results = [(True, v) for v in values]
            except Exception:  # one of them failed: settle each on its own
                results = [await _gather_one(client, b[1]) for b in batch]
            for (outer, dfut, kept), (ok, value) in zip(batch, results):
                if ok:
                    value = _unwrap(value, kept or dfut)
                outer.settle(ok, value)

    # -- results -----------------------------------------------------------------

    def materialize(self, value: Any) -> Any:
        """``value`` with every ``RemoteResult`` in it fetched from the cluster."""
        found: dict[str, RemoteResult] = {}
        _collect_stand_ins(value, found)
        if not found:
            return value
        futures = [s._future for s in found.values()]
        client: Any = self.client
        kept = dict(zip(found, client.gather(futures)))
        return _swap_in(value, kept)

    def __repr__(self) -> str:
        where = self.address or ("client" if self._user_client is not None else "local cluster")
        return f"<DaskBackend {where} max_workers={self.max_workers}>"


def _collect_stand_ins(value: Any, found: dict[str, RemoteResult]) -> None:
    for stand_in in find(value, RemoteResult):
        found.setdefault(stand_in.key, stand_in)


def _attach(outcomes: list[Any], dfut: Any) -> None:
    for outcome in outcomes:
        if isinstance(outcome.value, RemoteResult):
            outcome.value._future = dfut


def _unwrap(value: Any, kept: Any) -> Any:
    """Outcomes from a job's or a summary's result, stand-ins attached to ``kept``.

    A job's plain result holds the outcomes sent home early too (for later
    jobs on the cluster): those are left out.
    """
    if isinstance(value, _Kept):  # the type was unknown: fetched after all
        value = _summarize(value, kept.key)
    elif getattr(value, "sent_early", None):
        early = set(value.sent_early)
        if any(o.token in early for o in value):
            rest = Outcomes([o for o in value if o.token not in early])
            rest.sent_early = value.sent_early
            value = rest
    _attach(value, kept)
    return value


async def _stop_tasks(client: Any, cluster: Any, batch: list[_Watched]) -> None:
    """Cancel ``batch``'s tasks, and restart the workers that run any of them.

    Workers are restarted only on the embedded ``cluster`` (None: not ours),
    since Dask cannot stop a running task's thread.
    """
    dfuts = [f for outer in batch for f in outer.dask_futures]
    await client.cancel(dfuts, asynchronous=True)
    # The cancel travels on the client's batched stream: once the scheduler
    # has forgotten the tasks, it cannot hand them to any worker any more.
    await _until(client, [f.key for f in dfuts], lambda keys, _: not keys)
    jobs = [outer.job_key for outer in batch if outer.job_key is not None]
    if not jobs:
        return
    answers = await client.run(_abandon_on_worker, jobs, on_error="return", asynchronous=True)
    if cluster is None:
        return  # not our workers to restart: the calls running go on to their end
    busy = sorted(
        addr for addr, running in answers.items() if running and isinstance(running, list)
    )
    if busy:
        await _restart(client, cluster, busy)


async def _restart(client: Any, cluster: Any, addresses: list[str]) -> None:
    """Restart the workers at ``addresses`` of the embedded ``cluster`` through their nannies.

    Each nanny kills its worker process (after ``_KILL_GRACE`` seconds) and starts
    a fresh one. Returns once the scheduler has dropped the old workers and counts
    as many workers as before, so the next evaluation finds the cluster whole.
    """
    _, before = await client.run_on_scheduler(_scheduler_view, [], asynchronous=True)
    nannies = [
        nanny
        for nanny in list(cluster.workers.values())
        if getattr(nanny, "worker_address", None) in addresses
    ]
    logger.info("restarting Dask worker(s) %s to stop abandoned tasks", addresses)
    await asyncio.gather(
        *(nanny.kill(timeout=_KILL_GRACE) for nanny in nannies), return_exceptions=True
    )
    gone = set(addresses)
    await _until(
        client, [], lambda _, workers: not gone & set(workers) and len(workers) >= len(before)
    )


async def _until(
    client: Any, keys: list[str], done: Callable[[list[str], list[str]], bool]
) -> None:
    """Poll the scheduler until ``done(keys it still knows, its workers)``.

    Gives up with a warning after ``_STOP_TIMEOUT`` seconds: a stuck cluster must
    not keep ``evaluate`` from returning.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_TIMEOUT
    while True:
        known, workers = await client.run_on_scheduler(_scheduler_view, keys, asynchronous=True)
        if done(known, workers):
            return
        if loop.time() > deadline:
            logger.warning(
                "the Dask scheduler did not settle within %ss while daglite stopped "
                "abandoned tasks (tasks still known: %s, workers: %s)",
                _STOP_TIMEOUT,
                known,
                workers,
            )
            return
        await asyncio.sleep(0.02)  # a bounded poll of the scheduler's state


async def _gather_one(client: Any, dfut: Any) -> tuple[bool, Any]:
    try:
        return True, (await client.gather([dfut], asynchronous=True))[0]
    except BaseException as exc:
        return False, _map_error(exc)


def _failure_of(dfut: Any) -> BaseException:
    if dfut.status == "cancelled":
        return BackendError(
            "the Dask scheduler cancelled the task (did the client or scheduler shut down?)"
        )
    return _map_error(dfut.exception())


def _fail_all(batch: list[tuple[_Watched, Any, Any]], error: BaseException) -> None:
    for outer, *_ in batch:
        outer.settle(False, error)


def _is_type(type_: Any, cls: type) -> bool:
    """Whether a Dask future's result type (a class, or its name) is ``cls``.

    The client learns the result's type name with the "in memory" message.
    """
    return type_ is cls or (isinstance(type_, str) and type_.endswith(f"dask.{cls.__name__}"))


def _map_error(exc: BaseException) -> BaseException:
    """Map distributed's errors at the boundary: a dead worker becomes ``WorkersLost``."""
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    if isinstance(exc, KilledWorker):
        description = f"the Dask worker running it died ({exc})"
    elif isinstance(exc, CommClosedError):
        description = f"the connection to its Dask worker was lost ({exc})"
    else:
        return exc
    # Blame nobody: Dask fails a task queued on a dying worker like the one that
    # ran there. The engine reruns the job's calls alone and blames a repeat.
    lost = WorkersLost({}, description)
    lost.__cause__ = exc
    return lost
