"""The ray backend: connection, data locality, failures, timeouts, cancellation (gh-18).

Most tests run against the session's head node (``ray start --head``, see
``conftest.ray_address``); the local instance daglite starts itself is tested
in fresh interpreters, since Ray connects a process to one cluster.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("ray")

import ray
from tests.backends._cluster_tasks import (
    UNPICKLED,
    Blob,
    Order,
    die,
    die_at,
    double,
    explode,
    inc,
    total,
    where,
)

from daglite import TaskError, TaskTimeoutError, WorkerLostError, evaluate, evaluate_async, task
from daglite.backends import _ray_worker, get_backend
from daglite.backends import ray as ray_backend
from daglite.backends.ray import RayBackend, RemoteResult
from daglite.exceptions import (
    ArgumentsNotPicklableError,
    BackendError,
    EvaluationError,
    ResultNotPicklableError,
)
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

SRC = str(Path(__file__).resolve().parents[2] / "src")
BIG = 4 * 1024 * 1024  # bytes: over the default remote threshold (1 MiB)


@pytest.fixture(scope="module")
def cluster(ray_address: str):
    """A RayBackend connected to the session's head node."""
    backend = RayBackend(address=ray_address)
    backend.ensure_started()
    yield backend
    backend.shutdown()


class _OneCallPerTask(RayBackend):
    """No fused chains: each call is a Ray task of its own, chained by Ray (gh-18)."""

    max_batch = 1


