"""Runs tasks on a Ray cluster; with ``_ray_worker``, the only importer of ``ray``.

Data flow::

    engine ──submit(job)──> RayBackend ──_run_job.remote(key, payload, *kept refs)──> worker
       ^                                                                              │
       │<── outcomes (small results, buffered events) ──── first return (ref.future) ─┤
       │    big results stay in the object store ───────── second return (kept ref) ──┤
       │<── hub socket (or the relay actor) <── Events / EarlyOutcome / _Overdue ─────┘

Each job is one Ray task with two returns. The first holds the outcomes the
caller needs; in it, a result whose estimated size exceeds
``remote_threshold``, or that the caller does not need (``_Job.keep_remote``),
is replaced by a ``RemoteResult`` stand-in, and the value itself goes in the
second return, which the caller never fetches. A later job that takes a
stand-in gets that second return's ``ObjectRef`` as a top-level argument, so
Ray hands the worker the value from its object store (numpy arrays
zero-copy, read-only) without the caller touching it. A stand-in holds its
``ObjectRef``: when the run drops the last stand-in, Ray frees the value.
``materialize`` fetches what ``evaluate`` returns.

gh-18: the engine hands a job to this backend as soon as the jobs of its
inputs were submitted (``accepts_pending_inputs``). Each ``PendingResult``
marker's future is the ``_Watched`` of the producing job: its ObjectRefs go
in as top-level arguments (the second return, and the first unless the value
surely stays apart), so Ray starts the job once they exist, and the worker
swaps the values in, skipping a call whose input failed or did not run.

Events, log records and long jobs' early outcomes travel on the caller's hub
socket when every node of the cluster runs on this machine, else through a
small relay actor the caller drains (``_relay``). The same channel carries
``_Overdue``: a call that ran past its timeout asks the caller to cancel its
Ray task with ``force=True``, which kills the worker process, so the runaway
really stops; the job then fails with ``WorkersLost`` blaming that call.

On a cluster whose nodes all run on this machine, daglite stops a task
without ``ray.cancel`` (see ``_claims``): a task not started yet finds a stop
mark and returns at once; one running is stopped by killing its worker, which
titles itself ``ray::daglite-<job key>`` while it runs a job. Ray reports the
task over while its worker may still be exiting: it reads as over only once
that process has exited, so nothing of a cancelled run is left when
``evaluate`` raises. On a remote cluster, ``ray.cancel(force=True)`` does it.

A worker that dies fails its job with ``WorkersLost`` naming no call (Ray does
not say which call of the job was running): the engine reruns the job's calls
alone (quarantine) and blames one that loses its worker there. Ray's own task
retries are off (``max_retries=0``): retries are daglite's.

One process talks to one Ray cluster (``ray.init`` is process-wide). daglite
starts a local instance only if Ray is not initialised yet, shuts down only
what it started, and leaves a connection the user made alone.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import wait as wait_for_futures
from functools import partial
from typing import Any, ClassVar, Final, final

from daglite._job.records import PendingResult
from daglite._job.transport import Transport
from daglite.backends._claims import forget, stop_or_find
from daglite.backends._exits import kill_titled, wait_exited
from daglite.backends._ray_worker import (
    _PICKLE_PROTOCOL,
    TITLE_PREFIX,
    RemoteResult,
    _import_ray,
    _Overdue,
    _RayTransport,
    _Relay,
    _run_job,
    _run_plain,
    _swap_in,
    _Wiring,
)
from daglite.backends.base import Backend, WorkersLost
from daglite.exceptions import BackendError
from daglite.graph.walk import find
from daglite.settings import usable_cpu_count

__all__ = ["RayBackend", "RemoteResult"]

logger = logging.getLogger("daglite.backends.ray")

ADDRESS_ENV: Final = "DAGLITE_RAY_ADDRESS"
# Results larger than this (bytes, estimated by ``_sizeof``) stay in Ray's
# object store. Lower: less data through the caller, more stand-ins; higher:
# the reverse. 1 MiB keeps ordinary values (numbers, small frames) direct.
DEFAULT_REMOTE_THRESHOLD: Final = 1 << 20
# Seconds between polls of the relay actor when it held nothing (remote clusters
# only): the most an event waits there. Lower: quicker events, more actor calls.
_RELAY_POLL: Final = 0.02
# Upper bound (seconds) on the wait for cancelled tasks to be stopped: past it
# ``cancel_running`` logs a warning instead of keeping ``evaluate`` waiting.
_STOP_TIMEOUT: Final = 30.0
# Upper bound (seconds) on the wait for Ray's io thread before a cancel (see
# ``_await_io_thread``): past it the cancel goes ahead, with a warning.
_IO_TIMEOUT: Final = 30.0
# Upper bound (seconds) on the wait for the worker process of a task daglite
# force-cancelled to exit (see ``_after_exit``): past it, a warning.
_EXIT_TIMEOUT: Final = 30.0
# Seconds a task stopped before it started may take to reach a worker and
# return (see ``_claims``); past it, it is waiting for what it will not get
# soon (a resource no node has, a cluster kept busy by others), and
# ``ray.cancel`` takes it out of Ray's queue. Generous: a worker Ray starts
# to replace a killed one can take seconds on a loaded machine, and a task
# being handed to a worker is what ``ray.cancel`` must not meet.
_START_GRACE: Final = 10.0


# -- the futures the engine holds --------------------------------------------------------------


@final
class _Watched(Future[Any]):
    """The future the engine holds for one Ray task.

    ``cancel()`` of a task Ray already has force-cancels it and returns False,
    like a running call of a process pool: the future reads as cancelled once
    Ray reports the task over, so the engine waits until nothing runs. A task
    stopped before its worker started it (see ``_claims``) reads as cancelled
    at once: it will run nothing.
    """

    def __init__(self, backend: RayBackend, key: str, launch: Callable[[], list[Any]]) -> None:
        super().__init__()
        self.backend = backend
        self.key = key
        self.launch: Callable[[], list[Any]] | None = launch  # None once launched
        self.refs: list[Any] = []
        # The task's two ObjectRefs, for jobs that take its results (gh-18):
        # kept until this future is dropped, unlike ``refs``.
        self.outputs: list[Any] = []
        self.keep_remote: frozenset[int] = frozenset()
        self.abandoned = False
        self.overdue: int | None = None  # token of a call that timed out
        # The tasks whose results this one takes (weakly: a chain's futures
        # must not keep each other alive), for ``RayBackend._cancel``.
        self.sources: tuple[weakref.ref[_Watched], ...] = ()
        # Worker processes of this machine found running it when daglite
        # force-cancelled it (``psutil.Process``): it is over once they exit.
        self.killed: list[Any] = []

    def cancel(self) -> bool:
        """Cancel a queued or unstarted task; force-cancel a running one and return False."""
        if self.done():
            return self.cancelled()
        return self.backend._cancel(self)

    def settle(self, ok: bool, value: Any) -> None:
        """Set the result (``ok``) or the exception, unless abandoned or done."""
        if self.abandoned:
            self.stopped()
            return
        try:
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except InvalidStateError:  # done meanwhile
            pass

    def stopped(self) -> None:
        """The task is over: read as cancelled (if not done meanwhile)."""
        if not self.done() and super().cancel():
            self.set_running_or_notify_cancel()


# -- connecting: one Ray cluster per process ---------------------------------------------------


@final
class _Connection:
    """Who made this process's Ray connection, and how many backends use it."""

    lock: ClassVar[threading.Lock] = threading.Lock()
    ours = False  # daglite called ray.init (and so calls ray.shutdown)
    address: str | None = None  # what it was asked for (None: a local instance)
    users = 0


