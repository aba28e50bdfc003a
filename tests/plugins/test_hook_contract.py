"""The hook guarantees of API.md section 4, checked on every backend.

The ``check_*`` helpers take a backend name or instance (plus backend options),
so ``tests/backends/test_custom_backends.py`` runs the same checks on custom
backends.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pluggy
import pytest
from tests.plugins._records import daglite_errors

from daglite import TaskError, evaluate, task
from daglite.graph.base import GraphMetadata
from daglite.plugins.hooks import CachedResult, hook_impl
from daglite.plugins.reporters import Reporter

GRAPH_HOOKS = ("before_graph_execute", "after_graph_execute", "on_graph_error")
WAIT = 30.0  # deadlock detector only: every wait below normally returns at once


# -- helpers shared with other test modules ---------------------------------------------------


class Recorder:
    """Records every hook call, and checks that no two calls ever overlap."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.info: list[dict[str, Any]] = []
        self.depth = 0
        self.max_depth = 0
        self.pids: set[int] = set()
        self.threads: set[int] = set()
        self.durations: dict[str, float] = {}
        self.metadata: dict[str, GraphMetadata] = {}
        self.graph_duration: float | None = None
        self.node_counts: list[int] = []
        self.errors: dict[str, BaseException] = {}
        self.retries: list[tuple[str, int]] = []
        self.expansions: list[tuple[str, int, int]] = []

    def _record(self, hook: str, key: str | None = None, **info: Any) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        self.pids.add(os.getpid())
        self.threads.add(threading.get_ident())
        self.calls.append((hook, key))
        self.info.append(info)
        time.sleep(0)  # yield the GIL: an overlapping call would show up in depth
        self.depth -= 1

    @hook_impl
    def before_graph_execute(self, root_id, node_count, is_async):
        self.node_counts.append(node_count)
        self._record("before_graph_execute")

    @hook_impl
    def on_graph_expand(self, root_id, key, added, node_count):
        self.expansions.append((key, added, node_count))
        self._record("on_graph_expand", key)

    @hook_impl
    def before_node_execute(self, key, metadata, inputs, reporter):
        self.metadata[key] = metadata
        self._record("before_node_execute", key, reporter=reporter)

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter):
        self.durations[key] = duration
        self._record("after_node_execute", key, result=result)

    @hook_impl
    def on_node_error(self, key, metadata, inputs, error, duration, reporter):
        self.errors[key] = error
        self._record("on_node_error", key, error=error)

    @hook_impl
    def before_node_retry(self, key, metadata, inputs, error, attempt, duration, reporter):
        self.retries.append((key, attempt))
        self._record("before_node_retry", key, error=error)

    @hook_impl
    def after_graph_execute(self, root_id, result, duration, is_async):
        self.graph_duration = duration
        self._record("after_graph_execute")

    @hook_impl
    def on_graph_error(self, root_id, error, duration, is_async):
        self.graph_duration = duration
        self._record("on_graph_error")

    def index(self, hook: str, key: str | None = None) -> int:
        found = [i for i, c in enumerate(self.calls) if c == (hook, key)]
        assert len(found) == 1, f"expected one {hook} for {key!r}, got {len(found)}"
        return found[0]

    def keys(self, hook: str) -> list[str | None]:
        return [k for h, k in self.calls if h == hook]


def check_one_at_a_time_in_caller(rec: Recorder) -> None:
    """Guarantees 1 and 2: caller's pid, one thread, never two hooks at once."""
    assert rec.pids == {os.getpid()}
    assert rec.max_depth == 1
    assert len(rec.threads) == 1