@pytest.fixture(scope="module")
def unfused(cluster, ray_address: str):
    """A RayBackend on the same head node that sends one call per Ray task."""
    backend = _OneCallPerTask(address=ray_address)
    backend.ensure_started()
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def manager():
    """Events and queues shared with the Ray worker processes."""
    with multiprocessing.get_context("spawn").Manager() as m:
        yield m


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_exited(pids: list[int], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    alive = pids
    while time.monotonic() < end:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return
        time.sleep(0.1)  # bounded poll for process exit, not synchronisation
    raise AssertionError(f"processes left running: {alive}")


# -- tasks (module level: the workers import this module) --------------------------------


@task
def make_big(n: int) -> Any:
    import numpy as np

    return np.ones(n // 8)


@task
def read_big(array: Any) -> tuple[float, bool, int]:
    # Read-only: Ray handed the array out of its object store, not a copy.
    return float(array.sum()), bool(array.flags.writeable), os.getpid()


@task
def pid_of(read: tuple[float, bool, int]) -> int:
    return read[2]


@task
def first_of(arrays: list[Any]) -> float:
    return float(arrays[0][0])


@task
def spin(running, pids, stop) -> int:
    """A long loop: runs until the test sets ``stop``, whatever daglite does."""
    pids.put(os.getpid())
    running.set()
    give_up = time.monotonic() + 120  # a deadlock detector, never reached when all is well
    while not stop.wait(0.005) and time.monotonic() < give_up:
        pass
    return 0


@task
def explode_while_running(running) -> int:
    if not running.wait(60):
        raise TimeoutError("spin never started")
    raise ValueError("boom while spin runs")


@task(timeout=1.0)
def stuck(pids, stop) -> int:
    pids.put(os.getpid())
    stop.wait(120)  # blocks: only killing its worker stops it
    return 0


class Recorder:
    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.errors: list[BaseException] = []

    @hook_impl
    def after_node_execute(self, key, result):
        self.results[key] = result

    @hook_impl
    def on_node_error(self, key, error):
        self.errors.append(error)


# -- connecting ----------------------------------------------------------------------------


def test_tasks_run_in_ray_worker_processes(cluster):
    pids = evaluate(where.product(x=[1, 2, 3]), backend=cluster)
    assert os.getpid() not in pids
    assert all(_alive(p) for p in pids)


def test_registry_name_connects_to_the_address_in_the_environment(ray_address):
    # conftest set DAGLITE_RAY_ADDRESS to the head node: backend="ray" goes there.
    backend = get_backend("ray")
    assert evaluate(double(4), backend="ray") == 8
    assert backend.address == ray_address
    port = ray_address.rsplit(":", 1)[1]
    assert ray.get_runtime_context().gcs_address.endswith(f":{port}")


def test_stopping_a_backend_on_a_cluster_leaves_the_cluster_up(ray_address):
    backend = RayBackend(address=ray_address)
    with backend:
        assert evaluate(double(2), backend=backend) == 4
    assert evaluate(double(3), backend=RayBackend(address=ray_address)) == 6


def test_a_second_cluster_in_one_process_is_refused(cluster):
    other = RayBackend(address="127.0.0.1:1")
    with pytest.raises(BackendError, match="one cluster"):
        other.ensure_started()


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="max_workers must be greater than 0, got 0"):
        RayBackend(max_workers=0)
    with pytest.raises(ValueError, match="remote_threshold must be 0 or more"):
        RayBackend(remote_threshold=-1)


def test_max_workers_on_a_cluster_bounds_tasks_in_flight(ray_address, manager):
    # The first task waits (bounded) for the second to start. With one task in
    # flight at most, the second starts only after the first returned.
    started = manager.Event()
    backend = RayBackend(address=ray_address, max_workers=1)

    @task
    def first(started) -> bool:
        return started.wait(3)

    @task
    def unrelated(started) -> bool:
        started.set()
        return True

    with backend:
        alone = evaluate([first(started), unrelated(started)], backend=backend)
    assert alone == [False, True]


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    # The local instance is the script's own, not the session's head node.
    for name in ("DAGLITE_RAY_ADDRESS", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=110,
        env=full_env,
    )


def test_local_instance_is_started_quietly_and_stopped_at_exit():
    # daglite starts a local instance (its CPUs from max_workers), prints
    # nothing, and the instance's processes end with the interpreter.
    proc = _run_python(
        """
        import os, psutil, ray
        from daglite import evaluate, task
        from daglite.backends.ray import RayBackend

        @task
        def pid(x: int) -> int:
            return os.getpid()

        backend = RayBackend(max_workers=3)
        worker = evaluate(pid(1), backend=backend)
        mine = psutil.Process().children(recursive=True)
        names = " ".join(p.name() for p in mine)
        print("CPUS", int(ray.cluster_resources()["CPU"]), file=os.sys.stderr)
        print("PIDS", *[p.pid for p in mine], file=os.sys.stderr)
        print("WORKER", worker in [p.pid for p in mine], file=os.sys.stderr)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # nothing printed by default
    lines = {line.split()[0]: line.split()[1:] for line in proc.stderr.splitlines() if line}
    assert lines["CPUS"] == ["3"]
    assert lines["WORKER"] == ["True"]
    _assert_exited([int(p) for p in lines["PIDS"]])


def test_local_instance_options_are_quiet_and_without_dashboard(monkeypatch):
    monkeypatch.delenv("DAGLITE_RAY_ADDRESS", raising=False)
    options = RayBackend(max_workers=3, object_store_memory=10**8)._init_options()
    assert options["num_cpus"] == 3
    assert options["include_dashboard"] is False
    assert options["log_to_driver"] is False
    assert options["logging_level"] >= logging.ERROR
    assert options["object_store_memory"] == 10**8  # **init_options go to ray.init
    # A cluster's size is its own: only the quiet options are given.
    on_cluster = RayBackend(address="10.0.0.1:6379", max_workers=3)._init_options()
    assert "num_cpus" not in on_cluster and "include_dashboard" not in on_cluster


def test_a_connection_the_user_made_is_used_and_left_open():
    proc = _run_python(
        """
        import ray
        from daglite import evaluate, task
        from daglite.backends.ray import RayBackend

        @task
        def one() -> int:
            return 1

        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
        with RayBackend() as backend:
            assert evaluate(one(), backend=backend) == 1
        print(ray.is_initialized())
        ray.shutdown()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_missing_ray_raises_backend_error_with_install_hint():
    proc = _run_python(
        """
        import sys
        sys.modules["ray"] = None
        from daglite import evaluate, task
        from daglite.exceptions import BackendError

        @task
        def one() -> int:
            return 1

        try:
            evaluate(one(), backend="ray")
        except BackendError as exc:
            print(str(exc))
            print(exc.__cause__ is None, exc.__suppress_context__)
        print(evaluate(one(), backend="processes"))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "the 'ray' backend needs the 'ray' package; install it with `pip install daglite[ray]`",
        "True True",
        "1",
    ]


def test_importing_daglite_does_not_import_ray():
    proc = _run_python(
        """
        import sys
        import daglite, daglite.backends, daglite.engine
        from daglite.backends import available_backends
        print("ray" in sys.modules, "ray" in available_backends())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False True"


# -- events and hooks ----------------------------------------------------------------------


@task
def chatty(n: int, gate) -> bool:
    reporter = get_reporter()
    for j in range(n):
        reporter.report("seq", {"j": j})
    # Blocks until the caller's handler has seen the first half: those events
    # travelled home while this task still runs.
    seen = gate.wait(60)
    for j in range(n, 2 * n):
        reporter.report("seq", {"j": j})
    return seen


class Sequence:
    def __init__(self, gate, n: int) -> None:
        self.gate, self.n, self.seen = gate, n, []

    def register_event_handlers(self, registry):
        registry.on("seq", self.on_seq)

    def on_seq(self, event):
        self.seen.append(event["j"])
        if len(self.seen) == self.n:
            self.gate.set()


def test_events_arrive_while_the_task_runs_and_in_order(cluster, manager):
    gate = manager.Event()
    plugin = Sequence(gate, 5)
    assert evaluate(chatty(5, gate), backend=cluster, plugins=[plugin]) is True
    assert plugin.seen == list(range(10))


def test_events_travel_through_the_relay_actor_when_nodes_are_elsewhere(
    ray_address, manager, monkeypatch
):
    # As on a cluster whose nodes cannot reach the caller's socket.
    monkeypatch.setattr(RayBackend, "_needs_relay", lambda self, here: True)
    backend = RayBackend(address=ray_address)
    gate = manager.Event()
    plugin = Sequence(gate, 5)
    with backend:
        assert backend._relay is not None
        assert evaluate(chatty(5, gate), backend=backend, plugins=[plugin]) is True
    assert plugin.seen == list(range(10))


# -- data locality -------------------------------------------------------------------------


def test_big_intermediate_results_stay_in_the_object_store(unfused):
    plugin = Recorder()
    summed, writeable, _ = evaluate(read_big(make_big(BIG)), backend=unfused, plugins=[plugin])
    assert summed == BIG // 8
    assert writeable is False  # zero-copy out of the object store
    stand_in = plugin.results["make_big"]
    assert isinstance(stand_in, RemoteResult)
    assert stand_in.nbytes == BIG
    assert stand_in.type_name == "numpy.ndarray"


def test_final_big_results_are_materialized(cluster):
    result = evaluate(make_big(BIG), backend=cluster)
    assert type(result).__name__ == "ndarray" and result.nbytes == BIG


def test_stand_ins_in_lists_reach_downstream_tasks(cluster):
    assert evaluate(first_of([make_big(BIG), make_big(BIG)]), backend=cluster) == 1.0


def test_big_intermediates_of_a_fused_chain_reach_hooks_as_stand_ins(cluster):
    plugin = Recorder()
    # One Ray task runs both calls (gh-18: chains fuse on Ray): the array goes
    # from one call to the next in the worker, and only a stand-in comes home.
    summed, _, _ = evaluate(read_big(make_big(BIG)), backend=cluster, plugins=[plugin])
    assert summed == BIG // 8
    assert isinstance(plugin.results["make_big"], RemoteResult)


def test_stand_ins_are_released_when_no_consumer_needs_them(unfused):
    # The stand-in holds the only ObjectRef in the caller: once gone, Ray frees
    # the value. By the time `after` starts, `read_big` (the only consumer) is done.
    refs: list[weakref.ref[Any]] = []
    alive_then: list[bool] = []

    class Watch:
        @hook_impl
        def after_node_execute(self, key, result):
            if isinstance(result, RemoteResult):
                refs.append(weakref.ref(result))

        @hook_impl
        def before_node_execute(self, key):
            if key == "double":
                gc.collect()
                alive_then.append(refs[0]() is not None)

    evaluate(double(pid_of(read_big(make_big(BIG)))), backend=unfused, plugins=[Watch()])
    assert alive_then == [False]


def test_mixed_dag_processes_and_ray(cluster):
    on_processes = make_big.with_options(backend="processes")
    on_ray_reader = read_big
    on_processes_reader = read_big.with_options(backend="processes")
    a = on_ray_reader(on_processes(BIG))  # processes -> ray
    b = on_processes_reader(make_big(BIG))  # ray stand-in -> processes (fetched)
    (sum_a, _, pid_a), (sum_b, _, pid_b) = evaluate([a, b], backend=cluster)
    assert sum_a == sum_b == BIG // 8
    assert pid_a != pid_b


def test_remote_result_copy_is_detached():
    import pickle

    copy = pickle.loads(pickle.dumps(RemoteResult("k", 1, 10, "x.y")))
    with pytest.raises(BackendError, match="not attached"):
        copy.result()


# -- failures ------------------------------------------------------------------------------


def test_task_error_names_the_task_and_keeps_the_cause(cluster):
    with pytest.raises(TaskError, match=r"task 'explode' \(key 'explode'\)") as info:
        evaluate(explode(1), backend=cluster)
    assert isinstance(info.value.error, ValueError)


def test_unpicklable_input_names_the_task_and_the_parameter(cluster):
    @task
    def takes(lock: Any) -> int:
        return 1

    with pytest.raises(TaskError, match="'takes'") as info:
        evaluate(takes(threading.Lock()), backend=cluster)
    assert isinstance(info.value.error, ArgumentsNotPicklableError)
    assert "parameter 'lock'" in str(info.value.error)


class _BigAndLocked:
    nbytes = 10 * 1024 * 1024  # says it is big: it would stay in the object store

    def __init__(self) -> None:
        self.lock = threading.Lock()


@pytest.mark.parametrize("big", [False, True], ids=["small", "big"])
def test_unpicklable_result_names_the_task(cluster, big):
    @task
    def gives() -> Any:
        return _BigAndLocked() if big else threading.Lock()

    with pytest.raises(TaskError, match="'gives'") as info:
        evaluate(gives(), backend=cluster)
    assert isinstance(info.value.error, ResultNotPicklableError)
    assert "result" in str(info.value.error)


def test_worker_death_raises_worker_lost_error(cluster):
    plugin = Recorder()
    with pytest.raises(WorkerLostError, match=r"task 'die' \(key 'die'\) lost its worker") as info:
        evaluate(die(), backend=cluster, plugins=[plugin])
    assert info.value.task_name == "die"
    assert [type(e) for e in plugin.errors] == [WorkerLostError]
    assert evaluate(total(double.product(x=[1, 2])), backend=cluster) == 6


def test_worker_death_in_a_batched_job_blames_only_the_dying_call(cluster):
    dag = die_at.product(i=list(range(6)), fatal=[3])
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=cluster, on_error="continue")
    assert list(info.value.errors) == ["die_at[3]"]
    assert isinstance(info.value.errors["die_at[3]"], WorkerLostError)
    assert sorted(info.value.results) == [f"die_at[{i}]" for i in (0, 1, 2, 4, 5)]


def test_timeout_kills_the_worker_of_the_task(cluster, manager):
    pids, stop = manager.Queue(), manager.Event()
    try:
        with pytest.raises(TaskTimeoutError, match="'stuck'") as info:
            evaluate(stuck(pids, stop), backend=cluster)
        assert isinstance(info.value.error, TimeoutError)
        # ray.cancel(force=True) ended it, and evaluate waited for its process.
        assert not _alive(pids.get(timeout=10))
    finally:
        stop.set()
    assert evaluate(double(4), backend=cluster) == 8


def test_failure_stops_a_sibling_running_on_ray(cluster, manager):
    running, stop, pids = manager.Event(), manager.Event(), manager.Queue()
    dag = [spin(running, pids, stop), explode_while_running(running)]
    try:
        with pytest.raises(TaskError, match="boom while spin runs"):
            evaluate(dag, backend=cluster)
        # Cancelled with force=True before evaluate raised: its worker is gone.
        assert not _alive(pids.get(timeout=10))
    finally:
        stop.set()
    assert evaluate(total(double.product(x=[1, 2, 3])), backend=cluster) == 12


def test_cancelled_evaluate_async_stops_its_task(cluster, manager, monkeypatch):
    # Its worker claimed it: daglite kills that process itself, no ray.cancel.
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: pytest.fail("ray.cancel was called"))
    running, stop, pids = manager.Event(), manager.Event(), manager.Queue()

    async def cancel_once_running() -> int:
        run = asyncio.ensure_future(evaluate_async(spin(running, pids, stop), backend=cluster))
        pid = await asyncio.get_running_loop().run_in_executor(None, pids.get, True, 60)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return pid

    try:
        # Ray reports the task over while its worker exits: daglite waits for it.
        assert not _alive(asyncio.run(cancel_once_running()))
    finally:
        stop.set()
    assert evaluate(double(21), backend=cluster) == 42


def test_ctrl_c_stops_the_running_task_before_evaluate_raises(cluster, manager):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("this test sends SIGINT, which only the main thread receives")
    running, stop, pids = manager.Event(), manager.Event(), manager.Queue()
    spinning: list[int] = []

    def press_ctrl_c_once_running() -> None:
        spinning.append(pids.get(timeout=60))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c_once_running)
    try:
        presser.start()
        with pytest.raises(KeyboardInterrupt):
            evaluate(spin(running, pids, stop), backend=cluster)
        presser.join(60)
        assert not _alive(spinning[0])
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.set()
    assert evaluate(double(8), backend=cluster) == 16


