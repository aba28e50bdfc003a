"""The dask backend on an embedded two-worker cluster: hooks, events, failures, data locality."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

pytest.importorskip("distributed")

from tests.backends._cluster_tasks import (
    UNPICKLED,
    Blob,
    die,
    die_at,
    double,
    explode,
    flaky,
    inc,
    stuck,
    total,
    where,
)

from daglite import TaskError, TaskTimeoutError, WorkerLostError, evaluate, evaluate_async, task
from daglite.backends import dask as dask_backend
from daglite.backends import get_backend
from daglite.backends.dask import DaskBackend, RemoteResult
from daglite.exceptions import BackendError, EvaluationError
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

CALLER_PID = os.getpid()
BIG = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def cluster():
    """One embedded cluster (2 worker processes) for the module; none may outlive it."""
    backend = DaskBackend(max_workers=2)
    backend.ensure_started()
    yield backend
    pids = backend.worker_pids()
    backend.shutdown()
    _assert_exited(pids)


@pytest.fixture(scope="module")
def manager():
    """Events and queues shared with the Dask worker processes."""
    with multiprocessing.get_context("spawn").Manager() as m:
        yield m


def _assert_exited(pids: list[int], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return
        time.sleep(0.1)  # bounded poll for process exit, not synchronisation
    raise AssertionError(f"dask worker processes left behind: {alive}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- tasks (module level: the workers import this module) --------------------------------


@task
async def where_async(x: int) -> int:
    return os.getpid()


@task
def chatty(i: int, n: int, gate) -> bool:
    reporter = get_reporter()
    for j in range(n):
        reporter.report("seq", {"i": i, "j": j})
    # Blocks until the caller's handler has seen the first half: those events
    # must have travelled through Dask while this task still runs.
    seen = gate.wait(60)
    for j in range(n, 2 * n):
        reporter.report("seq", {"i": i, "j": j})
    return seen


@task(retries=1)
def die_once(marker: str) -> str:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return "survived"
    os._exit(1)


@task
def make_blob(n: int) -> Blob:
    return Blob(b"x" * n)


@task
def blob_size(blob: Blob) -> int:
    assert type(blob) is Blob
    return len(blob)


@task
def sizes(blobs: list[Blob]) -> list[int]:
    return [len(b) for b in blobs]


class Recorder:
    """Keeps what hooks and handlers saw, like a TimingPlugin."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.results: dict[str, object] = {}
        self.order: list[tuple[str, str]] = []
        self.retries: list[int] = []
        self.errors: list[BaseException] = []
        self.places: set[tuple[int, int]] = set()
        self.seq: dict[int, list[int]] = {}
        self.gates: list = []
        self.n = 0

    def register_event_handlers(self, registry) -> None:
        registry.on("seq", self.on_seq)

    def on_seq(self, event) -> None:
        assert event["key"] == f"chatty[{event['i']}]"
        self.seq.setdefault(event["i"], []).append(event["j"])
        if event["j"] == self.n - 1:
            self.gates[event["i"]].set()

    def _where(self) -> None:
        self.places.add((os.getpid(), threading.get_ident()))

    @hook_impl
    def before_node_execute(self, key) -> None:
        self._where()
        self.order.append(("before", key))

    @hook_impl
    def after_node_execute(self, key, result, duration) -> None:
        self._where()
        self.order.append(("after", key))
        self.timings[key] = duration
        self.results[key] = result

    @hook_impl
    def on_node_error(self, key, error) -> None:
        self.errors.append(error)

    @hook_impl
    def before_node_retry(self, attempt) -> None:
        self.retries.append(attempt)


# -- where tasks run, and where hooks run ------------------------------------------------


def test_tasks_run_in_dask_worker_processes(cluster):
    workers = set(cluster.worker_pids())
    pids = evaluate(where.product(x=[1, 2, 3, 4]), backend=cluster)
    async_pid = evaluate(where_async(1), backend=cluster)
    assert set(pids) | {async_pid} <= workers
    assert CALLER_PID not in workers


