"""Runs tasks in worker processes of a ``ProcessPoolExecutor``.

Data flow::

    engine ──submit(job)──> ProcessPoolExecutor ──pickle──> worker: job() -> outcomes
       ^                                                       │   │
       │<─────────────── outcomes (results + buffered events) ─┘   │
       │<── _Hub socket <── events of long tasks (flusher thread) ─┘

Jobs serialise task functions and inputs with cloudpickle (see
``daglite._job``). Each worker records the token of the call it runs in a
shared array; when a worker dies, the pool breaks, and this backend uses that
array to fail only the lost call (``WorkersLost``), rebuilds the pool, and
lets the engine resubmit the other in-flight calls.

Start method: ``forkserver`` where available, else ``spawn``. ``fork`` is
unsafe here: the caller runs daglite's own threads (hub, flusher, pools) and
often the user's, and a forked child can inherit a lock held by one of them.

Native thread pools: each worker's initializer sets ``OMP_NUM_THREADS`` and
friends (``daglite.backends._native``) before it unpickles any task. They travel as an
initializer argument because forkserver workers inherit the environment of the
shared forkserver process, not the caller's current one.

Workers never import the caller's ``__main__``: task functions travel by value
(cloudpickle), so there is nothing to gain from it, and skipping it means a
script without an ``if __name__ == "__main__":`` guard, or code piped through
stdin, works instead of re-running itself in every worker.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context as mp_context
import os
import signal
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from multiprocessing import popen_forkserver, popen_spawn_posix
from typing import Any, ClassVar, Final, Literal

from daglite._job.shared import DEFAULT_THRESHOLD
from daglite._limits import format_bytes
from daglite.backends._memory import MemoryWatch
from daglite.backends._native import NativeThreads, check_native_threads, worker_limits
from daglite.backends._process_worker import (
    LIMIT,
    OVER_MEMORY,
    PEAK,
    SLOT_WIDTH,
    TIMED_OUT,
    TIMEOUT_EXIT_CODE,
    TOKEN,
    init_pool_worker,
)
from daglite.backends.base import Backend, WorkersLost
from daglite.exceptions import BackendError
from daglite.settings import usable_cpu_count

__all__ = ["ProcessBackend"]

# A pool that breaks this many times in a row without running anything is
# considered unusable (bad environment), rather than rebuilt forever.
_MAX_EMPTY_BREAKS: Final = 5
# How long ``stop`` waits for a broken pool's reaper; the pool's manager thread
# has already terminated its workers by then, so this is only a backstop.
_REAP_TIMEOUT: Final = 30.0


def default_start_method() -> str:
    """``DAGLITE_START_METHOD``, else forkserver where available, else spawn."""
    wanted = os.environ.get("DAGLITE_START_METHOD")
    if wanted:
        return wanted
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


_main_lock = threading.Lock()


@contextmanager
def _main_hidden() -> Any:
    """Show multiprocessing a ``__main__`` with no file while a worker is launched."""
    with _main_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _SpawnPopen(popen_spawn_posix.Popen):
    def _launch(self, process_obj: Any) -> None:
        with _main_hidden():
            super()._launch(process_obj)  # type: ignore[misc]


class _SpawnProcess(mp_context.SpawnProcess):
    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _SpawnPopen(process_obj)


class _SpawnContext(mp_context.SpawnContext):
    Process = _SpawnProcess


class _ForkServerPopen(popen_forkserver.Popen):
    def _launch(self, process_obj: Any) -> None:
        with _main_hidden():
            super()._launch(process_obj)  # type: ignore[misc]


class _ForkServerProcess(mp_context.ForkServerProcess):
    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _ForkServerPopen(process_obj)


class _ForkServerContext(mp_context.ForkServerContext):
    Process = _ForkServerProcess


def _make_context(start_method: str) -> Any:
    """A multiprocessing context whose workers skip importing ``__main__``."""
    if start_method == "spawn" and sys.platform != "win32":
        return _SpawnContext()
    if start_method == "forkserver":
        return _ForkServerContext()
    return multiprocessing.get_context(start_method)


class ProcessBackend(Backend):
    """A pool of worker processes; lambdas and closures work (cloudpickle).

    Args:
        max_workers: Worker count (default: CPUs usable by this process).
        start_method: ``"forkserver"``, ``"spawn"`` (or ``"fork"`` at your own risk).
        native_threads: Threads each worker's native pools (BLAS, OpenMP, numexpr,
            numba) may start. ``"auto"``: usable CPUs // workers (at least 1), set
            through ``OMP_NUM_THREADS`` and friends unless the caller's environment
            has them; an int: that count, whatever the environment says; None:
            leave the pools and the variables alone.
        shared_memory_threshold: Buffers (numpy arrays, pandas blocks, pyarrow
            buffers, bytes) of this many bytes or more travel through shared
            memory, both ways, and results stay there until needed. Default:
            ``DAGLITE_SHM_THRESHOLD`` if set, else 1 MiB; 0 or None turns it off.
        shared_memory_pool: Most bytes of job-argument segments kept, mapped,
            for later jobs to reuse: a copy into memory already mapped runs
            at memory speed, where fresh shared memory costs a fault per page.
            Freed by ``shutdown()``. Default: 1 GiB, or an eighth of
            ``/dev/shm`` if that is less; 0 or None keeps none.

    Raises:
        ValueError: If ``max_workers``, ``native_threads`` or
            ``shared_memory_threshold`` or ``shared_memory_pool`` is out of range.
    """

    name: ClassVar[str] = "processes"
    max_batch: ClassVar[int] = 256
    # A chain runs call after call anyway: a job's round trip (~4 ms: pickled,
    # sent, run, sent back) is paid once per this many calls, and finished
    # calls are sent home early while a job runs long (``FLUSH_INTERVAL``).
    max_chain: ClassVar[int | None] = 4096

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        native_threads: int | Literal["auto"] | None = "auto",
        shared_memory_threshold: int | Literal["default"] | None = "default",
        shared_memory_pool: int | Literal["default"] | None = "default",
    ) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError(f"max_workers must be greater than 0, got {max_workers!r}")
        self.shared_memory_threshold = _threshold(shared_memory_threshold)
        self.shared_memory_pool = _pool_limit(shared_memory_pool)
        self.native_threads: NativeThreads = check_native_threads(native_threads)
        self._workers = max_workers or usable_cpu_count()
        self.max_workers = self._workers
        self.start_method = start_method or default_start_method()
        self._context = _make_context(self.start_method)
        self._lock = threading.RLock()
        self._pool: ProcessPoolExecutor | None = None
        self._slots: Any = None
        self._generation = 0
        # What died when a pool broke, by generation. Filled from the pool's own
        # manager thread (see ``_relay``) under ``_lost_lock`` only.
        self._lost: dict[int, WorkersLost] = {}
        self._lost_lock = threading.Lock()
        self._pools_by_generation: dict[int, tuple[Any, Any]] = {}
        self._reapers: list[threading.Thread] = []
        self._watch: MemoryWatch | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start a pool of worker processes."""
        with self._lock:
            self._new_pool()

    def _new_pool(self) -> None:
        ctx = self._context
        slots = ctx.RawArray("q", SLOT_WIDTH * (self._workers * 2 + 2))
        wake, waker = ctx.Pipe(duplex=False)
        os.set_blocking(wake.fileno(), False)
        os.set_blocking(waker.fileno(), False)
        if self._watch is not None:
            self._watch.stop(wait=False)  # it watched the pool this one replaces
        self._watch = MemoryWatch(slots, wake, waker)
        self._slots = slots
        self._generation += 1
        # The previous generation stays: its manager thread may report the
        # break after the next ``submit`` has already replaced the pool.
        previous = self._pools_by_generation.get(self._generation - 1)
        self._pools_by_generation = {self._generation: (None, slots)}
        if previous is not None:
            self._pools_by_generation[self._generation - 1] = previous
        self._pool = ProcessPoolExecutor(
            self._workers,
            mp_context=ctx,
            initializer=init_pool_worker,
            initargs=(
                slots,
                ctx.Lock(),
                os.getpid(),
                worker_limits(self.native_threads, self._workers),
                waker,
            ),
        )
        self._pools_by_generation[self._generation] = (self._pool, slots)

    def stop(self) -> None:
        """Shut the pool down, and wait for the shutdown of pools replaced after a break."""
        with self._lock:
            pool, self._pool = self._pool, None
            reapers, self._reapers = self._reapers, []
            watch, self._watch = self._watch, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if watch is not None:
            watch.stop()
        for reaper in reapers:
            reaper.join(timeout=_REAP_TIMEOUT)

    def cancel_running(self) -> None:
        """Kill the workers now (interrupt); the next use starts a fresh pool."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._started = False
            watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop(wait=False)
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.kill()
        for proc in processes:
            proc.join(timeout=5)

    def starts_processes(self) -> bool:
        """True: a run nested in a worker process runs inline instead (gh-15)."""
        return True

    def worker_pids(self) -> list[int]:
        """Pids of the pool's live worker processes."""
        pool = self._pool
        return [] if pool is None else [p.pid for p in getattr(pool, "_processes", {}).values()]

    # -- submit ------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn`` to the pool, first replacing a pool that broke.

        Raises:
            BackendError: If every new pool breaks as soon as it starts.
        """
        self.ensure_started()
        outer: _Relayed = _Relayed()
        for _ in range(_MAX_EMPTY_BREAKS):
            with self._lock:
                if self._pool is None or self._generation in self._lost:
                    self._replace(self._generation)
                assert self._pool is not None
                pool, generation = self._pool, self._generation
                try:
                    inner = pool.submit(fn, *args, **kwargs)
                    break
                except (BrokenProcessPool, RuntimeError):
                    self._replace(generation)
        else:
            raise BackendError("the process pool breaks as soon as it starts; see the log")
        outer.inner = inner
        inner.add_done_callback(partial(self._relay, outer, generation))
        return outer

    def _relay(self, outer: Future[Any], generation: int, inner: Future[Any]) -> None:
        """Mirror the pool's future (runs on the pool's manager thread).

        On Python 3.12+ the pool calls this while holding its own shutdown lock
        (``_terminate_broken``), so nothing here may call into that pool or wait
        for a lock a submitter holds while calling into it: the rebuild is left
        to the next ``submit``.
        """
        if isinstance(outer, _Relayed):
            outer.inner = None  # each held the other: results waited for the cycle collector
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        try:
            if exc is None:
                outer.set_result(inner.result())
            elif isinstance(exc, BrokenProcessPool):
                outer.set_exception(self._lost_workers(generation))
            else:
                outer.set_exception(exc)
        except Exception:  # cancelled meanwhile
            pass

    def _lost_workers(self, generation: int) -> WorkersLost:
        """What died when pool ``generation`` broke, computed once per generation."""
        with self._lost_lock:
            found = self._lost.get(generation)
            if found is None:
                pool, slots = self._pools_by_generation.get(generation, (None, ()))
                found = _inspect_broken_pool(pool, slots)
                self._lost = {generation: found}
            return found

    def _replace(self, generation: int) -> None:
        """Start a new pool if ``generation`` is still the current one (holding ``_lock``).

        The old pool is shut down by a reaper thread: its manager thread may be
        busy breaking it, and ``shutdown`` waits for that.
        """
        if generation != self._generation:
            return
        old = self._pool
        self._pool = None
        if old is not None:
            reaper = threading.Thread(target=old.shutdown, name="daglite-pool-reaper", daemon=True)
            reaper.start()
            self._reapers = [r for r in self._reapers if r.is_alive()] + [reaper]
        self._new_pool()


def _threshold(value: int | Literal["default"] | None) -> int | None:
    """The shared-memory threshold asked for (None: off)."""
    if value == "default":
        found = os.environ.get("DAGLITE_SHM_THRESHOLD", "").strip().lower()
        if not found:
            return DEFAULT_THRESHOLD
        if found in ("off", "none", "no", "false"):
            return None
        try:
            value = int(found)
        except ValueError:
            raise ValueError(
                f"DAGLITE_SHM_THRESHOLD must be a number of bytes or 'off', got {found!r}"
            ) from None
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"shared_memory_threshold must be a number of bytes >= 0 or None, got {value!r}"
        )
    return value


def _pool_limit(value: int | Literal["default"] | None) -> int | None:
    """The most bytes of argument segments to keep for reuse (None: none)."""
    if value == "default":
        from daglite._job.segment_pool import default_limit

        return default_limit() or None
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value or None
    raise ValueError(f"shared_memory_pool must be a number of bytes >= 0 or None, got {value!r}")


def _inspect_broken_pool(pool: Any, slots: Any) -> WorkersLost:
    """Which calls died with their workers, from the pool's shared slot array."""
    processes = dict(getattr(pool, "_processes", {}) or {})
    lost: dict[int, tuple[bool, str]] = {}
    over_memory: dict[int, tuple[int, int]] = {}
    for base in range(0, len(slots), SLOT_WIDTH):
        pid, token = slots[base], slots[base + TOKEN]
        if pid == 0 or token == 0 or not _is_dead(pid, processes.get(pid)):
            continue
        timed_out = slots[base + TIMED_OUT] == token
        if slots[base + OVER_MEMORY] == token:  # stopped by the memory watch (gh-15)
            limit, peak = slots[base + LIMIT], slots[base + PEAK]
            over_memory[token] = (limit, peak)
            lost[token] = (False, _describe_memory_stop(pid, limit, peak))
            continue
        lost[token] = (timed_out, _describe_exit(pid, processes.get(pid), timed_out))
    return WorkersLost(lost, "a worker process of the pool died", over_memory=over_memory)


