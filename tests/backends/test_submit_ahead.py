"""The submit-ahead contract (gh-17, gh-18), on Dask and on Ray alike.

A backend with ``accepts_pending_inputs`` gets each job as soon as the jobs
of its inputs were submitted, and chains them on the cluster: hooks, events,
failures, retries and timeouts must behave as on any other backend. Ray runs
one call per Ray task here (``max_batch = 1``), so that every hop of a chain
is a pending input; Dask runs as configured by default (chains fused, forks
pending). What only one cluster has (Dask's transfer log, Ray's object
store, how each replaces a dead worker) is tested in ``test_dask`` and
``test_ray``.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest
from tests.backends._cluster_tasks import Order, double, explode, flaky, inc, stuck, total

from daglite import TaskError, TaskTimeoutError, evaluate, task
from daglite.backends.base import Backend
from daglite.exceptions import EvaluationError
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

HAS_DASK = importlib.util.find_spec("distributed") is not None
HAS_RAY = importlib.util.find_spec("ray") is not None
CLUSTERS = ["dask"] * HAS_DASK + ["ray"] * HAS_RAY
WITH_RAY_FUSED = [*CLUSTERS, "ray-fused"] if HAS_RAY else CLUSTERS


@pytest.fixture(scope="module")
def _dask() -> Iterator[Backend]:
    from daglite.backends.dask import DaskBackend

    backend = DaskBackend(max_workers=2)
    backend.ensure_started()
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def _ray(ray_address: str) -> Iterator[Backend]:
    from daglite.backends.ray import RayBackend

    class OneCallPerTask(RayBackend):
        max_batch = 1

    backend = OneCallPerTask(address=ray_address)
    backend.ensure_started()
    yield backend
    backend.shutdown()


@pytest.fixture(scope="module")
def _ray_fused(ray_address: str) -> Iterator[Backend]:
    from daglite.backends.ray import RayBackend

    backend = RayBackend(address=ray_address)
    backend.ensure_started()
    yield backend
    backend.shutdown()


@pytest.fixture(params=CLUSTERS)
def cluster(request: pytest.FixtureRequest) -> Backend:
    """A backend that takes pending inputs, on a cluster of worker processes."""
    found: Backend = request.getfixturevalue(f"_{request.param.replace('-', '_')}")
    return found


@pytest.fixture(scope="module")
def manager():
    """Events and queues shared with the worker processes."""
    with multiprocessing.get_context("spawn").Manager() as m:
        yield m


def _settled(backend: Backend) -> None:
    """After a failed run, wait until Dask's workers answer again (no-op on Ray)."""
    client = getattr(backend, "client", None)
    if client is not None:
        client.run(lambda: None)


# -- tasks (module level: the workers import this module) --------------------------------


@task
def length(data: bytes) -> int:
    return len(data)


@task
def sized(n: int) -> bytes:
    return b"x" * n


@task
def gated(gate, started, directory: str, i: int) -> int:
    open(os.path.join(directory, str(i)), "w").close()
    started.set()
    gate.wait(60)
    return i


@task
def explode_once_gated(started) -> int:
    assert started.wait(60)  # bounded: ``gated`` runs
    raise ValueError("boom 1")


@task
def marks(directory: str, i: int) -> int:
    open(os.path.join(directory, str(i)), "w").close()
    return i


@task
def tail_of_chain(x: int, ran) -> int:
    ran.set()
    return x


@task
def tick(x: int) -> int:
    get_reporter().report("tick", {"x": x})
    logging.getLogger("submit_ahead.tick").warning("tick %d", x)
    return x + 1


# -- the contract ----------------------------------------------------------------------


class HoldsTheCaller:
    """Blocks the engine thread in the head's after hook until the chain's tail ran."""

    def __init__(self, tail_ran) -> None:
        self.tail_ran = tail_ran
        self.tail_ran_while_held: bool | None = None

    @hook_impl
    def after_node_execute(self, key) -> None:
        if key == "inc":
            self.tail_ran_while_held = self.tail_ran.wait(60)


@pytest.mark.parametrize("cluster", WITH_RAY_FUSED, indirect=True)
def test_a_chain_runs_on_the_cluster_while_the_caller_is_busy(cluster, manager):
    # The caller stays in a hook of the chain's first task until its last one
    # has run: only a chain handed to the cluster ahead (or fused) can.
    tail_ran = manager.Event()
    dag = inc(0)
    for _ in range(6):
        dag = inc(dag)
    plugin = HoldsTheCaller(tail_ran)
    assert evaluate(tail_of_chain(dag, tail_ran), backend=cluster, plugins=[plugin]) == 7
    assert plugin.tail_ran_while_held is True