def check_order(rec: Recorder, keys: set[str], edges: list[tuple[str, str]]) -> None:
    """Guarantee 3 plus exact counts, for a successful run."""
    hooks = Counter(h for h, _ in rec.calls)
    assert rec.calls[0] == ("before_graph_execute", None)
    assert rec.calls[-1] == ("after_graph_execute", None)
    assert hooks["before_graph_execute"] == hooks["after_graph_execute"] == 1
    assert hooks["on_graph_error"] == hooks["on_node_error"] == 0
    assert sorted(rec.keys("before_node_execute")) == sorted(keys)
    assert sorted(rec.keys("after_node_execute")) == sorted(keys)
    position = {c: i for i, c in enumerate(rec.calls)}
    for key in keys:
        assert position[("before_node_execute", key)] < position[("after_node_execute", key)]
    for u, v in edges:
        assert position[("after_node_execute", u)] < position[("before_node_execute", v)], (u, v)


@task
def src(x: int) -> int:
    return x


@task
def left(x: int) -> int:
    return x + 1


@task
def right(x: int) -> int:
    return x * 10


@task
def sink(a: int, b: int) -> int:
    return a + b


DIAMOND_EDGES = [("src", "left"), ("src", "right"), ("left", "sink"), ("right", "sink")]


def check_diamond(backend: Any, **options: Any) -> Recorder:
    """Run a diamond with a Recorder; check guarantees 1-3 and that state reached the caller."""
    rec = Recorder()
    s = src(1)
    dag = sink(left(s), right(s))
    assert evaluate(dag, backend=backend, plugins=[rec], **options) == 12
    check_one_at_a_time_in_caller(rec)
    check_order(rec, {"src", "left", "right", "sink"}, DIAMOND_EDGES)
    assert set(rec.durations) == {"src", "left", "right", "sink"}  # filled in the caller
    assert all(d >= 0 for d in rec.durations.values())
    return rec


@task
def seed() -> int:
    return 1


@task
def inc(x: int, i: int) -> int:
    return x + i


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def check_wide_fan_out(backend: Any, n: int = 2000, **options: Any) -> Recorder:
    """n independent nodes between one source and one join: order and counts hold."""
    rec = Recorder()
    root = seed()
    dag = total([inc(root, i) for i in range(n)])
    assert evaluate(dag, backend=backend, plugins=[rec], **options) == n + n * (n - 1) // 2
    middle = ["inc"] + [f"inc-{i}" for i in range(2, n + 1)]
    edges = [("seed", k) for k in middle] + [(k, "total") for k in middle]
    check_one_at_a_time_in_caller(rec)
    check_order(rec, {"seed", "total", *middle}, edges)
    assert rec.node_counts == [n + 2]
    return rec


def busy_work(n: int) -> int:
    acc = 0
    for i in range(n):
        acc += i * i
    return acc


@task
def crunch(n: int) -> int:
    return busy_work(n)


def check_duration(backend: Any, **options: Any) -> None:
    """Guarantee 5: duration is positive and no longer than the whole evaluation."""
    rec = Recorder()
    evaluate(crunch(200_000), backend=backend, plugins=[rec], **options)
    assert rec.graph_duration is not None
    assert 0 < rec.durations["crunch"] <= rec.graph_duration


@task
def gated(name: str, gate: Any) -> bool:
    return gate.wait(WAIT)


class StartWatcher:
    """On the first node's start, checks the other has not started, then opens the gate."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate
        self.started: list[str] = []
        self.seen_at_first_start: list[str] | None = None

    @hook_impl
    def before_node_execute(self, key):
        if self.seen_at_first_start is None:
            self.seen_at_first_start = list(self.started)
            self.started.append(key)
            self.gate.set()
        else:
            self.started.append(key)


def check_start_fires_when_running(backend: Any, gate: Any, **options: Any) -> None:
    """Guarantee 6, with one worker: A blocks until its start hook has fired; B is queued
    behind it, so B's start hook must not have fired by then."""
    watcher = StartWatcher(gate)
    a = gated("a", gate)
    b = gated.with_options(name="gated_b")("b", gate)
    assert evaluate([a, b], backend=backend, plugins=[watcher], **options) == [True, True]
    assert watcher.seen_at_first_start == []
    assert sorted(watcher.started) == ["gated", "gated_b"]


class TaskFailure(Exception):
    """Raised by tasks; hooks must see this very type."""