class _Relayed(Future[Any]):
    """The future handed to the engine: it mirrors the pool's future.

    It can only be cancelled while that one can (a job already running in a
    worker cannot).
    """

    inner: Future[Any] | None = None

    def cancel(self) -> bool:
        if self.inner is not None and not self.inner.cancel():
            return False
        return super().cancel()


def _is_dead(pid: int, proc: Any) -> bool:
    if proc is not None and proc.exitcode is not None:
        return True
    import psutil

    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


# gh-15: the kernel's OOM killer sends SIGKILL; a limit fails the task cleanly first.
_SIGKILL: Final = 9
_OOM_HINT: Final = (
    "SIGKILL is what the kernel's out-of-memory killer sends when memory runs out; "
    "give the task a memory= limit, e.g. @task(memory='2GB'), to fail it cleanly "
    "before that"
)


def _describe_memory_stop(pid: int, limit: int, peak: int) -> str:
    return (
        f"worker process {pid} was stopped: its memory use (peak seen: "
        f"{format_bytes(peak)}) passed the task's memory limit of {format_bytes(limit)}"
    )


def _describe_exit(pid: int, proc: Any, timed_out: bool) -> str:
    code = proc.exitcode if proc is not None else None
    if timed_out:
        return f"worker process {pid} was stopped because the task timed out"
    if code is None:
        return f"worker process {pid} died"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        described = f"worker process {pid} was killed by signal {name}"
        if -code == _SIGKILL:
            described += f" ({_OOM_HINT})"
        return described
    if code == TIMEOUT_EXIT_CODE:
        return f"worker process {pid} exited (code {code}) after a task timed out"
    return f"worker process {pid} exited with code {code}"