def _connect(ray: Any, address: str | None, options: dict[str, Any]) -> bool:
    """Initialise Ray unless it is already; True if this backend uses daglite's connection.

    Raises:
        BackendError: If daglite already connected this process to another cluster.
    """
    with _Connection.lock:
        if ray.is_initialized():
            if not _Connection.ours:
                return False  # the user's connection: use it, never shut it down
            if address != _Connection.address:
                raise BackendError(
                    f"this process is already connected to the Ray cluster "
                    f"{_Connection.address or 'started locally'!r}, and Ray connects a "
                    f"process to one cluster; cannot connect to {address or 'a local one'!r}"
                    " as well: shut the other RayBackend down first"
                )
        else:
            ray.init(address=address, **options)
            _Connection.ours, _Connection.address = True, address
        _Connection.users += 1
        return True


def _disconnect(ray: Any) -> None:
    """One backend is done with daglite's connection; the last one shuts it down."""
    with _Connection.lock:
        _Connection.users -= 1
        if _Connection.users > 0 or not _Connection.ours:
            return
        _Connection.ours, _Connection.address = False, None
        # A local instance stops with it; a cluster is only disconnected from.
        ray.shutdown()


def _all_nodes_here(ray: Any) -> bool:
    """Whether every live node of the cluster runs on this machine (the hub is reachable)."""
    import socket

    here = {"127.0.0.1", "localhost", socket.gethostname()}
    try:
        here.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    here.add(ray.util.get_node_ip_address())
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return all(n.get("NodeManagerAddress") in here for n in nodes)