@task
def explode(x: int) -> int:
    raise TaskFailure(f"bad input {x}")


def check_node_error_type(backend: Any, **options: Any) -> None:
    """on_node_error gets the task's own exception; evaluate raises TaskError chaining it."""
    rec = Recorder()
    with pytest.raises(TaskError) as info:
        evaluate(explode(3), backend=backend, plugins=[rec], **options)
    assert type(rec.errors["explode"]) is TaskFailure
    assert str(rec.errors["explode"]) == "bad input 3"
    assert isinstance(info.value.error, TaskFailure)
    assert isinstance(info.value.__cause__, TaskFailure)
    assert rec.calls[-1] == ("on_graph_error", None)
    check_one_at_a_time_in_caller(rec)


def default_options(backend: str) -> dict[str, Any]:
    return {} if backend == "inline" else {"max_workers": 1}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp_manager():
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Manager() as manager:
        yield manager


# -- guarantees 1-3 -----------------------------------------------------------------------------


def test_hooks_run_in_caller_on_registered_instances(backend):
    check_diamond(backend)


def test_hooks_never_overlap_with_many_concurrent_tasks(backend):
    rec = Recorder()
    dag = total(inc.product(x=list(range(200)), i=[1]))
    assert evaluate(dag, backend=backend, plugins=[rec]) == sum(range(1, 201))
    check_one_at_a_time_in_caller(rec)
    assert len(rec.keys("after_node_execute")) == 201


def test_order_on_wide_fan_out_and_join(backend):
    check_wide_fan_out(backend)


def test_graph_hooks_bracket_and_exact_counts_on_failure(backend):
    rec = Recorder()
    ok = left(1)
    with pytest.raises(TaskError):
        evaluate(sink(ok, explode(ok)), backend=backend, plugins=[rec])
    hooks = Counter(h for h, _ in rec.calls)
    assert rec.calls[0] == ("before_graph_execute", None)
    assert rec.calls[-1] == ("on_graph_error", None)
    assert hooks == Counter(
        {
            "before_graph_execute": 1,
            "before_node_execute": 2,
            "after_node_execute": 1,
            "on_node_error": 1,
            "on_graph_error": 1,
        }
    )
    position = {c: i for i, c in enumerate(rec.calls)}
    assert position[("after_node_execute", "left")] < position[("before_node_execute", "explode")]
    assert position[("before_node_execute", "explode")] < position[("on_node_error", "explode")]


# -- guarantee 5: duration --------------------------------------------------------------------


def test_duration_measured_where_the_task_ran(backend):
    check_duration(backend)


def test_plugin_state_visible_after_run_with_sleeping_task(backend):
    # A lower bound is not a timing race: the task cannot take less than it sleeps.
    @task
    def nap() -> str:
        time.sleep(0.05)
        return "done"

    rec = Recorder()
    assert evaluate(nap(), backend=backend, plugins=[rec]) == "done"
    assert rec.durations["nap"] >= 0.05
    assert rec.graph_duration >= rec.durations["nap"]


# -- guarantee 6: start means started ------------------------------------------------------------


def test_before_node_execute_fires_when_task_starts_not_when_queued(backend, mp_manager):
    check_start_fires_when_running(backend, mp_manager.Event(), **default_options(backend))


# -- guarantee 7: raising hooks -------------------------------------------------------------------


class HookBoom(Exception):
    pass


class FaultyPlugin:
    def __init__(self) -> None:
        self.calls = 0

    @hook_impl
    def after_node_execute(self, key):
        self.calls += 1
        raise HookBoom(f"hook failed for {key}")


def test_raising_hook_is_logged_once_and_run_goes_on(backend, caplog):
    faulty, rec = FaultyPlugin(), Recorder()
    caplog.set_level(logging.DEBUG)
    dag = sink(left(1), right(2))
    assert evaluate(dag, backend=backend, plugins=[faulty, rec]) == 22
    assert faulty.calls == 3
    assert len(rec.keys("after_node_execute")) == 3  # the other plugin still saw everything
    errors = daglite_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert "after_node_execute" in message
    assert "FaultyPlugin" in message, f"the log should name the plugin: {message!r}"
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is HookBoom


