"""Calls handed out ahead of their inputs, to a backend that chains jobs itself.

``Chaining`` is the smallest backend with ``accepts_pending_inputs``: its
thread pool runs a job once the jobs its ``PendingResult`` markers name are
done, with their results swapped in, and skips a call whose input failed.
It is what the Dask backend does on a cluster, without a cluster, so the
engine's side of the contract is tested here on its own.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from daglite import EvaluationError, TaskError, evaluate, task
from daglite._job.records import PendingResult
from daglite.backends import Backend
from daglite.graph.walk import find, replace
from daglite.plugins.hooks import hook_impl


class _InputFailed(Exception):
    pass


class Chaining(Backend):
    """Runs jobs in threads; a job waits for the jobs its pending inputs come from."""

    name = "chaining"
    accepts_pending_inputs = True
    max_batch = 1

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="chaining")
        self.submitted: list[list[str]] = []  # the calls of each job, by key
        self.pending: list[int] = []  # how many pending inputs each job had
        self.on_submit: Any = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        markers = [m for call in fn.calls for m in find(call.kwargs, PendingResult)]
        assert all(isinstance(m.future, Future) for m in markers)
        self.submitted.append([call.key for call in fn.calls])
        self.pending.append(len(markers))
        future = self.pool.submit(self._run, fn, markers)
        if self.on_submit is not None:
            self.on_submit(self)
        return future

    def _run(self, job: Any, markers: list[PendingResult]) -> Any:
        values: dict[int, Any] = {}
        for marker in markers:
            for outcome in marker.future.result():
                if outcome.token == marker.token and outcome.ok:
                    values[marker.token] = outcome.value

        def value_of(marker: PendingResult) -> Any:
            if marker.token not in values:
                raise _InputFailed
            return values[marker.token]

        calls = []
        for call in job.calls:
            try:
                calls.append(call._replace(kwargs=replace(call.kwargs, PendingResult, value_of)))
            except _InputFailed:
                continue  # skipped: the engine plans it again, or not at all
        job.calls = calls
        return job()

    def stop(self) -> None:
        self.pool.shutdown(wait=True)


@pytest.fixture
def chaining():
    backend = Chaining()
    with backend:
        yield backend


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


class Order:
    """Records the hook calls, and the inputs each call was started with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []

    @hook_impl
    def before_node_execute(self, key, inputs) -> None:
        self.calls.append(("before", key))
        self.inputs[key] = dict(inputs)

    @hook_impl
    def after_node_execute(self, key) -> None:
        self.calls.append(("after", key))

    @hook_impl
    def on_node_error(self, key) -> None:
        self.errors.append(key)


def test_a_chain_is_handed_out_before_its_head_finishes(chaining):
    n = 20
    released = threading.Event()

    @task
    def gate(x: int) -> bool:
        return released.wait(30)  # returns only once every hop was submitted

    def release_when_all_out(backend: Chaining) -> None:
        if len(backend.submitted) == n:
            released.set()

    chaining.on_submit = release_when_all_out
    dag = gate(0)
    for _ in range(n - 1):
        dag = inc(dag)
    assert evaluate(dag, backend=chaining) == True + n - 1  # noqa: E712 - True is 1
    assert chaining.pending == [0] + [1] * (n - 1)


def test_hooks_keep_edge_order_and_see_the_inputs(chaining):
    plugin = Order()
    a = inc(1)
    dag = add(inc(a), add(a, 10))
    assert evaluate(dag, backend=chaining, plugins=[plugin]) == 3 + 12
    graph_edges = [("inc", "inc-2"), ("inc", "add"), ("inc-2", "add-2"), ("add", "add-2")]
    order = plugin.calls
    for u, v in graph_edges:
        assert order.index(("after", u)) < order.index(("before", v))
    for key in ("inc", "inc-2", "add", "add-2"):
        assert order.index(("before", key)) < order.index(("after", key))
    # The inputs as the call received them, not the markers it went out with.
    assert plugin.inputs["add-2"] == {"x": 3, "y": 12}
    assert plugin.inputs["add"] == {"x": 2, "y": 10}
    assert sum(chaining.pending) == 4  # every consumer went out ahead


def test_a_join_goes_out_once_all_its_inputs_are_out(chaining):
    leaves = [inc(i) for i in range(10)]
    assert evaluate(total(leaves), backend=chaining) == sum(range(1, 11))
    assert chaining.submitted[-1] == ["total"]
    assert chaining.pending[-1] == 10


def test_a_retried_input_drops_the_call_that_went_ahead_and_plans_it_again(chaining):
    attempts: list[int] = []
    runs: list[int] = []

    @task(retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ValueError("not yet")
        return x

    @task
    def seen(x: int) -> int:
        runs.append(x)
        return x * 10

    plugin = Order()
    assert evaluate(seen(flaky(4)), backend=chaining, plugins=[plugin]) == 40
    assert runs == [4]  # skipped after each failed attempt, run once after the success
    assert plugin.calls.count(("before", "seen")) == 1
    assert chaining.submitted.count(["seen"]) == 3  # out ahead of each attempt


def test_on_error_continue_skips_what_went_out_ahead_of_a_failure(chaining):
    runs: list[int] = []

    @task
    def boom(x: int) -> int:
        raise KeyError(x)

    @task
    def after(x: int) -> int:
        runs.append(x)
        return x

    plugin = Order()
    dag = [after(after(boom(1))), after(inc(5))]
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=chaining, plugins=[plugin], on_error="continue")
    assert list(info.value.errors) == ["boom"]
    assert sorted(info.value.skipped) == ["after", "after-2"]
    assert info.value.results["after-3"] == 6
    assert runs == [6]
    assert plugin.errors == ["boom"]
    assert ("before", "after") not in plugin.calls


def test_fail_fast_raises_the_first_failure(chaining):
    @task
    def boom(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(TaskError, match=r"task 'boom' \(key 'boom'\) failed: KeyError"):
        evaluate(inc(inc(boom(1))), backend=chaining)


def test_a_consumer_on_another_backend_waits_for_the_result_as_usual(chaining):
    remote = inc.with_options(backend=chaining)
    local = add.with_options(backend="threads")
    dag = remote(local(remote(1), 5))
    assert evaluate(dag) == 8
    assert chaining.pending == [0, 0]  # a call on another backend is in between


def test_fan_outs_wait_for_their_input_to_be_done_in_the_caller(chaining):
    @task
    def count(n: int) -> list[int]:
        return list(range(n))

    dag = inc.product(x=count(3)).join(total)
    assert evaluate(dag, backend=chaining) == 6
    assert sum(chaining.pending) == 0