# -- the backend -------------------------------------------------------------------------------


class RayBackend(Backend):
    """Runs tasks on Ray: a local instance daglite starts, or your cluster.

    Args:
        address: Cluster address (``"host:6379"``, ``"ray://host:10001"``,
            ``"auto"``); default ``DAGLITE_RAY_ADDRESS``, else a local
            instance started on first use and shut down at interpreter exit.
            A connection you made with ``ray.init`` is used as it is.
        max_workers: CPUs of the local instance (default: usable CPUs); on a
            cluster, the most daglite tasks in flight at once (default: no
            limit beyond the cluster's CPUs).
        remote_threshold: Results larger than this many bytes stay in Ray's
            object store and reach hooks as ``RemoteResult`` stand-ins.
        **init_options: Passed to ``ray.init`` (``runtime_env``,
            ``object_store_memory``, ``log_to_driver``, ...).

    Raises:
        BackendError: If ``ray`` is not installed.
    """

    name: ClassVar[str] = "ray"
    # Ready calls are packed up to this many per Ray task: Ray's per-task cost
    # (hundreds of microseconds) dwarfs a trivial call.
    max_batch: ClassVar[int] = 32
    # gh-18: a call goes to Ray as soon as its inputs' jobs did, with their
    # ObjectRefs as arguments: Ray chains the tasks on the cluster.
    accepts_pending_inputs: ClassVar[bool] = True

    def __init__(
        self,
        address: str | None = None,
        max_workers: int | None = None,
        *,
        remote_threshold: int = DEFAULT_REMOTE_THRESHOLD,
        **init_options: Any,
    ) -> None:
        _import_ray()
        if max_workers is not None and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        if remote_threshold < 0:
            raise ValueError(f"remote_threshold must be 0 or more, got {remote_threshold!r}")
        self.address = address or os.environ.get(ADDRESS_ENV) or None
        self.max_workers = max_workers
        self.remote_threshold = remote_threshold
        self.init_options = init_options
        self._limit: int | None = None  # most tasks in flight (a cluster's max_workers)
        # The caller's multiprocessing authkey, for workers on this machine only.
        self._authkey = b""
        self._ours = False
        self._lock = threading.Lock()
        self._in_flight: dict[str, _Watched] = {}
        self._queued: deque[_Watched] = deque()
        self._launched = 0
        # Tasks handed to Ray so far, and how many of them Ray's io thread had
        # taken in at the last ``_await_io_thread`` (see ``_before_cancel``).
        self._launches = 0
        self._launches_taken = 0
        # Where tasks are claimed by their workers or stopped by this caller,
        # when every node runs on this machine (see ``_claims``).
        self._claims: str | None = None
        self._claims_gone: Callable[[], Any] = lambda: None
        self._claims_seen = False  # a worker was seen to claim a task
        # Tasks stopped before they started, with when to take them out of
        # Ray's queue if still there, and whether a thread watches them.
        self._unstarted: dict[str, tuple[float, _Watched]] = {}
        self._sweeping = False
        self._in_callback = threading.local()
        # Force-cancelled tasks whose worker processes must exit before they
        # read as over: (processes, what to do then), and whether a thread waits.
        self._exiting: list[tuple[list[Any], Callable[[], None]]] = []
        self._reaping = False
        self._routes: dict[str, Callable[[Any], None]] = {}
        self._remote_job: Any = None
        self._remote_plain: Any = None
        self._relay: Any = None
        self._relay_thread: threading.Thread | None = None
        self._relay_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Connect to Ray (starting a local instance if need be) and prepare the tasks."""
        ray = _import_ray()
        self._ours = _connect(ray, self.address, self._init_options())
        self._remote_job = ray.remote(num_returns=2, max_retries=0)(_run_job)
        self._remote_plain = ray.remote(max_retries=0)(_run_plain)
        if self.address is not None and self.max_workers is not None:
            self._limit = self.max_workers
        if self.max_workers is None:
            cpus = ray.cluster_resources().get("CPU")
            self.max_workers = max(1, int(cpus)) if cpus else None
        here = _all_nodes_here(ray)
        if here:
            self._authkey = bytes(multiprocessing.current_process().authkey)
            if getattr(ray._raylet, "setproctitle", None) is not None:  # workers title themselves
                self._claims = claims = tempfile.mkdtemp(prefix="daglite-ray-")
                # Removed by stop(), or at exit if this backend never stops.
                self._claims_gone = weakref.finalize(self, shutil.rmtree, claims, True)
        if self._needs_relay(here):
            self._start_relay(ray)

    @property
    def _instance_of_ours(self) -> bool:
        """Whether this backend runs on the local Ray instance daglite started."""
        return self._ours and self.address is None

    def _init_options(self) -> dict[str, Any]:
        """``ray.init`` options: quiet by default; a local instance gets its CPUs."""
        options: dict[str, Any] = {
            "logging_level": logging.ERROR,  # Ray's own notices; errors still show
            "log_to_driver": False,  # task logging comes home through daglite's bridge
        }
        if self.address is None:
            n = self.max_workers or usable_cpu_count()
            self.max_workers = n
            options["num_cpus"] = n
            options["include_dashboard"] = False
            # Workers import what the caller can (like a spawned process pool):
            # task functions are pickled by reference when their module is importable.
            path = os.pathsep.join(p for p in sys.path if p)
            options["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        options.update(self.init_options)
        return options

    def stop(self) -> None:
        """Fail what is in flight, and disconnect (a local instance daglite started stops)."""
        with self._lock:
            outers = list(self._in_flight.values())
            self._in_flight.clear()
            self._queued.clear()
            self._launched = 0
            relay, self._relay = self._relay, None
            self._relay_stop.set()
            self._claims = None
        for outer in outers:
            outer.settle(False, BackendError("the ray backend was stopped"))
        self._claims_gone()  # a task that has not started yet never will
        ray = _import_ray()
        if relay is not None:
            try:
                ray.kill(relay)
            except Exception:  # the cluster is gone already
                logger.debug("could not stop the relay actor", exc_info=True)
        if self._ours:
            self._ours = False
            _disconnect(ray)

    def cancel_running(self) -> None:
        """Stop every task this backend has in flight, and wait until Ray has stopped them.

        A running task is cancelled with ``force=True``: its worker process is
        killed, on a local instance or a cluster alike.
        """
        with self._lock:
            outers = list(self._in_flight.values())
        for outer in outers:
            outer.cancel()
        _, late = wait_for_futures(outers, timeout=_STOP_TIMEOUT)
        if late:
            logger.warning("%d Ray task(s) were not stopped in time", len(late))

    # -- events ------------------------------------------------------------------

    def event_transport(self, sink: Callable[[Any], None]) -> Transport:
        """A transport for one evaluation's worker messages; ``_Overdue`` stays here."""
        route = uuid.uuid4().hex
        self.ensure_started()
        with self._lock:
            self._routes[route] = sink
            relay = self._relay
        if relay is not None:
            return _RayTransport(relay, route, self)
        from daglite._job import transport

        hub = transport._hub()
        hub.route(route, partial(self._on_message, sink))
        return _RayTransport(hub.transport(), route, self)

    def _unroute(self, route: str) -> None:
        with self._lock:
            self._routes.pop(route, None)
        from daglite._job import transport

        hub = transport._HUB
        if hub is not None:
            hub.unroute(route)

    def _on_message(self, sink: Callable[[Any], None], message: Any) -> None:
        """A worker message (hub reader or relay thread): ours, or the run's."""
        if type(message) is _Overdue:
            self._overdue(message)
        else:
            sink(message)

    def _needs_relay(self, all_nodes_here: bool) -> bool:
        """Whether worker messages need the relay actor (some node cannot reach the hub)."""
        return not all_nodes_here

    def _start_relay(self, ray: Any) -> None:
        """Start the relay actor and the thread that drains it (cluster nodes elsewhere)."""
        self._relay = ray.remote(num_cpus=0)(_Relay).remote()
        self._relay_stop.clear()
        self._relay_thread = threading.Thread(
            target=self._drain_relay, args=(self._relay,), name="daglite-ray-relay", daemon=True
        )
        self._relay_thread.start()

    def _drain_relay(self, relay: Any) -> None:
        """Hand the relay's messages to their runs until the backend stops."""
        ray = _import_ray()
        while self._relay is relay:
            try:
                batch = ray.get(relay.take.remote())
            except Exception:  # stopped, or the cluster went away
                logger.debug("the Ray relay stopped answering", exc_info=True)
                return
            if not batch:
                self._relay_stop.wait(_RELAY_POLL)  # a poll interval; stop() cuts it short
                continue
            for data in batch:
                route, message = pickle.loads(data)
                sink = self._routes.get(route)
                if sink is not None:
                    self._on_message(sink, message)

    def _overdue(self, message: _Overdue) -> None:
        """A call timed out: kill its worker, so the runaway really stops."""
        with self._lock:
            outer = self._in_flight.get(message.job_key)
        if outer is None or not outer.refs:
            return
        outer.overdue = message.token
        try:
            self._force_cancel(outer)
        except Exception:  # over already, or Ray is gone: its result will tell
            logger.debug("could not stop an overdue Ray task", exc_info=True)

    # -- submit ------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn`` as one Ray task; remote results it takes go in as ``ObjectRef`` s.

        Raises:
            BackendError: If ``fn`` takes a remote result no longer attached to Ray.
        """
        self.ensure_started()
        from daglite._job.job import _Job

        key = uuid.uuid4().hex
        sources: list[_Watched] = []
        if isinstance(fn, _Job):
            launch, sources = self._job_launcher(fn, key)
        else:
            claims = self._claims
            launch = partial(lambda: [self._remote_plain.remote(key, claims, fn, args, kwargs)])
        outer = _Watched(self, key, launch)
        if isinstance(fn, _Job):
            outer.keep_remote = fn.keep_remote
            outer.sources = tuple(weakref.ref(source) for source in sources)
        with self._lock:
            self._in_flight[key] = outer
            if self._limit is not None and self._launched >= self._limit:
                self._queued.append(outer)
                return outer
            self._launched += 1
        self._launch(outer)
        return outer

    def _job_launcher(self, job: Any, key: str) -> tuple[Callable[[], list[Any]], list[_Watched]]:
        """How to launch ``job``'s Ray task, and the tasks whose results it takes."""
        kept = _kept_inputs(job)
        sources, pending = self._pending_inputs(job)
        payload = pickle.dumps(job, protocol=_PICKLE_PROTOCOL)
        remote = self._remote_job
        options = self._task_options(job)
        if options:
            remote = remote.options(**options)
        threshold, authkey, claims = self.remote_threshold, self._authkey, self._claims

        def launch() -> list[Any]:
            wiring, inputs = _wire(kept, sources, pending)
            refs: list[Any] = remote.remote(
                key, payload, threshold, authkey, claims, wiring, *inputs
            )
            return refs

        return launch, list(sources.values())

    def _pending_inputs(self, job: Any) -> tuple[dict[str, _Watched], dict[int, str]]:
        """The jobs this job's pending inputs come from, by key, and each marker's job key.

        Raises:
            BackendError: If a pending input was not submitted to this backend.
        """
        sources: dict[str, _Watched] = {}
        pending: dict[int, str] = {}
        for call in job.calls:
            kwargs = getattr(call, "kwargs", None)
            if not kwargs:
                continue
            for marker in find(kwargs, PendingResult):
                source = marker.future
                if not isinstance(source, _Watched) or source.backend is not self:
                    raise BackendError(
                        f"the input of task {getattr(call, 'name', '?')!r} (call "
                        f"{marker.token}) is pending on another backend than this Ray backend"
                    )
                sources[source.key] = source
                pending[marker.token] = source.key
                # The job outlives its run in the engine's callbacks: a marker
                # holding its source's future (and so its outcomes, stand-ins
                # and their ObjectRefs) would keep a whole chain's values alive.
                marker.future = None
        return sources, pending

    def _task_options(self, job: Any) -> dict[str, Any]:
        """gh-15: a job's named resources as Ray options, on a cluster of yours.

        ``job.resources`` holds the most of each resource any of its calls
        holds. The local instance daglite starts declares no resources of
        yours (a task asking would wait forever): there daglite's own gate
        in the caller is the only limit, as on Dask's embedded cluster.
        """
        if not job.resources or self._instance_of_ours:
            return {}
        return _ray_resources(job.resources)

    def _launch(self, outer: _Watched) -> None:
        """Hand ``outer``'s task to Ray and relay its end to ``outer``."""
        launch, outer.launch = outer.launch, None
        try:
            assert launch is not None
            refs = launch()
        except BaseException as exc:  # never leave the engine waiting
            self._finished(outer)
            outer.settle(False, exc)
            return
        with self._lock:  # counted before a cancel can see the refs
            self._launches += 1
        outer.refs = outer.outputs = refs
        refs[0].future().add_done_callback(partial(self._relay_result, outer))

    def _cancel(self, outer: _Watched) -> bool:
        """The engine gave up on ``outer``: forget it if queued, else stop it.

        Returns:
            Whether ``outer`` reads as cancelled already: it was queued here,
            or stopped before its worker started it.
        """
        with self._lock:
            queued = outer.launch is not None
            if queued:
                self._queued.remove(outer)
                self._in_flight.pop(outer.key, None)
            outer.abandoned = True
        if queued:
            outer.stopped()
            return True
        try:
            return self._force_cancel(outer)
        except Exception:  # over already, or Ray is gone: its result will tell
            logger.debug("could not cancel a Ray task", exc_info=True)
        return False

    def _force_cancel(self, outer: _Watched) -> bool:
        """Stop ``outer``'s task: before it starts, or by killing the worker running it.

        Ray then sees that worker die, and fails the task (no retries).

        Returns:
            Whether ``outer`` reads as cancelled already (stopped before it started).
        """
        claims = self._claims
        with self._lock:
            if outer.key not in self._in_flight:
                return False  # Ray reported it over already
        if claims is None:
            self._ray_cancel(outer)
            return False
        pid = stop_or_find(claims, outer.key)
        if pid is None:  # its worker will find the stop mark and return at once
            return self._stopped_before_start(outer)
        import psutil

        try:
            process = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return False  # the worker is gone: Ray fails the task
        if kill_titled([process], TITLE_PREFIX + outer.key):  # unless it has moved on
            outer.killed = [*outer.killed, process]
        return False

    def _stopped_before_start(self, outer: _Watched) -> bool:
        """``outer``'s task will run nothing: read it as cancelled now, if that is sure.

        It is sure once a task of this backend was seen to claim its file (the
        workers see this directory). The Ray task itself ends when it gets a
        worker; on a cluster of yours, one still queued after ``_START_GRACE``
        is taken out of Ray's queue (it may wait for a resource no node has).
        """
        if not self._instance_of_ours:
            self._unless_ended(outer)
        if self._claims_seen:
            outer.stopped()
            return True
        return False

    def _unless_ended(self, outer: _Watched) -> None:
        """``ray.cancel`` ``outer`` (stopped before it started) if Ray has not ended it in time."""
        with self._lock:
            # Cancelled twice (the engine, then ``cancel_running``): one deadline.
            self._unstarted.setdefault(outer.key, (time.monotonic() + _START_GRACE, outer))
            if self._sweeping:
                return
            self._sweeping = True
        threading.Thread(target=self._sweep, name="daglite-ray-stops", daemon=True).start()

    def _sweep(self) -> None:
        """Take the tasks in ``_unstarted`` still in Ray past their grace out of its queue."""
        while True:
            now = time.monotonic()
            with self._lock:
                left = {k: v for k, v in self._unstarted.items() if k in self._in_flight}
                due = [outer for at, outer in left.values() if at <= now]
                self._unstarted = {k: v for k, v in left.items() if v[0] > now}
                if not left:
                    self._sweeping = False
                    return
                until = min((at for at, _ in self._unstarted.values()), default=now)
            for outer in due:
                try:
                    self._ray_cancel(outer)
                except Exception:  # over already, or Ray is gone: its result will tell
                    logger.debug("could not cancel a Ray task", exc_info=True)
            time.sleep(max(0.0, until - time.monotonic()))  # till the next deadline

    def _ray_cancel(self, outer: _Watched) -> None:
        """``ray.cancel(force=True)`` ``outer``'s task (a cluster with nodes elsewhere).

        Ray 2.60 can abort this process when the cancel races the task being
        handed to its worker, or that task's reply ("Tried to complete task
        that was not pending"): on this machine ``_claims`` avoids it.
        """
        if _an_input_failed(outer):
            # Ray fails it without running it, and a cancel racing that
            # failure's reply can abort this process: it ends on its own.
            return
        self._before_cancel()
        _import_ray().cancel(outer.refs[0], force=True)

    def _before_cancel(self) -> None:
        """Wait until Ray has taken in every task launched so far, unless it has already."""
        with self._lock:
            launches = self._launches
        if launches == self._launches_taken:
            return
        if getattr(self._in_callback, "active", False):
            # On Ray's io thread itself: waiting for it would never end, and
            # whatever was handed to it before this callback is taken in.
            return
        if not _await_io_thread(_import_ray()):
            logger.warning("Ray did not answer in %.0f s; cancelling anyway", _IO_TIMEOUT)
            return
        with self._lock:
            self._launches_taken = max(self._launches_taken, launches)

    def _relay_result(self, outer: _Watched, result: Future[Any]) -> None:
        """The Ray task is over (Ray's callback thread): settle ``outer`` from it."""
        self._in_callback.active = True
        try:
            self._settle_from(outer, result)
        finally:
            self._in_callback.active = False

    def _settle_from(self, outer: _Watched, result: Future[Any]) -> None:
        """Settle ``outer`` from its Ray task's end, once its worker is gone if killed."""
        self._finished(outer)
        self._forget_claim(outer, result)
        killed, outer.killed = outer.killed, []
        if killed and _ended_by_a_kill(result.exception()):
            self._after_exit(killed, partial(self._settle_now, outer, result))
        else:
            self._settle_now(outer, result)

    def _forget_claim(self, outer: _Watched, result: Future[Any]) -> None:
        """Remove ``outer``'s claim file; check the workers see the claims directory.

        A task that ran to its end claimed its file, unless its worker cannot
        see this directory (another mount namespace, ``PrivateTmp``): then
        claims cannot stop anything, and ``ray.cancel`` is used instead.
        """
        claims = self._claims
        if claims is None:
            return
        claimed = forget(claims, outer.key)
        if outer.abandoned or result.exception() is not None:
            return
        if claimed:
            self._claims_seen = True
        elif not self._claims_seen and self._claims is claims:
            self._claims = None
            logger.warning(
                "Ray workers cannot see %s: daglite stops their tasks with ray.cancel", claims
            )

    def _after_exit(self, processes: list[Any], then: Callable[[], None]) -> None:
        """Call ``then`` once ``processes`` (killed workers of this machine) have exited.

        Ray reports a force-cancelled task over once the kill is under way; its
        worker process can still be there for a moment. The wait is on a
        thread of its own, not Ray's callback thread.
        """
        with self._lock:
            self._exiting.append((processes, then))
            if self._reaping:
                return
            self._reaping = True
        threading.Thread(target=self._reap, name="daglite-ray-exits", daemon=True).start()

    def _reap(self) -> None:
        """Wait for the killed workers of the tasks in ``_exiting``, then settle them."""
        while True:
            with self._lock:
                batch, self._exiting = self._exiting, []
                if not batch:
                    self._reaping = False
                    return
            try:
                processes = [process for killed, _ in batch for process in killed]
                if wait_exited(processes, _EXIT_TIMEOUT):
                    logger.warning("a killed Ray worker did not exit in %.0f s", _EXIT_TIMEOUT)
            except Exception:  # never leave the engine waiting
                logger.debug("could not wait for killed Ray workers", exc_info=True)
            for _, then in batch:
                try:
                    then()
                except Exception:  # one bad settle must not strand the others
                    logger.exception("could not settle a cancelled Ray task")

    def _settle_now(self, outer: _Watched, result: Future[Any]) -> None:
        """Settle ``outer`` from the future of its Ray task's first output."""
        if outer.abandoned:
            outer.stopped()
            return
        exc = result.exception()
        if exc is not None:
            outer.settle(False, _map_error(exc, outer.overdue))
            return
        value = result.result()
        if len(outer.refs) > 1:
            _attach(value, outer.refs[1])
        outer.refs = []  # from now on only the stand-ins keep kept values alive
        outer.settle(True, value)

    def _finished(self, outer: _Watched) -> None:
        """``outer`` left Ray: launch the next queued task, if a limit held it back."""
        with self._lock:
            if self._in_flight.pop(outer.key, None) is None:
                return  # forgotten by stop(): the counts were reset there
            self._launched -= 1
            following = self._queued.popleft() if self._queued else None
            if following is not None:
                self._launched += 1
        if following is not None:
            self._launch(following)

    # -- results -----------------------------------------------------------------

    def materialize(self, value: Any) -> Any:
        """``value`` with every ``RemoteResult`` in it fetched from the object store."""
        found: dict[str, RemoteResult] = {}
        for stand_in in find(value, RemoteResult):
            found.setdefault(stand_in.key, stand_in)
        if not found:
            return value
        ray = _import_ray()
        refs = [_ref_of(s) for s in found.values()]
        kept = dict(zip(found, ray.get(refs)))
        return _swap_in(value, kept)

    def __repr__(self) -> str:
        where = self.address or "local instance"
        return f"<RayBackend {where} max_workers={self.max_workers}>"


