"""Interrupts, parent death, leaks and nested evaluation (issue 6).

Each scenario runs in a fresh interpreter so signals and process counts are
the test's own. Scripts print marker lines that the test waits for (with a
timeout), instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

LONG_DAG = textwrap.dedent(
    """
    import signal, sys, time
    # As in a terminal: the test runner may have started us with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from daglite import task, evaluate
    from daglite.plugins.hooks import hook_impl

    class Announce:
        def __init__(self):
            self.started = 0

        @hook_impl
        def before_node_execute(self, key):
            self.started += 1
            if self.started == 2:
                print("STARTED", flush=True)

        @hook_impl
        def on_graph_error(self, error):
            print("GRAPH_ERROR", type(error).__name__, flush=True)

    @task
    def long(i: int) -> int:
        time.sleep(120)  # the workload: far longer than the test waits
        return i

    @task
    def total(xs: list) -> int:
        return sum(xs)

    evaluate(total([long(i) for i in range(6)]), backend="processes",
             plugins=[Announce()], max_workers=2)
    print("FINISHED", flush=True)
    """
)


def _spawn(script: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_line(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> None:
    """Read stdout until ``marker`` (a deadlock detector, not a delay)."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sel.select(timeout=max(0.0, end - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(marker):
                return
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"{marker!r} never printed; stderr: {err[-2000:]}")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _all_gone(procs: list[psutil.Process], timeout: float = 30) -> list[int]:
    """Pids still running after ``timeout`` (bounded poll for process exit)."""
    end = time.monotonic() + timeout
    alive = procs
    while time.monotonic() < end:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.1)
    return [p.pid for p in alive]


def test_sigint_cancels_workers_and_reports_graph_error():
    proc = _spawn(LONG_DAG)
    _wait_for_line(proc, "STARTED")
    children = _descendants(proc.pid)
    assert children, "the processes backend should have started workers"
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert "GRAPH_ERROR KeyboardInterrupt" in out
    assert "FINISHED" not in out
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0
    assert _all_gone(children) == []


def test_workers_exit_when_the_caller_is_killed():
    proc = _spawn(LONG_DAG)
    _wait_for_line(proc, "STARTED")
    children = _descendants(proc.pid)
    assert children
    proc.kill()
    proc.communicate(timeout=30)
    assert _all_gone(children, timeout=30) == []


LEAK_SCRIPT = textwrap.dedent(
    """
    import os, sys, psutil
    from daglite import task, evaluate
    from daglite.backends import get_backend

    @task
    def inc(x: int) -> int:
        return x + 1

    @task
    def total(xs: list) -> int:
        return sum(xs)

    backend = sys.argv[1]
    calls = int(sys.argv[2])
    me = psutil.Process()

    def snapshot():
        return me.memory_info().rss, me.num_fds(), me.num_threads()

    def dag():
        return total(inc.product(x=range(10)).map(inc))

    options = {} if backend == "inline" else {"max_workers": 2}
    for i in range(calls):
        assert evaluate(dag(), backend=backend, **options) == 65
        if i == calls // 4:
            first = snapshot()
    last = snapshot()
    helpers = ("forkserver", "resource_tracker", "daglite-shm-janitor")
    workers = [
        p for p in me.children(recursive=True)
        if not (p.ppid() == os.getpid() and any(h in " ".join(p.cmdline()) for h in helpers))
    ]
    print("RSS", first[0], last[0])
    print("FDS", first[1], last[1])
    print("THREADS", first[2], last[2])
    print("WORKERS", len(workers))
    get_backend(backend, **options).shutdown()
    workers_after = [p for p in workers if p.is_running() and p.status() != "zombie"]
    print("AFTER_STOP", len(workers_after))
    """
)


@pytest.mark.parametrize("backend", ["inline", "threads", "processes"])
def test_repeated_evaluations_do_not_leak(backend):
    proc = subprocess.run(
        [sys.executable, "-c", LEAK_SCRIPT, backend, "200"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    figures = {
        line.split()[0]: [int(v) for v in line.split()[1:]] for line in proc.stdout.splitlines()
    }
    rss_first, rss_last = figures["RSS"]
    assert rss_last - rss_first < 16 * 2**20, figures
    assert figures["FDS"][1] - figures["FDS"][0] <= 2, figures
    assert figures["THREADS"][1] - figures["THREADS"][0] <= 1, figures
    expected_workers = 2 if backend == "processes" else 0
    assert figures["WORKERS"] == [expected_workers], figures
    assert figures["AFTER_STOP"] == [0], figures


def test_nested_evaluate_inside_tasks_works(backend):
    if backend == "dask":
        pytest.skip("a task on a Dask worker evaluating locally is covered in test_dask")
    from daglite import evaluate, task

    @task
    def inner(x: int) -> int:
        return x * 10

    @task
    def outer(x: int, nested_backend: str) -> int:
        return evaluate(inner(x), backend=nested_backend)

    for nested in ("inline", "threads"):
        assert evaluate(outer(2, nested), backend=backend) == 20


def test_processes_inside_a_process_worker_works_and_cleans_up():
    from daglite import evaluate, task

    @task
    def inner(x: int) -> int:
        return x + 1

    @task
    def outer(x: int) -> list:
        from daglite.backends import ProcessBackend

        with ProcessBackend(max_workers=1) as nested:
            return evaluate(inner.product(x=[x, x + 1]), backend=nested)

    assert evaluate(outer(1), backend="processes", max_workers=1) == [2, 3]
