"""Worker death, timeouts and bad payloads on the processes backend (issue 6)."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import threading
import time

import psutil
import pytest

from daglite import TaskError, TaskTimeoutError, WorkerLostError, evaluate, task
from daglite.backends import ProcessBackend
from daglite.plugins.hooks import hook_impl


@pytest.fixture
def pool():
    """A fresh two-worker pool per test; none of its workers may outlive it."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    backend = ProcessBackend(max_workers=2)
    with backend:
        yield backend
    _assert_no_new_workers_left(before)


def _assert_no_new_workers_left(before: set[int], deadline: float = 30.0) -> None:
    me = psutil.Process()
    end = time.monotonic() + deadline
    while True:
        workers = [
            p for p in me.children(recursive=True) if p.pid not in before and _is_pool_worker(p)
        ]
        if not workers or time.monotonic() > end:
            break
        time.sleep(0.1)  # bounded poll for process exit, not synchronisation
    if not workers:
        return
    left = [(p.pid, " ".join(p.cmdline())[:200]) for p in workers]
    raise AssertionError(f"worker processes left behind: {left}")


# multiprocessing's forkserver and resource tracker are per-interpreter helpers
# that live until the caller exits; they run no tasks.
_HELPERS = ("forkserver", "resource_tracker", "daglite-shm-janitor")


def _is_pool_worker(proc: psutil.Process) -> bool:
    """A live descendant that is not one of the helpers (workers are the forkserver's
    children, so they share its command line but not its parent)."""
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = " ".join(proc.cmdline())
        is_helper = any(h in cmdline for h in _HELPERS) and proc.ppid() == os.getpid()
        return not is_helper
    except psutil.Error:
        return False


def _exit_1() -> None:
    os._exit(1)


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _segfault() -> None:
    ctypes.string_at(0)


CRASHES = [
    (_exit_1, r"exited with code 1"),
    (_sigkill_self, r"killed by signal SIGKILL"),
    (_segfault, r"killed by signal SIGSEGV"),
]


@task
def value(x: int) -> int:
    return x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@pytest.mark.parametrize(("crash", "match"), CRASHES, ids=["exit", "sigkill", "segfault"])
def test_worker_death_fails_only_that_task_and_pool_recovers(pool, crash, match):
    @task
    def crasher(x: int) -> int:
        crash()
        return x

    with pytest.raises(WorkerLostError, match=match) as info:
        evaluate(total([value(1), crasher(2), value(3)]), backend=pool)
    assert info.value.task_name == "crasher"
    assert info.value.key == "crasher"
    assert evaluate(total([value(1), value(2)]), backend=pool) == 3


def test_worker_death_other_tasks_are_resubmitted_and_finish(pool):
    @task
    def crasher(x: int) -> int:
        os._exit(1)

    from daglite import EvaluationError

    with pytest.raises(EvaluationError) as info:
        evaluate([crasher(0)] + [value(i) for i in range(20)], backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["crasher"]
    assert isinstance(err.errors["crasher"], WorkerLostError)
    assert sorted(v for k, v in err.results.items() if k.startswith("value")) == list(range(20))


def test_worker_death_with_retries_runs_again_on_a_fresh_worker(pool, tmp_path):
    marker = tmp_path / "died-once"

    @task(retries=1)
    def dies_once(x: int) -> int:
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return os.getpid()

    pid = evaluate(dies_once(1), backend=pool)
    assert pid != int(marker.read_text())


def test_timeout_terminates_the_worker_and_replaces_it(pool):
    @task(timeout=0.5)
    def spin(x: int) -> int:
        while True:
            pass

    @task
    def whoami(x: int) -> int:
        return os.getpid()

    before = set(pool.worker_pids()) | {evaluate(whoami(0), backend=pool)}
    with pytest.raises(TaskTimeoutError) as info:
        evaluate(spin(1), backend=pool)
    assert info.value.task_name == "spin"
    assert isinstance(info.value.error, TimeoutError)
    # The runaway's worker is gone (bounded poll), and the pool still works.
    end = time.monotonic() + 20
    while time.monotonic() < end and any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        for p in before
        if p not in pool.worker_pids()
    ):
        time.sleep(0.1)
    assert evaluate(total([value(1), value(2)]), backend=pool) == 3
    burning = [p for p in psutil.Process().children(recursive=True) if _cpu_bound_for_a_while(p)]
    assert not burning


def _cpu_bound_for_a_while(proc: psutil.Process) -> bool:
    try:
        return proc.cpu_percent(interval=0.5) > 80
    except psutil.Error:
        return False


def test_unpicklable_input_names_task_and_parameter(pool):
    @task
    def takes(x: object, y: int) -> int:
        return y

    with pytest.raises(TaskError, match=r"task 'takes'.*parameter 'x'") as info:
        evaluate(takes(threading.Lock(), 1), backend=pool)
    assert "pickle" in str(info.value.error)
    assert evaluate(total([value(1), value(2)]), backend=pool) == 3