@task
def own_title() -> str:
    return str(psutil.Process().cmdline()[0].split()[0])


def test_a_worker_shows_the_key_of_the_task_it_runs_in_its_title(cluster):
    # The caller finds the worker it force-cancels by this title.
    assert evaluate(own_title(), backend=cluster).startswith(_ray_worker.TITLE_PREFIX)


@pytest.fixture
def killed_worker():
    """A process standing in for a force-cancelled Ray worker: exits when stdin closes."""
    process = subprocess.Popen(["cat"], stdin=subprocess.PIPE)
    yield process
    process.kill()
    process.wait()
    if process.stdin is not None:
        process.stdin.close()


def _ended(exc: BaseException | None) -> Future[Any]:
    end: Future[Any] = Future()
    if exc is None:
        end.set_result([])
    else:
        end.set_exception(exc)
    return end


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "returned-meanwhile"])
def test_a_force_cancelled_task_reads_as_over_once_its_worker_exited(killed_worker, killed):
    # Ray reports a force-cancelled task over while its worker may still be
    # exiting: evaluate must not return before it is gone. A task found running
    # that returned before the kill landed leaves its worker alive: no wait.
    backend = RayBackend()
    outer = ray_backend._Watched(backend, "k", list)
    outer.abandoned = True
    outer.killed = [psutil.Process(killed_worker.pid)]
    backend._settle_from(outer, _ended(ray.exceptions.TaskCancelledError() if killed else None))
    if killed:
        assert not outer.done()  # its worker is alive: blocked on it, not on time
        killed_worker.stdin.close()
        assert wait_for_futures([outer], timeout=30).done == {outer}
    assert outer.cancelled()