def test_embedded_cluster_listens_on_loopback_only(cluster):
    workers = [psutil.Process(p) for p in cluster.worker_pids()]
    listening = [
        c.laddr.ip for p in workers for c in p.net_connections("inet") if c.status == "LISTEN"
    ]
    # In the caller, only the scheduler's port is Dask's (a Ray driver may share the process).
    port = int(cluster.client.scheduler.address.rsplit(":", 1)[1])
    listening += [
        c.laddr.ip
        for c in psutil.Process().net_connections("inet")
        if c.status == "LISTEN" and c.laddr.port == port
    ]
    assert listening and set(listening) == {"127.0.0.1"}


def test_plugin_state_is_filled_in_the_caller(cluster):
    plugin = Recorder()
    assert evaluate(total(double.product(x=[1, 2, 3])), backend=cluster, plugins=[plugin]) == 12
    assert set(plugin.timings) == {"double[0]", "double[1]", "double[2]", "total"}
    assert all(d >= 0 for d in plugin.timings.values())
    assert plugin.results["double[2]"] == 6
    assert plugin.places == {(CALLER_PID, threading.get_ident())}
    for key in plugin.timings:  # before precedes after, and inputs finish first
        assert plugin.order.index(("before", key)) < plugin.order.index(("after", key))
        if key != "total":
            assert plugin.order.index(("after", key)) < plugin.order.index(("before", "total"))


def test_events_arrive_exactly_once_in_order_per_task(cluster, manager):
    plugin = Recorder()
    plugin.n = 150
    plugin.gates = [manager.Event() for _ in range(3)]
    future = chatty.zip(i=[0, 1, 2], gate=plugin.gates, n=plugin.n)
    assert evaluate(future, backend=cluster, plugins=[plugin]) == [True, True, True]
    assert plugin.seq == {i: list(range(2 * plugin.n)) for i in range(3)}


def test_unpicklable_event_is_dropped_with_a_warning(cluster, caplog):
    @task
    def odd() -> int:
        get_reporter().report("odd", {"f": lambda: 1})
        get_reporter().report("fine", {"x": 1})
        return 1

    seen = []

    class Plugin:
        def register_event_handlers(self, registry):
            registry.on("fine", seen.append)
            registry.on("odd", seen.append)

    assert evaluate(odd(), backend=cluster, plugins=[Plugin()]) == 1
    assert [e["type"] for e in seen] == ["fine"]
    assert "'odd'" in caplog.text


# -- failures ----------------------------------------------------------------------------


def test_task_error_names_the_task_and_keeps_the_cause(cluster):
    plugin = Recorder()
    with pytest.raises(TaskError, match=r"task 'explode' \(key 'explode'\)") as info:
        evaluate(explode(7), backend=cluster, plugins=[plugin])
    err = info.value
    assert (err.task_name, err.key) == ("explode", "explode")
    assert isinstance(err.error, ValueError) and str(err.error) == "boom 7"
    assert err.__cause__ is err.error
    remote = str(err.error.__cause__)  # the traceback as the worker saw it
    assert "in explode" in remote and "ValueError: boom 7" in remote
    assert [type(e) for e in plugin.errors] == [ValueError]


def test_retries_rerun_a_failing_task(cluster, tmp_path):
    plugin = Recorder()
    future = flaky.with_options(retries=2)(str(tmp_path))
    assert evaluate(future, backend=cluster, plugins=[plugin]) == 2
    assert plugin.retries == [2, 3]


def test_retries_exhausted_raise_task_error(cluster, tmp_path):
    with pytest.raises(TaskError, match="attempt 1 fails"):
        evaluate(flaky.with_options(retries=1)(str(tmp_path)), backend=cluster)


def test_timeout_raises_task_timeout_error(cluster, manager):
    gate = manager.Event()
    try:
        with pytest.raises(TaskTimeoutError, match="'stuck'") as info:
            evaluate(stuck(gate), backend=cluster)
        assert isinstance(info.value.error, TimeoutError)
    finally:
        gate.set()  # the abandoned worker thread returns
    assert evaluate(double(4), backend=cluster) == 8