def _an_input_failed(outer: _Watched) -> bool:
    """Whether a Ray task ``outer`` takes a result from failed or was cancelled.

    Then Ray fails ``outer``'s task too, without running any of its calls.
    """
    for ref in outer.sources:
        source = ref()
        if source is None or not source.done():
            continue
        if source.cancelled() or source.exception() is not None:
            return True
    return False


def _await_io_thread(ray: Any) -> bool:
    """Wait until Ray's io thread has handled all this process handed it so far.

    ``.remote()`` queues a task for the io thread, which resolves its inputs
    later. ``ray.cancel`` of a task whose inputs are ready but which the io
    thread has not reached yet kills the whole process (Ray 2.60: "Check failed:
    it->second.submitted_task_ref_count > 0", reference_counter.cc): the cancel
    releases the task's references, then the queued submission releases them
    again. Ray runs an object's completion callbacks on that same thread, after
    what was queued before: the callback of a fresh object marks the point.

    Returns:
        False if the io thread did not get there in ``_IO_TIMEOUT`` seconds.
    """
    done, _ = wait_for_futures([ray.put(None).future()], timeout=_IO_TIMEOUT)
    return bool(done)


def _ray_resources(needs: Mapping[str, float]) -> dict[str, Any]:
    """Ray task options for named resource amounts (``cpu``, ``gpu``, anything else custom)."""
    options: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for name, amount in needs.items():
        low = name.lower()
        if low in {"cpu", "cpus", "num_cpus"}:
            options["num_cpus"] = amount
        elif low in {"gpu", "gpus", "num_gpus"}:
            options["num_gpus"] = amount
        else:
            custom[name] = amount
    if custom:
        options["resources"] = custom
    return options