def test_a_task_stopped_before_it_starts_never_runs(unfused, manager, tmp_path, monkeypatch):
    # Both CPUs of the head node are held by gated calls, so the plain task
    # waits in Ray's queue when it is cancelled: it must never run, and it is
    # stopped by its claim file, not by ray.cancel (which can abort this
    # process when it races a task being handed to its worker).
    cancels: list[Any] = []
    monkeypatch.setattr(ray, "cancel", lambda *a, **k: cancels.append(a))
    gate, started = manager.Event(), manager.Queue()
    holding = threading.Thread(
        target=evaluate,
        args=([held(gate, started, 0), held(gate, started, 1)],),
        kwargs={"backend": unfused},
    )
    holding.start()
    try:
        assert sorted(started.get(timeout=60) for _ in range(2)) == [0, 1]
        marker = tmp_path / "ran"
        queued = unfused.submit(marker.write_text, "ran")
        queued.cancel()
        assert unfused._claims is not None
        mark = Path(unfused._claims, queued.key)
        assert mark.read_text() == ""  # the stop mark (a worker's claim holds its pid)
    finally:
        gate.set()
    assert wait_for_futures([queued], timeout=60).done == {queued}
    assert queued.cancelled()
    holding.join(60)
    ray.wait(queued.outputs, timeout=60)  # the Ray task got a worker, and returned
    assert not marker.exists()
    assert cancels == []