def test_unpicklable_result_is_named_result(pool):
    @task
    def returns_lock() -> object:
        return threading.Lock()

    with pytest.raises(TaskError, match=r"result") as info:
        evaluate(returns_lock(), backend=pool)
    assert info.value.task_name == "returns_lock"
    assert evaluate(total([value(1), value(2)]), backend=pool) == 3


def test_unpicklable_input_fails_only_its_task(pool):
    from daglite import EvaluationError

    @task
    def takes(x: object) -> int:
        return 1

    with pytest.raises(EvaluationError) as info:
        evaluate([takes(threading.Lock()), value(5)], backend=pool, on_error="continue")
    assert list(info.value.errors) == ["takes"]
    assert info.value.results["value"] == 5


def test_exception_from_worker_keeps_type_and_remote_traceback(pool):
    class Boom(ValueError):
        pass

    @task
    def explode(x: int) -> int:
        raise Boom(f"bad {x}")

    with pytest.raises(TaskError) as info:
        evaluate(explode(7), backend=pool)
    err = info.value.error
    assert type(err).__name__ == "Boom"
    assert isinstance(err, ValueError)
    assert info.value.__cause__ is err
    remote = str(err.__cause__)
    assert "in explode" in remote  # the worker's frame, by name and line
    assert "Boom: bad 7" in remote


def test_unpicklable_event_is_dropped_with_a_warning(pool, caplog):
    from daglite.plugins.reporters import get_reporter

    @task
    def reports() -> int:
        get_reporter().report("bad", {"lock": threading.Lock()})
        get_reporter().report("good", {"n": 1})
        return 1

    seen = []

    class Handler:
        def register_event_handlers(self, registry):
            registry.on("good", seen.append)
            registry.on("bad", seen.append)

    with caplog.at_level("WARNING", logger="daglite"):
        assert evaluate(reports(), backend=pool, plugins=[Handler()]) == 1
    assert [e["type"] for e in seen] == ["good"]
    assert "'bad'" in caplog.text and "dropped" in caplog.text


CALLER = os.getpid()


def _refuse_in_the_caller() -> str:
    if os.getpid() == CALLER:
        raise RuntimeError("this object cannot be rebuilt in the caller")
    return "rebuilt"


class OnlyInWorkers:
    """Pickles in the worker, fails to unpickle in the caller."""

    def __reduce__(self):
        return (_refuse_in_the_caller, ())


@task
def slow_odd(x: int) -> object:
    time.sleep(0.08)  # its job runs long: the result goes home early
    return OnlyInWorkers()


@task
def kind(x: object) -> str:
    return type(x).__name__


def test_result_that_does_not_unpickle_in_the_caller_fails_only_its_task(pool):
    from daglite import EvaluationError

    calls = [slow_odd(1), value(1), value(2), value(3)]
    with pytest.raises(EvaluationError) as info:
        evaluate(calls, backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["slow_odd"]
    assert "could not be unpickled in the caller" in str(err.errors["slow_odd"])
    assert sorted(err.results.values()) == [1, 2, 3]
    # A fused chain: the result stays in the worker, where ``kind`` uses it (gh-14)...
    assert evaluate(kind(slow_odd(0)), backend=pool) == "OnlyInWorkers"

    class SeesResults:
        @hook_impl
        def after_node_execute(self, key, result):
            pass

    # ...unless the caller needs it: a hook looks at results.
    with pytest.raises(TaskError, match=r"'slow_odd'.*could not be unpickled"):
        evaluate(kind(slow_odd(0)), backend=pool, plugins=[SeesResults()])
    assert evaluate(total([value(1), value(2)]), backend=pool) == 3


def _add_one(x: int) -> int:
    return x + 1


# Pickled by name (a decorated object is), under a name only the caller's
# ``daglite`` module has (the test sets it): workers cannot find it.
_add_one.__module__, _add_one.__qualname__ = "daglite", "_test_only_in_caller"
_only_in_caller = functools.lru_cache(_add_one)


@task
def uses_caller_only(x: int) -> int:
    return _only_in_caller(x)


def test_a_task_that_does_not_unpickle_in_the_worker_fails_alone_naming_itself(pool, monkeypatch):
    import daglite
    from daglite import BackendError, EvaluationError

    monkeypatch.setattr(daglite, "_test_only_in_caller", _only_in_caller, raising=False)
    assert _only_in_caller(1) == 2  # fine here
    with pytest.raises(EvaluationError) as info:
        evaluate([uses_caller_only(1), value(2)], backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["uses_caller_only"]
    error = err.errors["uses_caller_only"]
    assert isinstance(getattr(error, "error", error), BackendError)
    assert "task 'uses_caller_only' could not be unpickled in the worker process" in str(error)
    assert "_test_only_in_caller" in str(error)
    assert list(err.results.values()) == [2]
    assert evaluate(value(3), backend=pool) == 3  # no worker was lost
