"""The ``Backend`` contract: one required method, ``submit``.

A backend receives picklable callables (daglite's jobs) and returns
``concurrent.futures.Future`` objects, exactly like ``Executor.submit``. The
callable carries its own way home to the caller's plugins, so a subclass that
implements only ``submit`` gets every hook and event guarantee.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from daglite._job.segment_pool import SegmentPool

__all__ = ["Backend", "WorkersLost", "mark_pool_thread", "pool_thread_backend"]

# Which backend's pool runs the current thread (gh-15), set by the pool.
_pool_thread = threading.local()


def mark_pool_thread(backend: Backend) -> None:
    """Say that the current thread is a worker of ``backend``'s thread pool.

    A pool's thread ``initializer`` calls it. A run started by a task on such
    a thread is nested in that pool's budget: it may take back its own jobs
    the pool has not started yet and run them on the waiting thread (see
    ``ThreadBackend``), so a pool whose every thread waits still gets on.
    """
    _pool_thread.backend = backend


def pool_thread_backend() -> Backend | None:
    """The backend whose thread pool runs the current thread, or None."""
    found: Backend | None = getattr(_pool_thread, "backend", None)
    return found


class WorkersLost(Exception):
    """What a backend's future fails with when workers died under a job.

    The worker-loss contract: a backend that can tell which calls of the job
    died with their worker (the processes backend reads it from the slot each
    worker keeps) names them in ``lost``, by call token, as ``(timed_out,
    description)``; those calls fail with ``WorkerLostError`` (or
    ``TaskTimeoutError`` when the worker was ended for a timeout) and may be
    retried. The job's other calls were not at fault and are resubmitted. A
    backend that cannot tell (Dask fails every task queued on a dying worker
    alike) names none: then every call of the job is rerun alone
    (quarantine), and one that loses its worker there is blamed.

    A backend that stopped a worker because the call's memory passed its
    ``memory=`` limit (gh-15) also names it in ``over_memory``, by token, as
    ``(limit, peak)`` in bytes: that call fails with ``TaskMemoryError``.

    Any other exception from a backend's future fails every call of the job
    with that exception.

    Args:
        lost: Token of each call that died with its worker, to
            ``(timed_out, description)``.
        message: What happened, for logs.
        over_memory: Token of each call stopped for its memory, to ``(limit, peak)``.
    """

    def __init__(
        self,
        lost: dict[int, tuple[bool, str]],
        message: str,
        over_memory: dict[int, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(message)
        self.lost = lost
        self.over_memory = over_memory or {}


class Backend(ABC):
    """Where tasks run.

    Attributes:
        name: Registry name shown in ``GraphMetadata.backend_name``.
        max_workers: How many tasks run at once (None: unknown). Used to size batches.
        max_batch: Most task calls daglite packs into one ``submit``. Batching
            ready tasks amortises per-submit costs; 1 turns it off.
        max_chain: Most calls of a dependency chain (each the only consumer of
            the one before) daglite sends in one ``submit``, to run one after
            another where it lands, without a round trip through the caller
            per call. None (the default): ``max_batch``.
        runs_in_caller: True only for a backend whose ``submit`` would run the
            call right away on the calling thread (inline); the engine then runs
            the call itself and skips the executor round trip.
        shared_memory_threshold: For a backend whose jobs are pickled to other
            processes of this machine: buffers of this many bytes or more in
            arguments and results travel through shared memory instead of the
            pipe, and results stay there until needed (see ``docs/data.md``).
            None (the default): off.
        shared_memory_pool: With ``shared_memory_threshold``: most bytes of
            job-argument segments kept, mapped, for the next jobs to reuse
            (a copy into them runs at memory speed) until ``shutdown``.
            None (the default): none kept.
        accepts_pending_inputs: True for a backend that chains jobs itself
            (Dask, Ray): the engine then submits a call before the calls it
            takes results from are done, as soon as those are submitted to
            this same backend. Where such a result goes, the call's arguments
            (``job.calls[n].kwargs``, in containers too) hold a
            ``daglite._job.records.PendingResult``: ``token`` names the call
            that produces it, ``future`` is the future this backend's
            ``submit`` returned for the job running that call. The backend
            must run the job once those jobs are done, with each marker
            replaced by the value its call returned, and leave out of the
            job's outcomes (skip) a call whose input call failed or did not
            run. The engine never submits a job with pending inputs to a
            backend without this attribute.
    """

    name: ClassVar[str] = "custom"
    max_batch: ClassVar[int] = 64
    max_chain: ClassVar[int | None] = None
    runs_in_caller: ClassVar[bool] = False
    accepts_pending_inputs: ClassVar[bool] = False
    max_workers: int | None = None
    shared_memory_threshold: int | None = None
    shared_memory_pool: int | None = None

    _started: bool = False
    _segments: SegmentPool | None = None
    _segments_finalizer: Callable[[], Any]
    _start_lock: ClassVar[threading.Lock] = threading.Lock()

    @abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` and return a future for its result."""

    def start(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Acquire resources (pools, clusters). Called once, on first use."""

    def stop(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Release resources; the backend may be started again later."""

    def cancel_running(self) -> None:
        """Stop work in flight as fast as possible (on interrupt). Default: ``stop()``."""
        self.stop()

    def starts_processes(self) -> bool:
        """Whether this backend starts worker processes of its own (a local pool or cluster).

        A run nested in a task on a worker process uses the inline backend in
        place of such a backend (gh-15), so a worker never starts a pool of its
        own. Default: False.
        """
        return False

    def event_transport(self, sink: Callable[[Any], None]) -> Any:
        """A transport for events from this backend's workers, or None for the default.

        Backends whose workers cannot reach the caller's local socket (Dask on a
        remote cluster) return one built on their own channels.
        """
        return None

    def materialize(self, value: Any) -> Any:
        """Turn a result this backend returned into the value itself.

        Called on the results ``evaluate`` returns, and on the inputs of
        tasks on other backends. Backends that keep results on remote workers
        return stand-ins from their jobs and fetch them here; the default
        returns ``value`` unchanged. A backend that overrides it also gets,
        in ``job.keep_remote``, the tokens of the calls whose results the
        caller does not need at all: those may stay on its workers whatever
        their size.
        """
        return value

    def ensure_started(self) -> None:
        """Start the backend if it is not running yet (thread-safe)."""
        if not self._started:
            with self._start_lock:
                if not self._started:
                    self.start()
                    self._started = True

    def shutdown(self) -> None:
        """Stop the backend if it was started, and free the segments it keeps for reuse."""
        with self._start_lock:
            if self._started:
                self._started = False
                self.stop()
            segments, self._segments = self._segments, None
        if segments is not None:
            self._segments_finalizer()  # closes them, once, and is not kept for exit

    def segment_pool(self) -> SegmentPool | None:
        """The job-argument segments this backend keeps for reuse (``shared_memory_pool``).

        Made on first use; None when there is nothing to keep. Freed by
        ``shutdown``, when the backend is garbage-collected, or at exit.
        """
        if not self.shared_memory_pool or not self.shared_memory_threshold:
            return None
        with self._start_lock:
            if self._segments is None:
                import weakref

                from daglite._job.segment_pool import SegmentPool

                self._segments = SegmentPool(self.shared_memory_pool)
                self._segments_finalizer = weakref.finalize(self, self._segments.close)
            return self._segments

    def __enter__(self) -> Backend:
        self.ensure_started()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        workers = f" max_workers={self.max_workers}" if self.max_workers else ""
        return f"<{type(self).__name__}{workers}>"
