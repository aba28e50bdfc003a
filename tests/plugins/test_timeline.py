"""The run's timeline (``TimelinePlugin``): one record per attempt, on every backend."""

from __future__ import annotations

import uuid

import pytest

from daglite import TaskError, evaluate, task
from daglite.plugins.builtin.timeline import Attempt, RunTimeline, TimelinePlugin
from daglite.plugins.hooks import hook_impl


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


def _as_tuples(run):
    return [
        (a.key, a.task, a.backend, a.worker, a.started, a.duration, a.attempt, a.error, a.retried)
        for a in run.attempts
    ]


def test_columns_hold_what_the_attempts_hold(backend, tmp_path):
    marker = tmp_path / "tried"

    @task(retries=2)
    def flaky(x: int) -> int:
        if not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first")
        return x

    timeline = TimelinePlugin()
    dag = total([flaky(1), *(inc(i) for i in range(5))])
    assert evaluate(dag, backend=backend, plugins=[timeline]) == 16
    run = timeline.last
    columns = run.columns()  # before any Attempt is made
    assert run.attempt_count == 8
    assert list(zip(*columns)) == _as_tuples(run)
    assert columns.attempts[columns.keys.index("flaky")] == 1
    assert [a.attempt for a in run.attempts if a.key == "flaky"] == [1, 2]
    assert [a.retried for a in run.attempts if a.key == "flaky"] == [True, False]
    assert run.columns() == columns  # the same after the attempts were made


def test_attempts_read_during_a_run_keep_recording():
    seen = []

    class Peek(TimelinePlugin):
        @hook_impl
        def after_node_execute(self, key, metadata, duration, started, worker):
            super().after_node_execute(key, metadata, duration, started, worker)
            seen.append(self.last.attempt_count)
            self.last.attempts  # materialise mid-run: later hooks must still land

    peek = Peek()
    evaluate(total([inc(i) for i in range(4)]), plugins=[peek])
    assert [a.key for a in peek.last.attempts] == ["inc", "inc-2", "inc-3", "inc-4", "total"]
    assert peek.last.workers() == ["caller"] and seen == [1, 2, 3, 4, 5]


def test_attempts_added_by_hand_come_before_later_rows():
    timeline = TimelinePlugin()
    evaluate(inc(1), plugins=[timeline])
    run = timeline.last
    run.attempts.append(Attempt("extra", "extra", "inline", "t1", run.started, 0.5, 3, "E: x"))
    columns = run.columns()
    assert list(columns.keys) == ["inc", "extra"] and list(columns.attempts) == [1, 3]
    assert list(columns.errors) == [None, "E: x"] and run.workers() == ["caller", "t1"]
    assert "attempts=2" in repr(run)


def test_a_timeline_may_start_with_attempts():
    first = Attempt("a", "a", "threads", "t", 1.0, 0.5, 1)
    run = RunTimeline(uuid.uuid4(), None, 1.0, 2.0, [first], "ValueError: v")
    assert run.attempts == [first] and run.attempt_count == 1 and run.error == "ValueError: v"
    assert run.wall_time == 1.0
    empty = RunTimeline(uuid.uuid4(), None, 1.0)
    assert list(empty.columns().keys) == [] and empty.workers() == []
