"""Native thread pools (BLAS, OpenMP) in workers: ``native_threads`` (issue 12).

Each task imports numpy and reads ``threadpoolctl.threadpool_info()`` where it
runs, so the figures are the worker's own, not the caller's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

np = pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")

from daglite import evaluate, task  # noqa: E402
from daglite.backends import InlineBackend, ProcessBackend, ThreadBackend  # noqa: E402
from daglite.backends._native import THREAD_VARIABLES, _SharedLimit  # noqa: E402
from daglite.settings import usable_cpu_count  # noqa: E402

WAIT = 30.0  # deadlock detector only
START_METHODS = ["forkserver", "spawn"]


@pytest.fixture(autouse=True)
def _no_thread_variables():
    """The caller's environment sets none of the variables unless a test does,
    and is put back as it was afterwards (Dask's nannies change it too)."""
    saved = dict(os.environ)
    for var in THREAD_VARIABLES:
        os.environ.pop(var, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@task
def native_state(i: int = 0) -> dict[str, Any]:
    """Thread variables and native pool sizes as seen where the task runs."""
    import numpy  # noqa: F401  (loads OpenBLAS, if it was not loaded yet)
    import threadpoolctl

    pools = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
    env = {var: os.environ.get(var) for var in THREAD_VARIABLES}
    return {"pid": os.getpid(), "env": env, "pools": pools}


def _pools_here() -> list[int]:
    return [p["num_threads"] for p in threadpoolctl.threadpool_info()]


def _pools_of_fresh_interpreter() -> list[int]:
    """Pool sizes numpy gets in a new interpreter with this environment."""
    code = (
        "import numpy, threadpoolctl;"
        "print([p['num_threads'] for p in threadpoolctl.threadpool_info()])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(eval(out.stdout))


def _run_on(backend: Any, n: int = 4) -> list[dict[str, Any]]:
    with backend:
        return evaluate(native_state.product(i=list(range(n))), backend=backend)


# -- processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_process_workers_get_cores_per_worker_by_default(start_method):
    expected = max(1, usable_cpu_count() // 2)
    before = dict(os.environ)
    states = _run_on(ProcessBackend(max_workers=2, start_method=start_method))
    for state in states:
        assert state["env"] == dict.fromkeys(THREAD_VARIABLES, str(expected))
        assert state["pools"] and all(n == expected for n in state["pools"]), state
    assert dict(os.environ) == before  # the caller's environment is left as it was


@pytest.mark.parametrize("start_method", START_METHODS)
def test_process_workers_explicit_count_wins_over_environment(monkeypatch, start_method):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    states = _run_on(ProcessBackend(max_workers=1, start_method=start_method, native_threads=1))
    for state in states:
        assert state["env"] == dict.fromkeys(THREAD_VARIABLES, "1")
        assert state["pools"] and all(n == 1 for n in state["pools"]), state


def test_process_workers_keep_variables_the_caller_set(monkeypatch):
    # The forkserver runs first with none of the variables set, then the caller
    # sets one: workers must see the caller's value, not the forkserver's.
    _run_on(ProcessBackend(max_workers=1, start_method="forkserver", native_threads=None), n=1)
    expected = str(max(1, usable_cpu_count() // 2))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    states = _run_on(ProcessBackend(max_workers=2, start_method="forkserver"))
    for state in states:
        assert state["env"]["OPENBLAS_NUM_THREADS"] == "2"
        others = {k: v for k, v in state["env"].items() if k != "OPENBLAS_NUM_THREADS"}
        assert others == dict.fromkeys(others, expected)


def test_process_workers_left_alone_when_turned_off():
    states = _run_on(ProcessBackend(max_workers=2, start_method="spawn", native_threads=None))
    fresh = _pools_of_fresh_interpreter()
    for state in states:
        assert state["env"] == dict.fromkeys(THREAD_VARIABLES)
        assert state["pools"] == fresh


_PRELOAD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, threadpoolctl
    from daglite import evaluate, task

    @task
    def pools(i):
        import numpy, sys
        return [p["num_threads"] for p in threadpoolctl.threadpool_info()]

    multiprocessing.set_forkserver_preload(["numpy"])
    print(evaluate(pools.product(i=[0, 1]), backend="processes", max_workers=2,
                   start_method="forkserver", native_threads=1))
    """
)


def test_process_workers_limit_pools_loaded_before_the_initializer():
    # With numpy preloaded by the forkserver, OpenBLAS read its variables before
    # the worker's initializer ran: only threadpoolctl can limit it then.
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", _PRELOAD_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout) == [[1], [1]]


# -- threads -----------------------------------------------------------------------------


@task
def pools_while_both_run(barrier: Any, i: int) -> list[int]:
    barrier.wait(WAIT)  # both tasks run at once
    pools = _pools_here()
    barrier.wait(WAIT)  # neither finishes before the other has looked
    return pools


def _run_threads_pair(backend: ThreadBackend) -> list[list[int]]:
    barrier = threading.Barrier(2)
    with backend:
        dag = pools_while_both_run.product(barrier=[barrier], i=[0, 1])
        return evaluate(dag, backend=backend)


def test_threads_share_one_limit_while_tasks_run():
    expected = max(1, usable_cpu_count() // 2)
    before = _pools_here()
    results = _run_threads_pair(ThreadBackend(max_workers=2))
    assert results == [[expected] * len(before)] * 2
    assert _pools_here() == before  # restored when the last task finished


def test_threads_explicit_count():
    before = _pools_here()
    results = _run_threads_pair(ThreadBackend(max_workers=2, native_threads=1))
    assert results == [[1] * len(before)] * 2
    assert _pools_here() == before


def test_threads_left_alone_when_turned_off():
    with threadpoolctl.threadpool_limits(limits=1):  # a limit the caller chose
        before = _pools_here()
        results = _run_threads_pair(ThreadBackend(max_workers=2, native_threads=None))
        assert results == [before, before]


def test_shared_limit_is_restored_by_the_last_job_to_end_in_any_thread():
    # Job A starts first and ends first; job B, in another thread, ends last
    # and must restore the limits A set (threadpoolctl alone would ignore it).
    before = _pools_here()
    shared = _SharedLimit()
    seen: list[list[int]] = []
    a_started, a_ended = threading.Event(), threading.Event()

    def job_a() -> None:
        local = shared.enter(1)
        a_started.set()
        b_started.wait(WAIT)
        shared.exit(local)
        a_ended.set()

    def job_b() -> None:
        a_started.wait(WAIT)
        local = shared.enter(1)
        b_started.set()
        a_ended.wait(WAIT)
        seen.append(_pools_here())  # A has ended, B still runs: still limited
        shared.exit(local)

    b_started = threading.Event()
    threads = [threading.Thread(target=job_a), threading.Thread(target=job_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert seen == [[1] * len(before)]
    assert _pools_here() == before


# -- inline, options ---------------------------------------------------------------------


def test_inline_leaves_native_pools_alone():
    before = _pools_here()
    (state,) = _run_on(InlineBackend(), n=1)
    assert state["pools"] == before
    assert state["env"] == dict.fromkeys(THREAD_VARIABLES)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "all", "4"])
@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_bad_native_threads_names_the_parameter(backend, bad):
    with pytest.raises(ValueError, match=r"native_threads must be 'auto', None or an int > 0"):
        evaluate(native_state(), backend=backend, native_threads=bad)


@pytest.mark.parametrize("cls", [ThreadBackend, ProcessBackend])
def test_native_threads_is_a_constructor_argument(cls):
    assert cls().native_threads == "auto"
    assert cls(native_threads=None).native_threads is None
    assert cls(native_threads=3).native_threads == 3


# -- dask ----------------------------------------------------------------------------------


def test_dask_workers_get_dasks_own_limits():
    # daglite sets nothing on Dask: the nanny of each worker sets OMP, MKL and
    # OpenBLAS to 1 ("distributed.nanny.pre-spawn-environ") unless the caller's
    # environment has them. The embedded cluster's nannies live in this process
    # and leave them in its environment (the autouse fixture puts it back).
    pytest.importorskip("distributed")
    from daglite.backends.dask import DaskBackend

    (state,) = _run_on(DaskBackend(max_workers=1), n=1)
    assert state["pid"] != os.getpid()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert state["env"][var] == "1"
    assert state["env"]["NUMEXPR_NUM_THREADS"] is None
    assert state["pools"] and all(n == 1 for n in state["pools"])
