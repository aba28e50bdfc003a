"""Node hooks learn when each attempt started and where it ran (``started``, ``worker``)."""

from __future__ import annotations

import os
import time

import pytest

from daglite import TaskError, evaluate, task
from daglite.plugins.hooks import hook_impl


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


class Where:
    def __init__(self) -> None:
        self.after: dict[str, tuple[float, str]] = {}
        self.errors: dict[str, tuple[float, str]] = {}
        self.retries: list[tuple[float, str]] = []

    @hook_impl
    def after_node_execute(self, key, started, worker):
        self.after[key] = (started, worker)

    @hook_impl
    def on_node_error(self, key, started, worker):
        self.errors[key] = (started, worker)

    @hook_impl
    def before_node_retry(self, started, worker):
        self.retries.append((started, worker))


def _expected_worker(backend: str, worker: str) -> bool:
    if backend == "inline":
        return worker == "caller"
    if backend == "threads":
        return worker.startswith("daglite-thread")
    if backend == "processes":
        return worker.startswith("pid ") and worker != f"pid {os.getpid()}"
    if backend == "ray":  # the node's address and the worker process
        return worker.startswith("ray ") and not worker.endswith(f" pid {os.getpid()}")
    return worker.startswith("tcp://")  # dask: the worker's address


def test_every_attempt_says_where_and_when_it_ran(backend):
    where = Where()
    before = time.time()
    evaluate(inc.product(x=list(range(20))).join(total), backend=backend, plugins=[where])
    after = time.time()
    assert len(where.after) == 21
    for key, (started, worker) in where.after.items():
        assert before <= started <= after, key
        assert _expected_worker(backend, worker), (key, worker)


def test_failed_and_retried_attempts_say_where_they_ran(backend, tmp_path):
    marker = tmp_path / "tried"

    @task(retries=1)
    def flaky(x: int) -> int:
        if not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first attempt")
        raise ValueError("second attempt")

    where = Where()
    with pytest.raises(TaskError):
        evaluate(flaky(1), backend=backend, plugins=[where])
    assert len(where.retries) == 1
    (retry_started, retry_worker), (error_started, error_worker) = (
        where.retries[0],
        where.errors["flaky"],
    )
    assert _expected_worker(backend, retry_worker) and _expected_worker(backend, error_worker)
    assert retry_started <= error_started


def test_elements_of_a_slice_get_their_own_start_in_order():
    # Processes with only after_node_execute watched: the bulk path (slices).
    where = Where()
    evaluate(inc.product(x=list(range(200))), backend="processes", plugins=[where])
    starts = [where.after[f"inc[{e}]"][0] for e in range(200)]
    workers = {where.after[f"inc[{e}]"][1] for e in range(200)}
    assert all(w.startswith("pid ") for w in workers)
    # Within each worker's run of elements, starts never go backwards.
    by_worker: dict[str, list[float]] = {}
    for e in range(200):
        started, worker = where.after[f"inc[{e}]"]
        by_worker.setdefault(worker, []).append(started)
    assert all(s == sorted(s) for s in by_worker.values())
    assert len(set(starts)) > len(workers)  # not one start per slice for all its elements