def test_hooks_keep_their_order_and_see_real_inputs_on_a_chained_dag(cluster):
    plugin = Order()
    a = double(1)
    dag = total([inc(a), inc(double(a)), a])
    assert evaluate(dag, backend=cluster, plugins=[plugin]) == 3 + 5 + 2
    edges = [
        ("double", "inc"),
        ("double", "double-2"),
        ("double-2", "inc-2"),
        ("inc", "total"),
        ("inc-2", "total"),
        ("double", "total"),
    ]
    for u, v in edges:
        assert plugin.order.index(("after", u)) < plugin.order.index(("before", v))
    for key in plugin.results:
        assert plugin.order.index(("before", key)) < plugin.order.index(("after", key))
    assert plugin.inputs["total"] == {"xs": [3, 5, 2]}
    assert plugin.inputs["inc-2"] == {"x": 4}
    assert plugin.results["total"] == 10
    assert plugin.places == {(os.getpid(), threading.get_ident())}


def test_intermediates_a_plugin_asks_for_come_home(cluster):
    plugin = Order()  # after_node_execute declares ``result``
    assert evaluate(length(sized(1000)), backend=cluster, plugins=[plugin]) == 1000
    assert plugin.results["sized"] == b"x" * 1000


def test_fail_fast_cancels_the_graph_handed_to_the_cluster(cluster, manager, tmp_path):
    # The chain after the gate is on the cluster, waiting for its input, when
    # a sibling fails (once the gated call runs): none of it may run.
    gate, started = manager.Event(), manager.Event()
    chain = gated(gate, started, str(tmp_path), 0)
    for i in range(1, 6):
        chain = marks.partial(directory=str(tmp_path))(i=inc(chain))
    try:
        with pytest.raises(TaskError, match="boom 1"):
            evaluate([explode_once_gated(started), chain], backend=cluster)
    finally:
        gate.set()
    _settled(cluster)
    assert evaluate(double(5), backend=cluster) == 10
    assert sorted(os.listdir(tmp_path)) == ["0"]  # the gated call ran, nothing after it


def test_a_retried_input_reruns_only_what_depends_on_it(cluster, tmp_path):
    plugin = Order()
    first = flaky.with_options(retries=2)(str(tmp_path))
    assert evaluate(double(inc(first)), backend=cluster, plugins=[plugin]) == 6
    assert plugin.order.count(("before", "flaky")) == 3  # one per attempt
    assert plugin.order.count(("before", "inc")) == 1


def test_on_error_continue_skips_what_went_to_the_cluster_after_a_failure(cluster):
    dag = [inc(inc(explode(1))), inc(double(2))]
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=cluster, on_error="continue")
    assert list(info.value.errors) == ["explode"]
    assert sorted(info.value.skipped) == ["inc", "inc-2"]
    assert info.value.results["inc-3"] == 5
    assert info.value.results["double"] == 4  # values, not stand-ins


def test_events_and_log_records_of_a_chained_dag_arrive_before_evaluate_returns(cluster, caplog):
    seen: list[int] = []

    class Ticks:
        def register_event_handlers(self, registry):
            registry.on("tick", lambda e: seen.append(e["x"]))

    dag = tick(0)
    for _ in range(5):
        dag = tick(dag)
    fork = tick(dag)
    with caplog.at_level(logging.WARNING, logger="submit_ahead.tick"):
        assert evaluate([tick(fork), tick(fork)], backend=cluster, plugins=[Ticks()]) == [8, 8]
        assert seen[:7] == list(range(7)) and sorted(seen[7:]) == [7, 7]
        ticks = [r.getMessage() for r in caplog.records if r.name == "submit_ahead.tick"]
    assert ticks[:7] == [f"tick {i}" for i in range(7)] and len(ticks) == 9


def test_a_timed_out_task_skips_what_went_to_the_cluster_after_it(cluster, manager):
    gate = manager.Event()
    plugin = Order()
    try:
        with pytest.raises(TaskTimeoutError, match="'stuck'"):
            evaluate(inc(inc(stuck(gate))), backend=cluster, plugins=[plugin])
    finally:
        gate.set()
    assert not any(key.startswith("inc") for _, key in plugin.order)


def test_a_dag_mixing_processes_and_the_cluster(cluster):
    local = double.with_options(backend="processes")
    dag = inc(local(inc(local(inc(1)))))
    plugin = Order()
    assert evaluate(dag, backend=cluster, plugins=[plugin]) == 11
    assert plugin.results["double"] == 4
