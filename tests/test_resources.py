"""gh-15: named resources: a run never has more calls holding one than its capacity."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from daglite import evaluate, task
from daglite.backends import ProcessBackend, ThreadBackend


class _Meter:
    """Counts the calls inside at once, across threads or processes (a Manager's objects)."""

    def __init__(self, manager: Any, parties: int) -> None:
        self.lock = manager.Lock()
        self.inside = manager.Value("i", 0)
        self.peak = manager.Value("i", 0)
        # Two callers must be inside together to pass, so a run that allows
        # two at once shows it, whatever the scheduling.
        self.barrier = manager.Barrier(parties, timeout=60)

    def visit(self) -> None:
        with self.lock:
            self.inside.value += 1
            self.peak.value = max(self.peak.value, self.inside.value)
        self.barrier.wait()
        with self.lock:
            self.inside.value -= 1


@pytest.fixture
def manager() -> Iterator[Any]:
    with multiprocessing.Manager() as m:
        yield m


def _gpu_task(meter: _Meter) -> Any:
    @task(resources={"gpu": 1})
    def train(x: int) -> int:
        meter.visit()
        return x * 2

    return train


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_resource_capacity_is_never_exceeded(pool: str, manager: Any) -> None:
    meter = _Meter(manager, parties=2)
    train = _gpu_task(meter)
    backend = ThreadBackend(max_workers=4) if pool == "threads" else ProcessBackend(max_workers=3)
    with backend:
        out = evaluate(train.product(x=list(range(6))), backend=backend, resources={"gpu": 2})
    assert out == [0, 2, 4, 6, 8, 10]
    assert meter.peak.value == 2


def test_resource_capacity_holds_across_the_backends_of_one_run(manager: Any) -> None:
    meter = _Meter(manager, parties=1)

    @task(resources={"gpu": 1}, backend="threads")
    def on_threads(x: int) -> int:
        meter.visit()
        return x

    @task(resources={"gpu": 1}, backend="processes")
    def on_processes(x: int) -> int:
        meter.visit()
        return x

    @task
    def total(a: list[int], b: list[int]) -> int:
        return sum(a) + sum(b)

    dag = total(on_threads.product(x=[1, 2, 3]), on_processes.product(x=[4, 5, 6]))
    assert evaluate(dag, resources={"gpu": 1}) == 21
    assert meter.peak.value == 1


def test_tasks_without_resources_are_not_held_back() -> None:
    gate_open = threading.Event()

    @task(resources={"gpu": 1})
    def hold(x: int) -> int:
        assert gate_open.wait(30), "a task without resources was held back"
        return x

    @task
    def free(x: int) -> int:
        gate_open.set()
        return x

    dag = [hold(1), free(2)]
    assert evaluate(dag, backend="threads", max_workers=2, resources={"gpu": 1}) == [1, 2]


def test_resources_on_inline_and_with_retries() -> None:
    attempts: list[int] = []

    @task(resources={"gpu": 2}, retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return x

    @task(resources={"gpu": 1})
    def after(x: int) -> int:
        return x + 1

    assert evaluate(after(flaky(1)), resources={"gpu": 2}) == 2
    assert attempts == [1, 1, 1]


def test_a_failed_task_gives_its_resources_back() -> None:
    @task(resources={"gpu": 1})
    def boom(x: int) -> int:
        raise ValueError(x)

    @task(resources={"gpu": 1})
    def fine(x: int) -> int:
        return x

    from daglite import EvaluationError

    with pytest.raises(EvaluationError) as info:
        evaluate(
            [boom(1), fine(2), fine(3)],
            backend="threads",
            on_error="continue",
            resources={"gpu": 1},
        )
    assert set(info.value.errors) == {"boom"}
    assert sorted(info.value.results.values()) == [2, 3]


def test_resources_pass_through_to_a_dask_cluster_of_yours() -> None:
    distributed = pytest.importorskip("distributed")
    from daglite.backends.dask import DaskBackend

    @task(resources={"gpu": 1})
    def restrictions(x: int) -> dict[str, float]:
        from distributed.worker import thread_state

        worker = distributed.get_worker()
        return dict(worker.state.tasks[thread_state.key].resource_restrictions or {})

    @task
    def plain(x: int) -> dict[str, float]:
        from distributed.worker import thread_state

        worker = distributed.get_worker()
        return dict(worker.state.tasks[thread_state.key].resource_restrictions or {})

    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            # A worker process: one in this process would leave the log bridge's
            # worker-side handler installed here for the tests after this one.
            processes=True,
            resources={"gpu": 2},
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
        DaskBackend(client=client) as backend,
    ):
        out = evaluate([restrictions(1), plain(2)], backend=backend, resources={"gpu": 2})
    assert out == [{"gpu": 1}, {}]