def _ref_of(stand_in: RemoteResult) -> Any:
    if stand_in._ref is None:
        raise BackendError(
            f"the remote result {stand_in.key!r} is not attached to a Ray object; "
            "fetch it with .result() in the process that ran evaluate before passing it on"
        )
    return stand_in._ref


def _kept_inputs(job: Any) -> dict[str, Any]:
    """``ObjectRef`` of the kept values among the job's arguments, by job key."""
    found: dict[str, Any] = {}
    for call in job.calls:
        kwargs = getattr(call, "kwargs", None)
        if kwargs:
            for stand_in in find(kwargs, RemoteResult):
                if stand_in.key not in found:
                    found[stand_in.key] = _ref_of(stand_in)
    return found


def _wire(
    kept: dict[str, Any], sources: dict[str, _Watched], pending: dict[int, str]
) -> tuple[_Wiring | None, list[Any]]:
    """A job's Ray arguments: the ObjectRefs of its inputs, and which is which.

    A kept value (a stand-in's) is in its job's second return. A pending
    input is there too when its job keeps it (``keep_remote``), is big, or
    went home early; else it is among the outcomes (first return), so both
    are passed unless the value surely stays apart.

    Raises:
        BackendError: If a job a pending input comes from never reached Ray.
    """
    if not kept and not sources:
        return None, []
    values = dict(kept)
    outcomes: dict[str, Any] = {}
    for key, source in sources.items():
        refs = source.outputs
        if len(refs) < 2:
            raise BackendError(f"the Ray job {key!r} an input comes from was never started")
        values.setdefault(key, refs[1])
        if any(t not in source.keep_remote for t, k in pending.items() if k == key):
            outcomes[key] = refs[0]
    wiring = _Wiring(tuple(values), tuple(outcomes), pending)
    return wiring, [*values.values(), *outcomes.values()]