def test_worker_death_raises_worker_lost_error(cluster):
    plugin = Recorder()
    with pytest.raises(WorkerLostError, match=r"task 'die' \(key 'die'\) lost its worker") as info:
        evaluate(die(), backend=cluster, plugins=[plugin])
    assert info.value.task_name == "die"
    assert [type(e) for e in plugin.errors] == [WorkerLostError]
    assert evaluate(total(double.product(x=[1, 2])), backend=cluster) == 6  # cluster recovers


def test_worker_death_in_a_batched_job_blames_only_the_dying_call(cluster):
    # The calls travel to Dask together; when their job loses its worker, each
    # is rerun alone, so only the call that kills its worker again fails.
    plugin = Recorder()
    dag = die_at.product(i=list(range(6)), fatal=[3])
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=cluster, plugins=[plugin], on_error="continue")
    assert list(info.value.errors) == ["die_at[3]"]
    assert isinstance(info.value.errors["die_at[3]"], WorkerLostError)
    assert sorted(info.value.results) == [f"die_at[{i}]" for i in (0, 1, 2, 4, 5)]
    assert [type(e) for e in plugin.errors] == [WorkerLostError]


def test_worker_death_is_retried(cluster, tmp_path):
    plugin = Recorder()
    result = evaluate(die_once(str(tmp_path / "died")), backend=cluster, plugins=[plugin])
    assert result == "survived"
    # Dask cannot tell whether the task killed its worker or was only queued there,
    # so the first death is not charged to it: it is rerun alone, not retried.
    assert plugin.retries == []


@task
def gated(gate, directory: str, i: int) -> int:
    open(os.path.join(directory, str(i)), "w").close()
    gate.wait(60)
    return i


def test_failure_cancels_tasks_still_queued_on_the_cluster(cluster, manager, tmp_path):
    # explode runs first; gated tasks block both workers until the gate opens, so
    # most of them are still queued on the scheduler when the run fails.
    gate = manager.Event()
    blockers = gated.product(gate=[gate], directory=[str(tmp_path)], i=list(range(20)))
    try:
        with pytest.raises(TaskError, match="boom 1"):
            evaluate([explode(1), blockers], backend=cluster)
    finally:
        gate.set()
    assert evaluate(double(5), backend=cluster) == 10
    assert len(os.listdir(tmp_path)) < 20  # the queued ones never ran


# -- gh-12: nothing keeps running after evaluate raises ------------------------------------


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
def explode_while_running(running, pids) -> int:
    pids.put(os.getpid())
    if not running.wait(60):
        raise TimeoutError("spin never started")
    raise ValueError("boom while spin runs")


def _spin_and_explode(manager):
    """A DAG whose failure abandons a running sibling, the pids of the two
    workers (spin's first), and the event that ends spin's loop."""
    running, stop = manager.Event(), manager.Event()
    spin_pid, explode_pid = manager.Queue(), manager.Queue()
    dag = [spin(running, spin_pid, stop), explode_while_running(running, explode_pid)]
    return dag, (spin_pid, explode_pid), stop


def _daglite_keys_of(prefixes: tuple[str, ...], dask_scheduler) -> list[str]:
    # list() copies the keys in one step: the scheduler's loop thread may be adding some.
    return [k for k in list(dask_scheduler.tasks) if str(k).startswith(prefixes)]


def test_gh12_failure_stops_a_sibling_running_on_the_embedded_cluster(cluster, manager):
    cluster.client.wait_for_workers(2, timeout=60)  # one worker each for the two tasks
    dag, (spin_pid, explode_pid), stop = _spin_and_explode(manager)
    try:
        with pytest.raises(TaskError, match="boom while spin runs"):
            evaluate(dag, backend=cluster)
        spinning, failed = spin_pid.get(timeout=60), explode_pid.get(timeout=60)
        # Before evaluate raised, spin's worker process was killed (its nanny
        # started a fresh one); the worker that ran only the failed task was kept.
        assert not _alive(spinning)
        assert _alive(failed) and failed in cluster.worker_pids()
        assert len(cluster.worker_pids()) == 2
    finally:
        stop.set()  # on failure, lets the abandoned loop end
    assert evaluate(total(double.product(x=[1, 2, 3])), backend=cluster) == 12


