"""Real concurrency on the threads and processes backends, and mixing backends in one DAG."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import threading
import time
from typing import Any

import psutil
import pytest

from daglite import TaskError, evaluate, task
from daglite.backends import ProcessBackend
from daglite.plugins.hooks import hook_impl

WAIT = 30.0  # deadlock detector only
POOLS = ["threads", "processes"]


@pytest.fixture(scope="module")
def mp_manager():
    with multiprocessing.get_context("forkserver").Manager() as manager:
        yield manager


class BackendNames:
    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    @hook_impl
    def before_node_execute(self, key, metadata):
        self.names[key] = metadata.backend_name


@task
def meet(barrier: Any, i: int) -> int:
    barrier.wait(WAIT)  # raises BrokenBarrierError unless all n tasks run at once
    return i


@pytest.mark.parametrize("backend", POOLS)
def test_n_workers_run_n_tasks_at_once(backend, mp_manager):
    n = 4
    barrier = mp_manager.Barrier(n)
    dag = meet.product(barrier=[barrier], i=list(range(n)))
    assert evaluate(dag, backend=backend, max_workers=n) == list(range(n))


@task
def wait_for(gate: Any) -> bool:
    return gate.wait(WAIT)


@task
def step(x: int) -> int:
    return x + 1


@task
def open_gate(x: int, gate: Any) -> int:
    gate.set()
    return x


@task
def both(slow: bool, fast: int) -> tuple[bool, int]:
    return slow, fast


@pytest.mark.parametrize("backend", POOLS)
def test_node_submitted_as_soon_as_its_inputs_are_ready(backend, mp_manager):
    # The slow branch waits for the last node of a three-level fast chain. A
    # level-by-level scheduler would wait for the slow root before starting the chain.
    gate = mp_manager.Event()
    fast = open_gate(step(step(0)), gate)
    assert evaluate(both(wait_for(gate), fast), backend=backend, max_workers=2) == (True, 2)


@task(backend="threads")
def on_threads() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


@task
def where() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


@task
def gather(a: Any, b: Any, c: Any) -> list[Any]:
    return [a, b, c]


def test_mixing_backends_in_one_dag():
    on_processes = where.with_options(backend="processes", name="on_processes")
    names = BackendNames()
    caller = (os.getpid(), threading.get_ident())
    dag = gather(on_threads(), on_processes(), where())
    threaded, processed, inline = evaluate(dag, backend="inline", plugins=[names])
    assert threaded[0] == caller[0] and threaded[1] != caller[1]
    assert processed[0] != caller[0]
    assert inline == caller
    assert names.names == {
        "on_threads": "threads",
        "on_processes": "processes",
        "where": "inline",
        "gather": "inline",
    }
    assert where.backend is None  # with_options left the original unchanged


def test_task_backend_wins_over_evaluate_backend():
    names = BackendNames()
    pid, _ = evaluate(where.with_options(backend="inline")(), backend="processes", plugins=[names])
    assert pid == os.getpid()
    assert names.names == {"where": "inline"}


def test_local_functions_closures_lambdas_and_classes_on_processes():
    factor = 3

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

        def scaled(self) -> int:
            return self.x * factor

    def helper(p: Point) -> int:
        return p.scaled() + 1

    make = task(lambda x: Point(x), name="make")
    use = task(lambda p: (os.getpid(), helper(p), type(p).__name__), name="use")

    pid, value, type_name = evaluate(use(make(2)), backend="processes")
    assert pid != os.getpid()
    assert (value, type_name) == (7, "Point")

    @task
    def returns_instance(x: int) -> Point:
        return Point(x)

    point = evaluate(returns_instance(5), backend="processes")
    assert point.scaled() == 15


@task
async def async_double(x: int) -> tuple[int, int]:
    await asyncio.sleep(0)
    return os.getpid(), 2 * x


@pytest.mark.parametrize("backend", POOLS)
def test_async_tasks(backend):
    results = evaluate(async_double.product(x=[1, 2, 3]), backend=backend)
    assert [v for _, v in results] == [2, 4, 6]
    pids = {pid for pid, _ in results}
    assert (os.getpid() in pids) == (backend == "threads")


@pytest.mark.parametrize("backend", POOLS)
def test_async_closure(backend):
    offset = 5

    @task
    async def shifted(x: int) -> int:
        await asyncio.sleep(0)
        return x + offset

    assert evaluate(shifted.product(x=[1, 2]), backend=backend) == [6, 7]


def test_processes_workers_are_other_processes(mp_manager):
    n = 2
    barrier = mp_manager.Barrier(n)

    @task
    def pid_at_barrier(barrier: Any, i: int) -> int:
        barrier.wait(WAIT)
        return os.getpid()

    dag = pid_at_barrier.product(barrier=[barrier], i=list(range(n)))
    pids = evaluate(dag, backend="processes", max_workers=n)
    assert os.getpid() not in pids
    assert len(set(pids)) == n  # they met at the barrier, so two distinct workers


def _gone(pids: set[int], deadline: float) -> set[int]:
    """Pids still alive (not reaped) when they are all gone or the deadline passes."""
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                alive.discard(pid)
        if alive:
            time.sleep(0.05)  # bounded polling for process exit, not synchronisation
    return alive


def test_backend_as_context_manager_leaves_no_child_processes(mp_manager):
    barrier = mp_manager.Barrier(2)

    @task
    def pid_at_barrier(barrier: Any, i: int) -> int:
        barrier.wait(WAIT)
        return os.getpid()

    with ProcessBackend(max_workers=2) as backend:
        pids = evaluate(pid_at_barrier.product(barrier=[barrier], i=[0, 1]), backend=backend)
        assert set(pids) <= set(backend.worker_pids())
    assert len(set(pids)) == 2
    assert _gone(set(pids), time.monotonic() + 20) == set()
    assert not (set(pids) & {p.pid for p in psutil.Process().children(recursive=True)})


class OpenGateOnError:
    """Opens the gate when the engine learns of a failure (in the caller).

    It waits for single nodes to start (``before_node_execute``), so the
    fan-out below runs call by call in batched jobs rather than in slices (the
    bulk path).
    """

    def __init__(self, gate: Any) -> None:
        self.gate = gate

    @hook_impl
    def before_node_execute(self, key):
        pass

    @hook_impl
    def on_node_error(self, key):
        self.gate.set()


@task
def fail_first_then_wait(i: int, gate: Any, seen: Any) -> int:
    if i == 0:
        raise ValueError("first call fails at once")
    seen.put(gate.wait(WAIT))
    return i


@pytest.mark.parametrize("backend", POOLS)
def test_quick_failure_is_not_held_back_by_a_long_call_in_the_same_job(backend, mp_manager):
    # One worker and four calls: calls 0 and 1 travel in one job. Call 1 blocks
    # until the caller has seen call 0 fail, which it only can if that outcome
    # goes home while call 1 still runs.
    if backend == "threads":
        gate, seen = threading.Event(), queue.Queue()
    else:
        gate, seen = mp_manager.Event(), mp_manager.Queue()
    dag = fail_first_then_wait.product(i=list(range(4)), gate=[gate], seen=[seen])
    with pytest.raises(TaskError, match="first call fails at once"):
        evaluate(dag, backend=backend, max_workers=1, plugins=[OpenGateOnError(gate)])
    opened = seen.get(timeout=WAIT)
    assert opened is True, "call 1 waited in vain: call 0's failure did not reach the caller"