def _attach(outcomes: list[Any], ref: Any) -> None:
    for outcome in outcomes:
        if isinstance(outcome.value, RemoteResult):
            outcome.value._ref = ref


def _worker_death_errors(rex: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the worker (or its node) running a task died."""
    return (
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.LocalRayletDiedError,
        rex.OutOfMemoryError,
        rex.ObjectLostError,
        rex.RaySystemError,
    )


def _ended_by_a_kill(exc: BaseException | None) -> bool:
    """Whether a Ray task's end says its worker was killed (not: it returned or raised)."""
    if exc is None:
        return False
    from ray import exceptions as rex

    return isinstance(exc, (rex.TaskCancelledError, *_worker_death_errors(rex)))


def _map_error(exc: BaseException, overdue: int | None) -> BaseException:
    """Map Ray's errors at the boundary: a dead or killed worker becomes ``WorkersLost``."""
    from ray import exceptions as rex

    if overdue is not None:
        lost = WorkersLost(
            {overdue: (True, "timed out; its Ray task was cancelled with force=True")},
            "a Ray worker was killed to stop a call that timed out",
        )
    elif isinstance(exc, rex.TaskCancelledError):
        return BackendError(f"the Ray task was cancelled outside daglite ({exc})")
    elif isinstance(exc, rex.RayTaskError) and not isinstance(exc, rex.RaySystemError):
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, BaseException) else exc
    elif isinstance(exc, _worker_death_errors(rex)):
        # Blame nobody: Ray does not say which call of the job ran when the
        # worker died. The engine reruns the job's calls alone and blames a repeat.
        lost = WorkersLost({}, f"the Ray worker running it died ({type(exc).__name__}: {exc})")
    else:
        return exc
    lost.__cause__ = exc
    return lost