def test_gh12_cancelled_evaluate_async_stops_its_task_on_the_worker(cluster, manager):
    running, stop, pids = manager.Event(), manager.Event(), manager.Queue()

    async def cancel_once_running() -> int:
        run = asyncio.ensure_future(evaluate_async(spin(running, pids, stop), backend=cluster))
        pid = await asyncio.get_running_loop().run_in_executor(None, pids.get, True, 60)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        return pid

    try:
        assert not _alive(asyncio.run(cancel_once_running()))
    finally:
        stop.set()
    assert evaluate(double(21), backend=cluster) == 42


def test_gh12_ctrl_c_stops_the_running_task_before_evaluate_raises(cluster, manager):
    if threading.current_thread() is not threading.main_thread():
        pytest.fail("this test sends SIGINT, which only the main thread receives")
    running, stop, pids = manager.Event(), manager.Event(), manager.Queue()
    spinning: list[int] = []

    def press_ctrl_c_once_running() -> None:
        spinning.append(pids.get(timeout=60))
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # As in a terminal: the test runner may run us with SIGINT ignored.
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


def test_gh12_failure_on_a_cluster_given_by_address_cancels_without_restarting(cluster, manager):
    cluster.client.wait_for_workers(2, timeout=60)
    dag, (spin_pid, _), stop = _spin_and_explode(manager)
    backend = DaskBackend(address=cluster.client.scheduler.address)
    try:
        with backend:
            with pytest.raises(TaskError, match="boom while spin runs"):
                evaluate(dag, backend=backend)
            # The scheduler forgot the abandoned task before evaluate raised (the
            # failed one goes when its future is garbage-collected, as any Dask
            # result). Read in place: the embedded scheduler lives in this process,
            # and a round trip could let a late cancel land first.
            scheduler = cluster._cluster.scheduler
            assert _daglite_keys_of(("spin-",), scheduler) == []
            # ... and spin's worker was not restarted: it is not daglite's to restart.
            spinning = spin_pid.get(timeout=60)
            assert _alive(spinning) and spinning in cluster.worker_pids()
    finally:
        stop.set()
    assert evaluate(double(4), backend=cluster) == 8


def test_gh12_a_job_abandoned_before_it_starts_never_runs():
    # The caller's check leaves a tombstone; the job finds it and runs nothing
    # (the payload is not even unpickled).
    assert dask_backend._abandon_on_worker(["late-job"]) == []
    assert dask_backend._run_job("late-job", b"not a pickle", 0, b"") == []
    assert "late-job" not in dask_backend._abandoned_jobs


@task
def nested(x: int, inner_backend: str) -> int:
    return evaluate(double(x), backend=inner_backend)


def test_nested_evaluate_inside_a_dask_task(cluster):
    assert evaluate(
        nested.product(x=[1, 2], inner_backend=["inline", "threads"]), backend=cluster
    ) == [
        2,
        2,
        4,
        4,
    ]


# -- data locality -----------------------------------------------------------------------


def test_big_intermediate_results_stay_on_the_cluster(cluster):
    plugin = Recorder()
    UNPICKLED.clear()
    assert evaluate(blob_size(make_blob(BIG)), backend=cluster, plugins=[plugin]) == BIG
    assert UNPICKLED == []  # the 50 MB payload never reached this process
    stand_in = plugin.results["make_blob"]
    assert isinstance(stand_in, RemoteResult)
    assert stand_in.nbytes >= BIG and stand_in.type_name.endswith(".Blob")
    # Positive control: fetching it for real is seen by the counter.
    assert stand_in.result() == b"x" * BIG
    assert UNPICKLED == [BIG]


@task
def slow_blob(i: int) -> Blob:
    time.sleep(0.1)  # the job runs long, so its finished calls go home early
    return Blob(b"x" * (3 << 19))  # over the 1 MiB remote threshold