@task
def held(gate, started, i: int) -> int:
    started.put(i)
    gate.wait(60)
    return i


@task(resources={"daglite_test_nowhere": 1})
def nowhere() -> int:
    return 1


def test_a_stopped_task_that_cannot_start_is_taken_out_of_rays_queue(cluster, monkeypatch):
    # No node has the resource: the stop mark would never be read, so after
    # a grace ray.cancel takes the task out of Ray's queue, and evaluate ends.
    cancels: list[Any] = []
    cancelled = threading.Event()
    real = ray.cancel

    def cancel(*args: Any, **kwargs: Any) -> None:
        cancels.append(args)
        real(*args, **kwargs)
        cancelled.set()

    monkeypatch.setattr(ray, "cancel", cancel)
    submitted = threading.Event()
    launch = cluster._launch

    def launch_and_tell(outer: Any) -> None:
        launch(outer)
        submitted.set()

    monkeypatch.setattr(cluster, "_launch", launch_and_tell)

    async def cancel_once_submitted() -> None:
        run = asyncio.ensure_future(
            evaluate_async(nowhere(), backend=cluster, resources={"daglite_test_nowhere": 1})
        )
        await asyncio.get_running_loop().run_in_executor(None, submitted.wait, 60)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(cancel_once_submitted())
    assert cancelled.wait(60)  # after the grace, from the backend's sweeper
    assert len(cancels) == 1


