"""gh-15: runs started by tasks share their caller's budget, at any depth, on any backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import psutil
import pytest

import daglite
from daglite import TaskTimeoutError, evaluate, task
from daglite.backends import ProcessBackend, ThreadBackend
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter


class _Seen:
    """A plugin that counts node hooks and ``tick`` events of the run it is given to."""

    def __init__(self) -> None:
        self.before = 0
        self.after = 0
        self.ticks = 0

    @hook_impl
    def before_node_execute(self, key: str) -> None:
        self.before += 1

    @hook_impl
    def after_node_execute(self, key: str) -> None:
        self.after += 1

    def register_event_handlers(self, registry: Any) -> None:
        registry.on("tick", self._tick)

    def _tick(self, event: dict[str, Any]) -> None:
        self.ticks += 1


@task
def leaf(x: int) -> int:
    get_reporter().report("tick", {"x": x})
    return x + 1


def test_threads_in_threads_with_every_thread_waiting_depth_3() -> None:
    pool = ThreadBackend(max_workers=2)
    # Both outer calls hold a thread before either starts its inner run: every
    # thread of the pool then waits on a nested run, at each depth.
    both_busy = threading.Barrier(2, timeout=30)
    seen: list[_Seen] = []
    lock = threading.Lock()

    @task
    def middle(n: int) -> int:
        plugin = _Seen()
        with lock:
            seen.append(plugin)
        return sum(evaluate(leaf.product(x=list(range(n))), backend=pool, plugins=[plugin]))

    @task
    def outer(n: int) -> int:
        both_busy.wait()
        return sum(evaluate(middle.product(n=[n, n + 1]), backend=pool))

    with pool:
        assert evaluate(outer.product(n=[2, 3]), backend=pool) == [3 + 6, 6 + 10]
        assert len(pool._pool._threads) <= 2  # type: ignore[union-attr]  # never grew
    assert sorted((s.before, s.after, s.ticks) for s in seen) == [
        (2, 2, 2),
        (3, 3, 3),
        (3, 3, 3),
        (4, 4, 4),
    ]


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@task
def count_processes(caller: int, x: int) -> tuple[int, int]:
    return x + 1, len(_descendants(caller))


def test_processes_in_processes_starts_no_second_pool_depth_3() -> None:
    caller = os.getpid()

    @task
    def middle(n: int) -> tuple[int, int, tuple[int, int, int]]:
        plugin = _Seen()
        out = evaluate(
            count_processes.product(caller=[caller], x=list(range(n))),
            backend="processes",
            plugins=[plugin],
        )
        return sum(v for v, _ in out), max(c for _, c in out), (plugin.before, plugin.after, n)

    @task
    def outer(n: int) -> list[Any]:
        return evaluate(middle.product(n=[n, n + 1]), backend="processes", max_workers=2)

    with ProcessBackend(max_workers=2) as pool:
        evaluate(task(lambda: 0)(), backend=pool)  # the pool's workers, and helpers, are up
        before = len(_descendants(caller))
        out = evaluate(outer.product(n=[1, 2]), backend=pool)
    results = [row for rows in out for row in rows]
    assert [v for v, _, _ in results] == [1, 3, 3, 6]
    # Live processes during the nested runs: the outer pool's, plus at most one helper.
    assert max(c for _, c, _ in results) <= before + 1
    # Hooks of each inner run reached the plugin that run was given.
    assert [p for _, _, p in results] == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (3, 3, 3)]


def test_nested_timeout_in_a_worker_does_not_end_the_worker() -> None:
    @task(timeout=0.2)
    def stuck() -> int:
        threading.Event().wait(30)
        return 0

    @task
    def outer() -> str:
        try:
            evaluate(stuck(), backend="processes")
        except TaskTimeoutError as exc:
            return f"inner timed out: {exc.task_name}"
        return "no timeout"

    with ProcessBackend(max_workers=1) as pool:
        assert evaluate(outer(), backend=pool) == "inner timed out: stuck"


def test_processes_in_threads() -> None:
    plugin = _Seen()

    @task
    def outer(n: int) -> int:
        return sum(evaluate(leaf.product(x=list(range(n))), backend="processes", plugins=[plugin]))

    assert evaluate(outer.product(n=[2, 3]), backend="threads", max_workers=2) == [3, 6]
    assert (plugin.before, plugin.after, plugin.ticks) == (5, 5, 5)


def test_dask_in_processes_runs_on_the_worker() -> None:
    pytest.importorskip("distributed")
    caller = os.getpid()

    @task
    def outer(n: int) -> tuple[int, int, int]:
        plugin = _Seen()
        out = evaluate(
            count_processes.product(caller=[caller], x=list(range(n))),
            backend="dask",
            plugins=[plugin],
        )
        return sum(v for v, _ in out), max(c for _, c in out), plugin.after

    with ProcessBackend(max_workers=2) as pool:
        evaluate(task(lambda: 0)(), backend=pool)
        before = len(_descendants(caller))
        out = evaluate(outer.product(n=[2, 3]), backend=pool)
    assert [(v, after) for v, _, after in out] == [(3, 2), (6, 3)]
    assert max(c for _, c, _ in out) <= before + 1


_SCRIPT = """
from daglite import evaluate, task

@task
def leaf(x):
    return x * 2

@task
def inner(n):
    return sum(evaluate(leaf.product(x=list(range(n))), backend="processes"))

@task
def outer(n):
    return sum(evaluate(inner.product(n=[n, n + 1]), backend="processes"))

print(evaluate(outer.product(n=[1, 2, 3]), backend="processes", max_workers=2), flush=True)
"""


def _marked(marker: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("DAGLITE_TEST_MARKER") == marker:
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def test_nested_processes_script_exits_promptly_leaving_nothing(tmp_path: Any) -> None:
    script = tmp_path / "nested.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    marker = uuid.uuid4().hex
    env = {**os.environ, "DAGLITE_TEST_MARKER": marker}
    src = os.path.dirname(os.path.dirname(daglite.__file__))  # the daglite under test
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2, 8, 18]"
    assert "Traceback" not in done.stderr
    left = _marked(marker)
    for _ in range(50):  # workers notice their caller is gone at once; allow a moment
        if not left:
            break
        time.sleep(0.1)
        left = _marked(marker)
    assert left == []


def test_a_dask_label_in_the_callers_own_process_is_no_worker(monkeypatch: Any) -> None:
    # A Dask cluster with processes=False runs jobs in the caller's process,
    # which names itself like a Dask worker: its runs must still use processes.
    from daglite._job import call

    monkeypatch.setattr(call, "process_label", "tcp://127.0.0.1:1")
    assert not call.in_worker_process()
    caller = os.getpid()
    assert evaluate(task(os.getpid)(), backend="processes") != caller