def test_big_results_of_a_long_job_stay_on_the_cluster(cluster):
    plugin = Recorder()
    UNPICKLED.clear()
    # Twelve calls: three per job, so finished ones wait while the next one runs.
    dag = slow_blob.product(i=list(range(12))).join(sizes)
    assert evaluate(dag, backend=cluster, plugins=[plugin]) == [3 << 19] * 12
    assert UNPICKLED == []  # none of them came through the caller
    big = {k: v for k, v in plugin.results.items() if k.startswith("slow_blob")}
    assert len(big) == 12 and all(isinstance(v, RemoteResult) for v in big.values())


def test_final_big_results_are_materialized(cluster):
    UNPICKLED.clear()
    blobs = evaluate(make_blob.product(n=[2 << 20, 3 << 20]), backend=cluster)
    assert [type(b) for b in blobs] == [Blob, Blob]
    assert [len(b) for b in blobs] == [2 << 20, 3 << 20]
    assert sorted(UNPICKLED) == [2 << 20, 3 << 20]


def test_stand_ins_in_lists_reach_downstream_tasks(cluster):
    UNPICKLED.clear()
    future = make_blob.product(n=[2 << 20, 10, 3 << 20]).join(sizes)
    assert evaluate(future, backend=cluster) == [2 << 20, 10, 3 << 20]
    assert UNPICKLED == []  # gh-17: not even the small one: only the join's result is needed


def test_big_inputs_from_the_caller_reach_the_task(cluster):
    payload = Blob(b"y" * (12 << 20))  # over Dask's large-graph warning threshold
    assert evaluate(blob_size(payload), backend=cluster) == 12 << 20


def test_small_results_reach_hooks_as_values(cluster):
    plugin = Recorder()
    evaluate(make_blob(1000), backend=cluster, plugins=[plugin])
    assert plugin.results["make_blob"] == b"x" * 1000


def test_remote_result_copy_is_detached():
    copy = pickle.loads(pickle.dumps(RemoteResult("k-1", 3, 10, "builtins.bytes")))
    assert (copy.key, copy.token, copy.nbytes, copy.type_name) == ("k-1", 3, 10, "builtins.bytes")
    with pytest.raises(BackendError, match="not attached"):
        copy.result()


# -- gh-17: the graph runs on the cluster, data stays there ---------------------------------


def _bytes_sent_to_clients(client) -> int:
    """Bytes the workers sent to anything but another worker (a client's gather)."""

    def sent(dask_worker) -> int:
        return sum(t["total"] for t in dask_worker.transfer_outgoing_log if t["who"] is None)

    return sum(client.run(sent).values())


@task
def sized(n: int) -> bytes:
    return b"x" * n


@task
def length(data: bytes) -> int:
    return len(data)


def _one_consumer(nbytes: int):
    return length(sized(nbytes)), nbytes  # fused: one Dask task


def _two_consumers(nbytes: int):
    data = sized(nbytes)  # its own Dask task; the consumers take its future
    return total([length(data), length(data)]), 2 * nbytes


@pytest.mark.parametrize("shape", [_one_consumer, _two_consumers], ids=["chain", "fork"])
@pytest.mark.parametrize("nbytes", [100 << 20, 200 << 10], ids=["100MB", "200kB"])
def test_gh17_an_intermediate_never_reaches_the_caller(cluster, nbytes, shape):
    # Big or small: the caller needs only the root's result. (The small one
    # is under remote_threshold, so it used to come home with its outcome.)
    cluster.client.wait_for_workers(2, timeout=60)
    dag, expected = shape(nbytes)
    before = _bytes_sent_to_clients(cluster.client)
    assert evaluate(dag, backend=cluster) == expected
    assert _bytes_sent_to_clients(cluster.client) - before < 64 << 10
    # Positive control: the same bytes as a result do reach the caller.
    before = _bytes_sent_to_clients(cluster.client)
    assert len(evaluate(sized(nbytes), backend=cluster)) == nbytes
    assert _bytes_sent_to_clients(cluster.client) - before >= nbytes