def test_claims_are_dropped_if_a_task_ran_without_claiming_its_file(tmp_path, caplog):
    # Workers that cannot see the directory (another mount namespace) run
    # their tasks unclaimed: the stop marks would stop nothing.
    backend = RayBackend()
    backend._claims = str(tmp_path)
    claimed = ray_backend._Watched(backend, "claimed", list)
    (tmp_path / "claimed").write_text("123")
    backend._settle_from(claimed, _ended(None))
    assert backend._claims_seen and backend._claims == str(tmp_path)
    assert not (tmp_path / "claimed").exists()

    fresh = RayBackend()
    fresh._claims = str(tmp_path)
    with caplog.at_level(logging.WARNING, logger="daglite.backends.ray"):
        fresh._settle_from(ray_backend._Watched(fresh, "unclaimed", list), _ended(None))
    assert fresh._claims is None
    assert "cannot see" in caplog.text


def test_on_a_remote_cluster_a_cancel_waits_for_rays_io_thread_first(monkeypatch):
    # Without claim files (nodes elsewhere), ray.cancel stops the task, once
    # Ray's io thread has taken in what was submitted before (see
    # test_gh18_a_cancel_waits_until_ray_has_taken_in_what_was_submitted).
    order: list[str] = []

    class FakeRay:
        @staticmethod
        def cancel(ref: Any, force: bool) -> None:
            order.append(f"cancel {ref} force={force}")

    monkeypatch.setattr(ray_backend, "_import_ray", lambda: FakeRay)
    monkeypatch.setattr(ray_backend, "_await_io_thread", lambda r: order.append("wait") or True)
    backend = RayBackend()
    backend._launches = 1
    outer = ray_backend._Watched(backend, "k", list)
    outer.refs = ["ref"]
    backend._in_flight["k"] = outer
    backend._force_cancel(outer)
    assert order == ["wait", "cancel ref force=True"]
    backend._force_cancel(outer)  # taken in already: no second wait
    assert order == ["wait", "cancel ref force=True", "cancel ref force=True"]


