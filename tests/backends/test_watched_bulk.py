"""A fan-out watched by ``after_node_execute`` still travels in slices (gh-13).

The slices go to threads or worker processes in bulk; each element's hook is
still called in the caller, in element order, with its own key, inputs,
result and run time measured in the worker.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from daglite import EvaluationError, evaluate, task
from daglite.backends import ProcessBackend, ThreadBackend
from daglite.plugins.hooks import hook_impl


@task
def inc(x: int) -> int:
    return x + 1


@task
def slow_at(x: int, slow: int) -> int:
    if x == slow:
        sum(range(3_000_000))  # tens of milliseconds of work, against microseconds
    return x


@task
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad element {x}")
    return x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


class Recorder:
    """The guide's TimingPlugin shape: every parameter of after_node_execute."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Any, float]] = []

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        self.calls.append((key, dict(inputs), result, duration))


class _Counting:
    """Counts the jobs a backend is handed."""

    submits = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submits += 1
        return super().submit(fn, *args, **kwargs)  # type: ignore[misc]


class CountingThreads(_Counting, ThreadBackend):
    pass


class CountingProcesses(_Counting, ProcessBackend):
    pass


@pytest.fixture(params=["threads", "processes"])
def counting(request):
    kind = CountingThreads if request.param == "threads" else CountingProcesses
    backend = kind(max_workers=2)
    with backend:
        yield backend


def test_watched_fan_out_travels_in_slices_with_every_elements_hook(counting):
    recorder = Recorder()
    n = 10_000
    assert evaluate(inc.product(x=list(range(n))), backend=counting, plugins=[recorder]) == [
        x + 1 for x in range(n)
    ]
    # Four slices per worker; the per-element path packs at most max_batch
    # calls per job: 40 jobs for 10,000 elements on processes, 313 on threads.
    assert counting.submits <= 4 * 2
    keys = [key for key, *_ in recorder.calls]
    assert sorted(keys) == sorted(f"inc[{e}]" for e in range(n))
    by_key = {key: (inputs, result, duration) for key, inputs, result, duration in recorder.calls}
    for e in (0, 1, n // 2, n - 1):
        inputs, result, duration = by_key[f"inc[{e}]"]
        assert inputs == {"x": e}
        assert result == e + 1
        assert isinstance(duration, float) and duration >= 0.0


def test_elements_of_one_slice_are_reported_in_element_order(counting):
    recorder = Recorder()
    evaluate(inc.product(x=list(range(400))), backend=counting, plugins=[recorder])
    indices = [int(key[4:-1]) for key, *_ in recorder.calls]
    # Slices may finish in any order; within one, elements come in order.
    runs = [indices[0]]
    for prev, cur in zip(indices, indices[1:]):
        if cur != prev + 1:
            runs.append(cur)
    assert len(runs) <= 4 * 2


def test_each_element_gets_its_own_run_time_from_the_worker(counting):
    recorder = Recorder()
    evaluate(slow_at.product(x=list(range(50)), slow=25), backend=counting, plugins=[recorder])
    durations = {key: duration for key, _, _, duration in recorder.calls}
    assert max(durations, key=durations.__getitem__) == "slow_at[25]"


def test_a_failed_element_gets_on_node_error_and_the_others_after(counting):
    recorder = Recorder()
    errors: list[str] = []

    class Errors:
        @hook_impl
        def on_node_error(self, key):
            errors.append(key)

    with pytest.raises(EvaluationError) as info:
        evaluate(
            fail_on.product(x=list(range(100)), bad=37),
            backend=counting,
            plugins=[recorder, Errors()],
            on_error="continue",
        )
    assert errors == ["fail_on[37]"]
    assert sorted(key for key, *_ in recorder.calls) == sorted(
        f"fail_on[{e}]" for e in range(100) if e != 37
    )
    assert list(info.value.errors) == ["fail_on[37]"]


def test_elements_hooks_come_before_the_consumers(counting):
    order: list[str] = []

    class Order:
        @hook_impl
        def before_graph_execute(self):
            order.clear()

        @hook_impl
        def after_node_execute(self, key):
            order.append(key)

    assert evaluate(
        inc.product(x=list(range(300))).join(total), backend=counting, plugins=[Order()]
    ) == sum(range(1, 301))
    assert order[-1] == "total"
    assert len(order) == 301