def test_gh17_a_job_whose_summary_is_lost_on_the_way_is_asked_for_it(cluster, monkeypatch):
    # A job keeping its results sends their summary home on the event
    # channel, which Dask drops while a worker is not connected to the
    # scheduler: the caller must then ask for it, not wait forever.
    lost: list[str] = []
    arrived = DaskBackend._announced

    def summaries_lost(self, outer, summary=None, finished=False):
        if summary is not None:
            lost.append(outer.job_key)
            return False
        return arrived(self, outer, finished=finished)

    monkeypatch.setattr(DaskBackend, "_announced", summaries_lost)
    dag, expected = _two_consumers(200 << 10)
    assert evaluate(dag, backend=cluster) == expected
    assert lost  # the producing job announced its summary, and it was dropped


def test_gh17_a_chain_whose_task_kills_its_worker_fails_naming_it():
    # A cluster of its own: while the killed worker is replaced, a job can land on
    # it and fail, and that must not spill into the module's other tests.
    with DaskBackend(max_workers=2) as backend:
        before = set(backend.client.scheduler_info()["workers"])
        plugin = Recorder()
        with pytest.raises(WorkerLostError, match=r"task 'die_at' \(key 'die_at'\)"):
            evaluate(inc(die_at(inc(2), 3)), backend=backend, plugins=[plugin])
        assert [type(e) for e in plugin.errors] == [WorkerLostError]
        assert ("after", "inc") in plugin.order and ("before", "inc-2") not in plugin.order
        deadline = time.monotonic() + 60
        while True:  # bounded poll: the dead worker is gone and replaced
            workers = set(backend.client.scheduler_info()["workers"])
            if len(workers) == 2 and workers != before:
                break
            assert time.monotonic() < deadline, workers
            time.sleep(0.1)
        assert evaluate(inc(inc(1)), backend=backend) == 3  # the cluster recovers


# -- connecting to a cluster -------------------------------------------------------------


def test_address_from_environment_connects_without_owning_the_cluster(cluster, monkeypatch):
    address = cluster.client.scheduler.address
    monkeypatch.setenv("DAGLITE_DASK_ADDRESS", address)
    backend = DaskBackend()
    assert backend.address == address
    with backend:
        assert evaluate(double(21), backend=backend) == 42
        assert backend.max_workers in (1, 2)  # a worker may be restarting
    assert cluster.client.status == "running"
    assert evaluate(double(2), backend=cluster) == 4


def test_existing_client_is_used_and_left_open(cluster):
    backend = DaskBackend(client=cluster.client)
    with backend:
        assert evaluate(total(double.product(x=[1, 2])), backend=backend) == 6
        assert backend.client is cluster.client
    assert cluster.client.status == "running"


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="max_workers must be greater than 0, got 0"):
        DaskBackend(max_workers=0)
    with pytest.raises(ValueError, match="not both"):
        DaskBackend(address="tcp://127.0.0.1:1", client=object())


def test_registry_name_gives_a_shared_dask_backend():
    backend = get_backend("dask")
    assert isinstance(backend, DaskBackend)
    assert get_backend("dask") is backend
    assert backend.max_batch > 1  # ready calls travel in jobs, as on processes


# -- optional dependency -----------------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_missing_distributed_raises_backend_error_with_install_hint():
    proc = _run_python(
        """
        import sys
        sys.modules["distributed"] = None
        from daglite import evaluate, task
        from daglite.exceptions import BackendError

        @task
        def one() -> int:
            return 1

        try:
            evaluate(one(), backend="dask")
        except BackendError as exc:
            print(str(exc))
            print(exc.__cause__ is None, exc.__suppress_context__)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "the 'dask' backend needs the 'distributed' package; install it with "
        "`pip install daglite[dask]`",
        "True True",
    ]


def test_importing_daglite_does_not_import_distributed():
    proc = _run_python(
        """
        import sys
        import daglite, daglite.backends, daglite.engine
        print("distributed" in sys.modules, "dask" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