# -- gh-18: chains handed to Ray ahead, intermediates stay there ---------------------------


@task
def sized(n: int) -> Blob:
    return Blob(b"x" * n)


@task
def length(data: bytes) -> int:
    return len(data)


def _chain(nbytes: int):
    return length(sized(nbytes)), nbytes


def _fork(nbytes: int):
    data = sized(nbytes)  # its own Ray task; the consumers take its ObjectRef
    return total([length(data), length(data)]), 2 * nbytes


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "one-call-per-task"])
@pytest.mark.parametrize("shape", [_chain, _fork], ids=["chain", "fork"])
@pytest.mark.parametrize("nbytes", [BIG, 200 << 10], ids=["4MB", "200kB"])
def test_gh18_an_intermediate_never_reaches_the_caller(cluster, unfused, nbytes, shape, fused):
    # Big or small: the caller needs only the root's result. (The small one is
    # under remote_threshold, so it used to come home with its outcome.)
    backend = cluster if fused else unfused
    dag, expected = shape(nbytes)
    UNPICKLED.clear()
    assert evaluate(dag, backend=backend) == expected
    assert UNPICKLED == []
    # Positive control: the same bytes as a result do reach the caller.
    assert len(evaluate(sized(nbytes), backend=backend)) == nbytes
    assert UNPICKLED == [nbytes]


@task
def gated(gate, directory: str, i: int) -> int:
    open(os.path.join(directory, str(i)), "w").close()
    gate.wait(60)
    return i


