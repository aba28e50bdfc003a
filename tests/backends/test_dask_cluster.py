"""The dask backend against a real cluster: a scheduler and two workers started as processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import psutil
import pytest

pytest.importorskip("distributed")

from daglite import TaskError, evaluate, task
from daglite.backends.dask import DaskBackend
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _dask(*args: str, log) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("DAGLITE_DASK_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _tree(proc: subprocess.Popen) -> list[psutil.Process]:
    """``proc`` and its descendants (a worker's nanny runs the worker as a child)."""
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(procs: list[subprocess.Popen]) -> list[psutil.Process]:
    """Terminate workers then the scheduler (first in ``procs``), killing after a
    bounded wait; return what is still alive."""
    left = []
    for group in (procs[1:], procs[:1]):
        tree = [p for proc in group for p in _tree(proc)]
        for proc in group:
            if proc.poll() is None:
                proc.terminate()
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            p.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        left.extend(alive)
    for proc in procs:
        proc.wait(timeout=10)
    return left


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory):
    """A scheduler and two single-threaded workers on loopback, as separate processes."""
    tmp = tmp_path_factory.mktemp("dask-cluster")
    log = open(tmp / "cluster.log", "w")
    port = _free_port()
    address = f"tcp://{LOOPBACK}:{port}"
    scheduler = _dask(
        "scheduler",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--no-dashboard",
        "--dashboard-address",
        f"{LOOPBACK}:{_free_port()}",
        log=log,
    )
    procs = [scheduler]
    try:
        for _ in range(2):
            procs.append(
                _dask(
                    "worker",
                    address,
                    "--host",
                    LOOPBACK,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--death-timeout",
                    "60",
                    "--local-directory",
                    str(tmp),
                    log=log,
                )
            )
        yield address, procs
    finally:
        left = _stop(procs)
        log.close()
        assert not left, f"cluster processes left behind: {left}"
        assert all(p.poll() is not None for p in procs)


@task
def where(x: int) -> int:
    get_reporter().report("ran", {"x": x})
    return os.getpid()


@task
def count(pids: list[int]) -> int:
    return len(pids)


@task
def fail(x: int) -> int:
    raise KeyError(x)


class Timings:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.events: list[int] = []
        self.places: set[tuple[int, int]] = set()

    def register_event_handlers(self, registry) -> None:
        registry.on("ran", lambda e: self.events.append(e["x"]))

    @hook_impl
    def after_node_execute(self, key, duration) -> None:
        self.places.add((os.getpid(), threading.get_ident()))
        self.timings[key] = duration


def _worker_pids(procs: list[subprocess.Popen]) -> set[int]:
    return {p.pid for proc in procs[1:] for p in _tree(proc)}


def test_dag_runs_on_the_cluster_workers_and_plugins_fill_in_the_caller(real_cluster):
    address, procs = real_cluster
    plugin = Timings()
    backend = DaskBackend(address=address)
    with backend:
        backend.client.wait_for_workers(2, timeout=60)
        mapped = where.product(x=[1, 2, 3, 4, 5, 6])
        pids, n = evaluate((mapped, mapped.join(count)), backend=backend, plugins=[plugin])
        with pytest.raises(TaskError, match=r"task 'fail' \(key 'fail'\) failed: KeyError"):
            evaluate(fail(3), backend=backend)
    assert n == 6
    workers = _worker_pids(procs)
    assert set(pids) <= workers and os.getpid() not in workers
    assert set(plugin.timings) == {f"where[{i}]" for i in range(6)} | {"count"}
    assert sorted(plugin.events) == [1, 2, 3, 4, 5, 6]
    assert plugin.places == {(os.getpid(), threading.get_ident())}
    # daglite did not own this cluster: it is still running.
    assert all(proc.poll() is None for proc in procs)


def test_address_from_environment(real_cluster, monkeypatch):
    address, procs = real_cluster
    monkeypatch.setenv("DAGLITE_DASK_ADDRESS", address)
    with DaskBackend() as backend:
        assert backend.address == address
        pid = evaluate(where(1), backend=backend)
    assert pid in _worker_pids(procs)
    assert all(proc.poll() is None for proc in procs)


# -- gh-17: the graph runs on the cluster, data stays there ---------------------------------
# The workers here are not children of this process: they meet the caller on
# Dask's own ``distributed.Event``, which the scheduler keeps.


@task
def inc(x: int) -> int:
    return x + 1


@task
def signal(x: int, name: str) -> int:
    from distributed import Event

    Event(name).set()
    return x


@task
def wait_for(name: str) -> int:
    from distributed import Event

    return int(Event(name).wait(60))


@task
def sized(n: int) -> bytes:
    return b"x" * n


@task
def length(data: bytes) -> int:
    return len(data)


@task
def mark(x: int, directory: str, i: int) -> int:
    open(os.path.join(directory, str(i)), "w").close()
    return x


class HoldsTheCaller:
    """Blocks the engine thread in the first task's after hook until the last one ran."""

    def __init__(self, backend: DaskBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.tail_ran_while_held: bool | None = None

    @hook_impl
    def after_node_execute(self, key) -> None:
        from distributed import Event

        if key == "inc":
            event = Event(self.name, client=self.backend.client)
            self.tail_ran_while_held = event.wait(60)


def _bytes_sent_to_clients(client) -> int:
    def sent(dask_worker) -> int:
        return sum(t["total"] for t in dask_worker.transfer_outgoing_log if t["who"] is None)

    return sum(client.run(sent).values())


def test_gh17_a_chain_runs_on_the_cluster_while_the_caller_is_busy(real_cluster):
    address, _ = real_cluster
    with DaskBackend(address=address) as backend:
        backend.client.wait_for_workers(2, timeout=60)
        dag = inc(0)
        for _ in range(5):
            dag = inc(dag)
        plugin = HoldsTheCaller(backend, "gh17-tail")
        assert evaluate(signal(dag, "gh17-tail"), backend=backend, plugins=[plugin]) == 6
    assert plugin.tail_ran_while_held is True


def test_gh17_a_100mb_intermediate_never_reaches_the_caller(real_cluster):
    address, _ = real_cluster
    n = 100 << 20
    with DaskBackend(address=address) as backend:
        backend.client.wait_for_workers(2, timeout=60)
        before = _bytes_sent_to_clients(backend.client)
        assert evaluate(length(sized(n)), backend=backend) == n
        assert _bytes_sent_to_clients(backend.client) - before < 64 << 10


def test_gh17_fail_fast_cancels_the_graph_on_a_cluster_given_by_address(real_cluster, tmp_path):
    address, procs = real_cluster
    with DaskBackend(address=address) as backend:
        backend.client.wait_for_workers(2, timeout=60)
        chain = wait_for("gh17-gate")
        for i in range(4):
            chain = mark(inc(chain), str(tmp_path), i)
        try:
            with pytest.raises(TaskError, match=r"task 'fail'"):
                evaluate([fail(1), chain], backend=backend)
        finally:
            from distributed import Event

            Event("gh17-gate", client=backend.client).set()
        # The gated task ran to its end (not our workers to restart); the
        # chain after it had been cancelled on the scheduler.
        assert evaluate(inc(1), backend=backend) == 2
    assert os.listdir(tmp_path) == []
    assert all(proc.poll() is None for proc in procs)
