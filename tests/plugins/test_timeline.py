"""The run's timeline (``TimelinePlugin``): one record per attempt, on every backend."""

from __future__ import annotations

import pytest

from daglite import TaskError, evaluate, task
from daglite.plugins.builtin.timeline import TimelinePlugin


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def test_every_attempt_is_recorded_with_the_dag(backend):
    timeline = TimelinePlugin()
    assert evaluate(inc.product(x=[1, 2, 3]).join(total), backend=backend, plugins=[timeline]) == 9
    run = timeline.last
    assert sorted(a.key for a in run.attempts) == ["inc[0]", "inc[1]", "inc[2]", "total"]
    assert all(a.ok and a.attempt == 1 and a.duration >= 0 for a in run.attempts)
    assert {a.backend for a in run.attempts} == {backend}
    assert run.graph is not None and [n.key for n in run.graph.nodes] == ["inc", "total"]
    assert run.error is None and run.ended >= run.started
    assert all(run.started <= a.started <= run.ended for a in run.attempts)
    assert run.workers()


def test_retries_and_failures_are_marked(backend, tmp_path):
    marker = tmp_path / "tried"

    @task(retries=1)
    def flaky(x: int) -> int:
        if not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first")
        raise ValueError("second")

    timeline = TimelinePlugin()
    with pytest.raises(TaskError):
        evaluate(flaky(1), backend=backend, plugins=[timeline])
    first, second = timeline.last.attempts
    assert (first.attempt, first.retried, first.error) == (1, True, "RuntimeError: first")
    assert (second.attempt, second.retried, second.error) == (2, False, "ValueError: second")
    assert timeline.last.error is not None and "flaky" in timeline.last.error


def test_no_evaluation_yet_is_a_clear_error():
    with pytest.raises(LookupError, match="no evaluation"):
        TimelinePlugin().last
