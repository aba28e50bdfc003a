"""Limits on native thread pools (BLAS, OpenMP, numexpr, numba) of workers.

Libraries such as OpenBLAS, MKL and libgomp start one thread per core when
they load. With N worker processes on C cores that makes N x C threads
fighting over C cores, and a numpy or scikit-learn task runs several times
slower than it would with ``C // N`` threads per worker. Two tools fix that:

* Environment variables (``OMP_NUM_THREADS`` and friends), read by each
  library once, when it loads. ``ProcessBackend`` hands them to its workers'
  initializer, which sets them before any task is unpickled, hence before the
  task's imports load a library. They travel as an initializer argument, not
  through the caller's environment, because a worker started by the
  forkserver inherits the forkserver's environment (frozen when that shared
  process started), not the caller's at the time of the pool's start.
* ``threadpoolctl``, which changes the limits of libraries already loaded.
  ``ThreadBackend`` uses it around each job, and a process worker uses it when
  a library was loaded before its initializer ran (forkserver preload).

The caller never changes its own environment.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

from daglite.settings import usable_cpu_count

__all__ = [
    "THREAD_VARIABLES",
    "NativeThreads",
    "WorkerLimits",
    "apply_worker_limits",
    "call_limited",
    "check_native_threads",
    "threads_per_worker",
    "worker_limits",
]

NativeThreads: TypeAlias = int | Literal["auto"] | None

# The variables the common native pools read when they load. Each one the
# caller's environment already has is passed on unchanged under "auto".
THREAD_VARIABLES: Final = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)

# Modules whose presence means a native pool may be loaded. Checking these is
# a few dict lookups; asking threadpoolctl scans every loaded shared library
# (milliseconds), so it is done only when one of these is imported.
# numpy covers scipy, scikit-learn, pandas, numexpr and numba, which import it.
_NATIVE_MODULES: Final = ("numpy", "torch")

# (variables to set in the worker, limit for pools already loaded there or None)
WorkerLimits: TypeAlias = tuple[dict[str, str], int | None]


def check_native_threads(value: object) -> NativeThreads:
    """``value`` if it is a valid ``native_threads`` setting.

    Raises:
        ValueError: If it is not ``"auto"``, None or a positive int.
    """
    if value is None:
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"native_threads must be 'auto', None or an int > 0, got {value!r}")


def threads_per_worker(setting: NativeThreads, workers: int) -> int | None:
    """Native threads each of ``workers`` may start, or None to leave pools alone."""
    if setting is None or isinstance(setting, int):
        return setting
    return max(1, usable_cpu_count() // workers)


def worker_limits(setting: NativeThreads, workers: int) -> WorkerLimits | None:
    """What a process worker applies at start (``apply_worker_limits``), or None.

    Under ``"auto"`` a variable set in the caller's environment keeps its value,
    and pools already loaded in the worker are then left alone; an explicit
    count wins over the environment.
    """
    count = threads_per_worker(setting, workers)
    if count is None:
        return None
    if setting != "auto":
        return dict.fromkeys(THREAD_VARIABLES, str(count)), count
    env = {var: os.environ.get(var) or str(count) for var in THREAD_VARIABLES}
    user_set = any(os.environ.get(var) for var in THREAD_VARIABLES)
    return env, None if user_set else count


_worker_limiter: Any = None


def apply_worker_limits(limits: WorkerLimits) -> None:
    """Set the thread variables in this worker; limit pools that loaded earlier."""
    env, count = limits
    os.environ.update(env)
    if count is not None and _native_loaded():
        from threadpoolctl import ThreadpoolController

        global _worker_limiter
        _worker_limiter = _limit_released(ThreadpoolController(), count)


def _native_loaded() -> bool:
    modules = sys.modules
    return any(name in modules for name in _NATIVE_MODULES)


def _release_openblas() -> None:
    """Let any thread set OpenBLAS's limit next.

    threadpoolctl 3.8 lets only one thread (the first to set it) change the
    limit of a process-wide OpenBLAS pool and silently ignores the others, so
    a limit set by one job's thread could not be restored by another's.
    daglite sets and restores under its own lock and hands control back each
    time. Older threadpoolctl versions have no such control: nothing to do.
    """
    import threadpoolctl

    clear = getattr(
        getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None
    )
    if clear is not None:
        clear(force=True)


def _limit_released(controller: Any, count: int) -> Any:
    """``controller.limit(limits=count)`` from any thread; returns the limiter."""
    _release_openblas()
    try:
        return controller.limit(limits=count)
    finally:
        _release_openblas()


def _restore_released(limiter: Any) -> None:
    _release_openblas()
    try:
        limiter.restore_original_limits()
    finally:
        _release_openblas()


class _SharedLimit:
    """The native thread limit of a thread pool's jobs.

    Pools come in two kinds. OpenMP runtimes (and BLAS built on OpenMP) keep
    their limit per thread: each job sets it in its own thread and restores it
    when it ends. OpenBLAS's pthreads pool, MKL and BLIS keep one limit for the
    whole process: nesting a limit per job would let the first job to end
    restore the original under jobs still running, and the last restore the
    limit as if it were the original. So jobs share that one: the first to
    start sets it, the last to end restores it, under a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._shared: Any = None  # the process-wide limiter while jobs run
        self._per_thread: Any = None  # controller of the per-thread pools
        self._process_wide: Any = None  # controller of the process-wide pools
        self._modules_seen = -1

    def enter(self, count: int) -> Any:
        """Start of a job in this thread; returns what ``exit`` needs."""
        with self._lock:
            self._users += 1
            if not _native_loaded():
                return None
            self._scan()
            if self._shared is None:
                self._shared = _limit_released(self._process_wide, count)
            per_thread = self._per_thread
        return per_thread.limit(limits=count)

    def exit(self, local: Any) -> None:
        """End of a job in this thread (``local``: what ``enter`` returned)."""
        if local is not None:
            local.restore_original_limits()
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._shared is not None:
                shared, self._shared = self._shared, None
                _restore_released(shared)

    def _scan(self) -> None:
        """Find the loaded pools again if modules were imported since the last scan.

        A scan takes milliseconds; a limit through the kept controllers, ~10 us.
        """
        seen = len(sys.modules)
        if seen == self._modules_seen:
            return
        from threadpoolctl import ThreadpoolController

        everything = ThreadpoolController()
        per_thread = everything.select(user_api="openmp", threading_layer="openmp")
        local = {lib.filepath for lib in per_thread.lib_controllers}
        wide = [lib.filepath for lib in everything.lib_controllers if lib.filepath not in local]
        self._per_thread = per_thread
        self._process_wide = everything.select(filepath=wide)
        self._modules_seen = seen


_shared_limit: Final = _SharedLimit()


def call_limited(count: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the native pools held at ``count`` threads.

    Process-wide pools are shared by concurrent calls: the first call's count
    holds until the last call ends.
    """
    local = _shared_limit.enter(count)
    try:
        return fn(*args, **kwargs)
    finally:
        _shared_limit.exit(local)