def test_strict_plugins_reraises_hook_error(backend, monkeypatch):
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")
    with pytest.raises(HookBoom):
        evaluate(left(1), backend=backend, plugins=[FaultyPlugin()])


# -- guarantee 8: keys and metadata ----------------------------------------------------------------


def test_keys_unique_stable_and_metadata_complete(backend):
    @task(description="adds one")
    def step(x: int) -> int:
        return x + 1

    def dag():
        first = step(1)
        return total(step(step(first)).then(lambda_free_range).map(step))

    runs = []
    for _ in range(2):
        rec = Recorder()
        evaluate(dag(), backend=backend, plugins=[rec])
        runs.append(rec)
    keys = runs[0].keys("before_node_execute")
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(runs[1].keys("before_node_execute"))
    assert {"step", "step-2", "step-3", "step-4[0]", "step-4[1]", "step-4[2]"} <= set(keys)
    meta = runs[0].metadata["step-4[1]"]
    assert (meta.name, meta.description, meta.kind) == ("step", "adds one", "map")
    assert runs[0].metadata["step"].kind == "task"
    assert meta.backend_name == backend


@task
def lambda_free_range(n: int) -> list[int]:
    return list(range(n - 1))


def test_hook_impl_may_declare_a_subset_of_parameters(backend):
    class Minimal:
        def __init__(self) -> None:
            self.seen: list[tuple[str, float]] = []

        @hook_impl
        def after_node_execute(self, key, duration):
            self.seen.append((key, duration))

        @hook_impl
        def before_graph_execute(self):
            self.seen.append(("graph", -1.0))

    plugin = Minimal()
    evaluate(left(1), backend=backend, plugins=[plugin])
    assert [k for k, _ in plugin.seen] == ["graph", "left"]


def test_reporter_given_to_hooks_is_a_reporter(backend):
    rec = Recorder()
    evaluate(left(1), backend=backend, plugins=[rec])
    reporter = rec.info[rec.index("before_node_execute", "left")]["reporter"]
    assert isinstance(reporter, Reporter)
    assert callable(reporter.report)


# -- retries --------------------------------------------------------------------------------------


