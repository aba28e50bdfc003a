"""gh-15: per-task memory limits on the processes backend, and what other backends do."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from daglite import (
    EvaluationError,
    TaskError,
    TaskMemoryError,
    WorkerLostError,
    evaluate,
    task,
)
from daglite.backends import ProcessBackend

LIMIT = "150MB"


def _hog() -> None:
    """Grow past any limit used here, then wait to be stopped (never returns on its own)."""
    held = []
    for _ in range(100):  # up to 1 GB, 10 MB at a time, each page written
        held.append(b"x" * 10_000_000)
    threading.Event().wait(60)  # the limit should have stopped this worker by now
    raise AssertionError(f"not stopped at {len(held)} chunks")


@pytest.fixture
def pool():
    with ProcessBackend(max_workers=2) as backend:
        yield backend


def test_task_over_its_memory_limit_fails_with_task_memory_error(pool: ProcessBackend) -> None:
    @task(memory=LIMIT)
    def greedy(x: int) -> int:
        _hog()
        return x

    with pytest.raises(TaskMemoryError) as info:
        evaluate(greedy(1), backend=pool)
    err = info.value
    assert isinstance(err, TaskError)
    assert err.task_name == "greedy"
    assert err.key == "greedy"
    assert err.limit == 150_000_000
    assert err.peak >= err.limit
    assert "task 'greedy'" in str(err)
    assert "limit of 150 MB" in str(err)
    assert "peak seen" in str(err)
    assert isinstance(err.error, MemoryError)
    # The worker was replaced: the next run works.
    assert evaluate(task(lambda: 7)(), backend=pool) == 7


def test_other_tasks_go_on_unaffected(pool: ProcessBackend) -> None:
    @task(memory=LIMIT)
    def greedy(x: int) -> int:
        _hog()
        return x

    @task(memory="2GB")
    def modest(x: int) -> int:
        return x * 10

    dag = [greedy(1), *(modest(i) for i in range(6))]
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=pool, on_error="continue")
    assert list(info.value.errors) == ["greedy"]
    assert isinstance(info.value.errors["greedy"], TaskMemoryError)
    assert sorted(info.value.results.values()) == [0, 10, 20, 30, 40, 50]


def test_memory_error_is_retried(pool: ProcessBackend, tmp_path: Path) -> None:
    marker = tmp_path / "tried"

    @task(memory=LIMIT, retries=1)
    def greedy_once(x: int) -> int:
        if not marker.exists():
            marker.write_text("1")
            _hog()
        return x

    assert evaluate(greedy_once(5), backend=pool) == 5


def test_memory_per_task_is_the_default_limit(pool: ProcessBackend) -> None:
    @task
    def greedy(x: int) -> int:
        _hog()
        return x

    @task(memory="2GB")
    def own_limit(x: int) -> int:
        return x

    with pytest.raises(TaskMemoryError, match="task 'greedy'.*limit of 150 MB"):
        evaluate(greedy(1), backend=pool, memory_per_task=LIMIT)
    assert evaluate(own_limit(3), backend=pool, memory_per_task="1kB") == 3


def test_sigkilled_worker_names_the_signal_and_hints_at_memory(pool: ProcessBackend) -> None:
    @task
    def killed(x: int) -> int:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return x

    with pytest.raises(WorkerLostError, match=r"SIGKILL.*out-of-memory killer.*memory=") as info:
        evaluate(killed(1), backend=pool)
    assert not isinstance(info.value, TaskMemoryError)


@pytest.mark.parametrize("backend", ["inline", "threads"])
def test_memory_limit_is_not_enforced_in_process(backend: str) -> None:
    # Threads share one process: its RSS cannot be told apart per task, and a
    # thread cannot be stopped. The option is accepted so a DAG runs anywhere.
    @task(memory="1kB")
    def big(x: int) -> int:
        return len(b"x" * 1_000_000) + x

    assert evaluate(big(1), backend=backend) == 1_000_001


# -- the watch's wake-up pipe ---------------------------------------------------------


def _wake_forever(waker) -> None:
    from daglite.backends._process_worker import poke

    while True:
        poke(waker.fileno())


def test_a_worker_killed_while_waking_the_watch_leaves_nothing_held() -> None:
    # A worker killed while waking the watch (stopped for memory, or
    # terminated with its broken pool) must hold nothing that the caller or
    # the other workers then wait for: a multiprocessing.Event's lock did,
    # and hung the start of the next pool.
    import multiprocessing
    import select

    from daglite.backends._memory import MemoryWatch
    from daglite.backends._process_worker import poke

    ctx = multiprocessing.get_context("spawn")
    wake, waker = ctx.Pipe(duplex=False)
    os.set_blocking(wake.fileno(), False)
    os.set_blocking(waker.fileno(), False)
    for _ in range(3):
        child = ctx.Process(target=_wake_forever, args=(waker,), daemon=True)
        child.start()
        select.select([wake.fileno()], [], [], 60)  # it is waking, again and again
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    poke(waker.fileno())  # the pipe may be full: this returns at once all the same
    watch = MemoryWatch([0] * 12, wake, waker)
    done = threading.Event()

    def stop() -> None:
        watch.stop()
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    assert done.wait(30), "stopping the watch blocked"
    assert not watch._thread.is_alive()
    assert wake.closed and waker.closed


def test_a_limited_call_after_a_pool_was_replaced_is_still_watched(pool: ProcessBackend) -> None:
    # The first pool breaks (a worker stopped for memory); the next pool's
    # watch wakes on its own pipe.
    @task(memory=LIMIT)
    def hog() -> None:
        _hog()

    for _ in range(2):
        with pytest.raises(TaskMemoryError):
            evaluate(hog(), backend=pool)
