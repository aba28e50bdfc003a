"""Linear chains are fused: a run of single-input calls travels to a worker as one job.

Fusion must be invisible: the same results, hook order and inputs, events,
retries, failures and worker deaths as when each call makes its own round trip.
"""

from __future__ import annotations

import os
import time

import pytest
from tests.backends._counting import CountingProcesses

from daglite import EvaluationError, TaskError, WorkerLostError, evaluate, task
from daglite.backends import ProcessBackend, ThreadBackend
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter


@task
def step(x: int) -> int:
    return x + 1


@task
def scaled(factor: int, x: int) -> int:
    return factor * x


def _chain(n: int, start: int = 0):
    dag = step(start)
    for _ in range(n - 1):
        dag = step(dag)
    return dag


class Order:
    """Records hook calls, their inputs and results, and events, in the caller."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.events: list[tuple[str, int]] = []
        self.pids: set[int] = set()

    def register_event_handlers(self, registry) -> None:
        registry.on("tick", lambda e: self.events.append((e["key"], e["i"])))

    @hook_impl
    def before_node_execute(self, key, inputs):
        self.pids.add(os.getpid())
        self.calls.append(("before", key, dict(inputs)))

    @hook_impl
    def after_node_execute(self, key, result):
        self.calls.append(("after", key, result))

    @hook_impl
    def on_node_error(self, key, error):
        self.calls.append(("error", key, type(error).__name__))


def test_long_chain_gives_the_right_result(concurrent_backend):
    assert evaluate(_chain(600), backend=concurrent_backend) == 600


class _CountingThreads(ThreadBackend):
    """Threads that record how many calls each job carries."""

    def __init__(self, max_chain: int | None) -> None:
        super().__init__(max_workers=2)
        self.max_chain = max_chain  # type: ignore[misc] - per instance, for the test
        self.jobs: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        self.jobs.append(len(fn.calls))
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(("max_chain", "jobs"), [(4, [4, 4, 2]), (None, [10]), (1, [1] * 10)])
def test_a_chain_goes_in_jobs_of_at_most_max_chain_calls(max_chain, jobs):
    # None: max_batch (32 on threads), which holds the whole chain here.
    with _CountingThreads(max_chain) as backend:
        assert evaluate(_chain(10), backend=backend) == 10
    assert backend.jobs == jobs


def test_a_chain_longer_than_a_batch_goes_in_one_job_on_processes():
    assert CountingProcesses.max_batch < 600
    with CountingProcesses() as backend:
        assert evaluate(_chain(600), backend=backend) == 600
    assert backend.jobs == [600]


def test_hooks_see_each_edge_in_order_with_resolved_inputs(backend):
    plugin = Order()
    dag = scaled(factor=3, x=_chain(20))
    assert evaluate(dag, backend=backend, plugins=[plugin]) == 60
    assert plugin.pids == {os.getpid()}
    seen = {}
    for i, (kind, key, value) in enumerate(plugin.calls):
        seen[(kind, key)] = i
    keys = ["step"] + [f"step-{k}" for k in range(2, 21)] + ["scaled"]
    for k, key in enumerate(keys):
        assert seen[("before", key)] < seen[("after", key)]
        if k:
            assert seen[("after", keys[k - 1])] < seen[("before", key)]
    inputs = {key: value for kind, key, value in plugin.calls if kind == "before"}
    assert inputs["step-2"] == {"x": 1}
    assert inputs["step-20"] == {"x": 19}
    assert inputs["scaled"] == {"factor": 3, "x": 20}


@task
def chatty(x: int) -> int:
    for i in range(3):
        get_reporter().report("tick", {"i": i})
    return x + 1


def test_events_of_fused_calls_keep_their_keys_and_order(backend):
    plugin = Order()
    dag = chatty(chatty(chatty(0)))
    assert evaluate(dag, backend=backend, plugins=[plugin]) == 3
    by_key: dict[str, list[int]] = {}
    for key, i in plugin.events:
        by_key.setdefault(key, []).append(i)
    assert by_key == {"chatty": [0, 1, 2], "chatty-2": [0, 1, 2], "chatty-3": [0, 1, 2]}


@task
def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x + 1


def test_failure_in_the_middle_names_the_task_and_stops_the_chain(backend):
    plugin = Order()
    dag = step(step(fail_at(step(step(0)), bad=2)))
    with pytest.raises(TaskError, match=r"key 'fail_at'") as info:
        evaluate(dag, backend=backend, plugins=[plugin])
    assert isinstance(info.value.error, ValueError)
    keys = [key for kind, key, _ in plugin.calls if kind == "after"]
    assert keys == ["step", "step-2"]


def test_continue_skips_what_follows_a_failure(backend):
    dag = step(step(fail_at(step(0), bad=1)))
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=backend, on_error="continue")
    assert list(info.value.errors) == ["fail_at"]
    assert sorted(info.value.skipped) == ["step-2", "step-3"]


def test_failed_call_in_a_chain_is_retried_and_the_chain_goes_on(backend, tmp_path):
    @task(retries=1)
    def once(x: int, marker: str) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        return x + 10

    plugin = Order()
    dag = step(step(once(step(step(0)), marker=str(tmp_path / "m"))))
    assert evaluate(dag, backend=backend, plugins=[plugin]) == 14
    assert [key for kind, key, _ in plugin.calls if kind == "error"] == []


def test_head_of_a_chain_retried_runs_its_followers_after_it(backend, tmp_path):
    @task(retries=2)
    def flaky_head(marker: str) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        return 1

    assert evaluate(_chain_from(flaky_head(str(tmp_path / "m")), 30), backend=backend) == 31


def _chain_from(dag, n: int):
    for _ in range(n):
        dag = step(dag)
    return dag


def test_worker_death_inside_a_fused_chain(tmp_path):
    @task(retries=1)
    def die_once(x: int, marker: str) -> int:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return x + 100

    with ProcessBackend(max_workers=2) as pool:
        dag = _chain_from(die_once(_chain(5), marker=str(tmp_path / "m")), 5)
        assert evaluate(dag, backend=pool) == 110

        @task
        def always_dies(x: int) -> int:
            os._exit(3)

        with pytest.raises(WorkerLostError, match="always_dies"):
            evaluate(step(always_dies(_chain(3))), backend=pool)
        assert evaluate(_chain(10), backend=pool) == 10  # the pool recovered


def test_timeout_of_a_fused_call_on_processes():
    @task(timeout=0.5)
    def spin(x: int) -> int:
        while True:
            pass

    with ProcessBackend(max_workers=1) as pool:
        with pytest.raises(TaskError, match=r"'spin'.*timed out") as info:
            evaluate(step(spin(step(0))), backend=pool)
        assert type(info.value).__name__ == "TaskTimeoutError"
        assert evaluate(_chain(3), backend=pool) == 3


def test_head_retried_before_its_job_reports_done_is_not_lost(tmp_path):
    # The head's failure goes home early (the job runs > 50 ms), so the retry is
    # submitted while the first job is still reporting: the first job's report
    # must not be mistaken for the retry's.
    @task(retries=1)
    def slow_flaky(x: int, marker: str) -> int:
        time.sleep(0.08)
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        return x + 1

    with ProcessBackend(max_workers=2) as pool:
        for k in range(4):
            marker = str(tmp_path / f"m{k}")
            assert evaluate(scaled(factor=10, x=slow_flaky(1, marker)), backend=pool) == 20


def test_timed_out_follower_does_not_rerun_the_call_before_it(tmp_path):
    log = tmp_path / "runs"

    @task
    def head(x: int) -> int:
        with open(log, "a") as f:
            f.write("head\n")
        return x

    @task(timeout=0.05)
    def stuck(y: int) -> int:
        time.sleep(30)
        return y

    with ProcessBackend(max_workers=1) as pool:
        with pytest.raises(TaskError, match=r"'stuck'.*timed out"):
            evaluate(stuck(head(1)), backend=pool)
    assert log.read_text().splitlines() == ["head"]


def test_follower_never_runs_after_its_input_failed_on_threads():
    # End to end on threads; the job itself is tested alone in tests/engine/test_job.py.
    seen = []

    @task(retries=1)
    def failing_head(x: int) -> int:
        time.sleep(0.06)
        raise RuntimeError("the head fails")

    @task
    def follower(y: int) -> int:
        seen.append(y)
        return y

    with pytest.raises(EvaluationError) as info:
        evaluate(follower(failing_head(1)), backend="threads", on_error="continue")
    assert list(info.value.errors) == ["failing_head"]
    assert info.value.skipped == ["follower"]
    assert seen == []


@task
def ones(n: int) -> list[float]:
    return [1.0] * n


@task
def bump_in_place(values: list[float]) -> float:
    for i in range(len(values)):
        values[i] += 1.0
    return sum(values)


@pytest.mark.parametrize("threshold", [None, 1024], ids=["pipe", "shared-memory"])
def test_a_fused_call_writing_to_its_input_leaves_the_callers_copy_alone(threshold):
    # The producer's result is a root too: the fused follower takes the value
    # itself, and must not change what the caller receives of it (gh-14).
    with ProcessBackend(max_workers=1, shared_memory_threshold=threshold) as backend:
        made = ones(n=1000)
        produced, total = evaluate([made, bump_in_place(values=made)], backend=backend)
    assert total == 2000.0
    assert produced == [1.0] * 1000