def test_gh18_a_cancel_waits_until_ray_has_taken_in_what_was_submitted():
    # Cancelling a task whose input is ready before Ray's io thread has taken
    # its submission in kills the process (a Ray 2.60 check); without the wait
    # this loop does so within a few rounds on a 2-core machine. The tasks ask
    # for a resource no node has, so none ever reaches a worker: a cancel that
    # races a task's reply is another Ray check, not this one.
    result = _run_python(
        """
        import ray
        from daglite.backends.ray import _await_io_thread

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

        @ray.remote(max_retries=0)
        def boom():
            raise ValueError("boom")

        @ray.remote(max_retries=0, resources={"daglite_test_nowhere": 1})
        def echo(x):
            return x

        failed = boom.remote()
        ray.wait([failed])
        for _ in range(200):
            refs = [echo.remote(failed) for _ in range(10)]
            assert _await_io_thread(ray)
            for ref in refs:
                ray.cancel(ref, force=True)
        print("survived")
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "survived" in result.stdout


def test_gh18_a_task_whose_input_failed_is_left_to_fail_by_itself():
    # Ray fails such a task without running it; cancelling it races that
    # failure's reply, which Ray 2.60 can answer by aborting the process.
    def watched(*sources: Any) -> Any:
        outer = ray_backend._Watched(None, "key", lambda: [])  # type: ignore[arg-type]
        outer.sources = tuple(weakref.ref(s) for s in sources)
        return outer

    failed, cancelled, ok, running = (watched() for _ in range(4))
    failed.set_exception(ValueError("boom"))
    cancelled.stopped()
    ok.set_result([])
    assert ray_backend._an_input_failed(watched(ok, failed))
    assert ray_backend._an_input_failed(watched(running, cancelled))
    assert not ray_backend._an_input_failed(watched(ok, running))
    assert not ray_backend._an_input_failed(watched())
    gone = watched(watched())  # its source is gone: done long ago, outcome unknown
    gc.collect()
    assert not ray_backend._an_input_failed(gone)


def test_gh18_a_chain_whose_task_kills_its_worker_fails_naming_it(unfused):
    plugin = Order()
    with pytest.raises(WorkerLostError, match=r"task 'die_at' \(key 'die_at'\)"):
        evaluate(inc(die_at(inc(2), 3)), backend=unfused, plugins=[plugin])
    assert [type(e) for e in plugin.errors] == [WorkerLostError]
    assert ("after", "inc") in plugin.order and ("before", "inc-2") not in plugin.order
    assert evaluate(inc(inc(1)), backend=unfused) == 3  # the cluster recovers


def test_gh18_a_job_skips_a_call_whose_pending_input_failed():
    from daglite._job.records import Outcome, Outcomes, PendingResult

    class Call:
        def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
            self.name, self.kwargs = name, kwargs

        def _replace(self, kwargs: dict[str, Any]) -> Call:
            return Call(self.name, kwargs)

    class Job:
        calls = [
            Call("kept", {"x": PendingResult(1)}),  # in the kept values
            Call("home", {"x": [PendingResult(2)]}),  # among the outcomes, in a list
            Call("failed", {"x": PendingResult(3)}),
            Call("not run", {"x": PendingResult(4)}),
        ]

    outcomes = Outcomes(
        [Outcome(2, True, "two", 0.0, [], 0), Outcome(3, False, ValueError(), 0.0, [], 0)]
    )
    wiring = _ray_worker._Wiring(("a",), ("a",), {1: "a", 2: "a", 3: "a", 4: "a"})
    job = Job()
    _ray_worker._with_inputs(job, wiring, ({1: "one"}, outcomes))
    assert [(c.name, c.kwargs) for c in job.calls] == [
        ("kept", {"x": "one"}),
        ("home", {"x": ["two"]}),
    ]


# -- resources (gh-15) ---------------------------------------------------------------------


def test_resources_map_onto_ray_options():
    assert ray_backend._ray_resources({}) == {}
    assert ray_backend._ray_resources({"cpu": 2, "GPU": 0.5, "tpu": 1, "memory_gb": 4}) == {
        "num_cpus": 2,
        "num_gpus": 0.5,
        "resources": {"tpu": 1, "memory_gb": 4},
    }


def test_a_jobs_resources_go_to_ray_on_a_cluster_of_yours_only():
    class Job:
        resources = {"gpu": 1.0, "cpu": 4.0, "disk": 2.0}

    yours = RayBackend(address="10.0.0.1:6379")
    assert yours._task_options(Job()) == {
        "num_cpus": 4.0,
        "num_gpus": 1.0,
        "resources": {"disk": 2.0},
    }
    local = RayBackend()
    local.address, local._ours = None, True  # the instance daglite started declares none
    assert local._task_options(Job()) == {}
    Job.resources = None  # type: ignore[assignment]
    assert yours._task_options(Job()) == {}


def test_sizes_are_estimated_without_copying():
    sizeof = _ray_worker._sizeof
    assert sizeof(b"x" * 1000) == 1000
    assert sizeof(bytearray(BIG)) == BIG
    assert sizeof([b"x" * 1000] * 1000) >= 1_000_000
    assert sizeof({"a": bytes(BIG)}) >= BIG
    assert sizeof(3) < 100