def count_call(path: str) -> int:
    """Append one byte to ``path`` (atomic across processes) and return the new count."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    return Path(path).stat().st_size


def calls_made(path: str | Path) -> int:
    return Path(path).stat().st_size if Path(path).exists() else 0


@task(retries=2)
def flaky(counter: str, fail_times: int) -> str:
    attempt = count_call(counter)
    if attempt <= fail_times:
        raise TaskFailure(f"attempt {attempt} failed")
    return f"ok on attempt {attempt}"


def test_retries_fire_before_node_retry_per_attempt(backend, tmp_path):
    rec = Recorder()
    counter = str(tmp_path / "calls")
    assert evaluate(flaky(counter, 2), backend=backend, plugins=[rec]) == "ok on attempt 3"
    assert calls_made(counter) == 3
    assert rec.retries == [("flaky", 2), ("flaky", 3)]
    assert rec.errors == {}
    assert rec.keys("after_node_execute") == ["flaky"]
    retry_errors = [
        i["error"] for (h, _), i in zip(rec.calls, rec.info) if h == "before_node_retry"
    ]
    assert [type(e) for e in retry_errors] == [TaskFailure, TaskFailure]
    assert rec.keys("before_node_execute") == ["flaky"] * 3  # one start per attempt
    check_one_at_a_time_in_caller(rec)


def test_on_node_error_only_for_final_failure(backend, tmp_path):
    rec = Recorder()
    counter = str(tmp_path / "calls")
    with pytest.raises(TaskError) as info:
        evaluate(flaky(counter, 99), backend=backend, plugins=[rec])
    assert calls_made(counter) == 3
    assert rec.retries == [("flaky", 2), ("flaky", 3)]
    assert list(rec.errors) == ["flaky"]
    assert str(rec.errors["flaky"]) == "attempt 3 failed"
    assert isinstance(info.value.error, TaskFailure)
    assert rec.keys("on_node_error") == ["flaky"]
    position = {c: i for i, c in enumerate(rec.calls)}
    assert [h for h, _ in rec.calls][-2:] == ["on_node_error", "on_graph_error"]
    assert position[("on_node_error", "flaky")] > max(
        i for i, (h, _) in enumerate(rec.calls) if h == "before_node_retry"
    )


def test_on_node_error_receives_the_tasks_own_exception(backend):
    check_node_error_type(backend)


# -- lookup_node_result ----------------------------------------------------------------------------


@task
def counted(counter: str, x: int) -> int:
    count_call(counter)
    return x * 2


class FixedCache:
    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.lookups: list[str] = []

    @hook_impl
    def lookup_node_result(self, key, metadata, inputs):
        self.lookups.append(key)
        if key in self.values:
            return CachedResult(self.values[key])
        return None


def test_lookup_node_result_skips_running(backend, tmp_path):
    counter = str(tmp_path / "calls")
    cache = FixedCache({"counted": 100, "counted-3": None})
    rec = Recorder()
    first = counted(counter, 1)
    second = counted(counter, first)
    third = counted.with_options(name="counted")(counter, 5)
    result = evaluate([first, second, third], backend=backend, plugins=[cache, rec])
    assert result == [100, 200, None]
    assert calls_made(counter) == 1  # only "counted-2" ran
    assert sorted(cache.lookups) == ["counted", "counted-2", "counted-3"]
    assert rec.durations["counted"] == 0.0
    assert rec.durations["counted-3"] == 0.0
    check_order(rec, {"counted", "counted-2", "counted-3"}, [("counted", "counted-2")])


def test_lookup_node_result_first_plugin_with_a_result_wins(backend):
    rec = Recorder()
    first, second = FixedCache({}), FixedCache({"left": 7})
    assert evaluate(left(1), backend=backend, plugins=[first, second, rec]) == 7
    assert second.lookups == ["left"]


# -- on_graph_expand -------------------------------------------------------------------------------


@task
def make_list(n: int) -> list[int]:
    return list(range(n))


@task
def double(x: int) -> int:
    return 2 * x


def test_on_graph_expand_for_dynamic_fan_out(backend):
    rec = Recorder()
    dag = make_list(5).map(double).join(total)
    assert evaluate(dag, backend=backend, plugins=[rec]) == 20
    assert rec.node_counts == [2]
    assert rec.expansions == [("double", 5, 7)]
    keys = {"make_list", "total", *(f"double[{i}]" for i in range(5))}
    edges = [("make_list", f"double[{i}]") for i in range(5)]
    edges += [(f"double[{i}]", "total") for i in range(5)]
    # on_graph_expand comes after the source finished, before any element starts
    position = {c: i for i, c in enumerate(rec.calls)}
    expand = position[("on_graph_expand", "double")]
    assert position[("after_node_execute", "make_list")] < expand
    assert all(expand < position[("before_node_execute", f"double[{i}]")] for i in range(5))
    rec.calls = [c for c in rec.calls if c[0] != "on_graph_expand"]
    check_order(rec, keys, edges)


def test_static_fan_out_counts_every_element(backend):
    rec = Recorder()
    dag = double.product(x=[1, 2, 3]).join(total)
    assert evaluate(dag, backend=backend, plugins=[rec]) == 12
    assert rec.node_counts == [4]
    assert rec.expansions == []


# -- validation at registration --------------------------------------------------------------------


def test_misspelled_parameter_in_per_evaluation_plugin_fails_before_running(tmp_path):
    class Wrong:
        @hook_impl
        def after_node_execute(self, key, durration):
            pass

    counter = str(tmp_path / "calls")
    with pytest.raises(pluggy.PluginValidationError):
        evaluate(counted(counter, 1), plugins=[Wrong()])
    assert calls_made(counter) == 0
