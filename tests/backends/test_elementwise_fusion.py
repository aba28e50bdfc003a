"""Element-wise fusion (gh-14): each element of a map runs in the job of the one it maps.

``load.product(...).map(etl)``: element ``e`` of ``etl`` runs right after
element ``e`` of ``load``, on the same worker, and the shard never travels
home between the steps. Fusion must be invisible otherwise: the same results,
hook order and inputs, retries, failures and worker deaths as without it.
"""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest
from tests.backends._counting import CountingProcesses

from daglite import EvaluationError, TaskError, evaluate, task
from daglite.backends import ProcessBackend, ThreadBackend
from daglite.plugins.hooks import hook_impl


class Shard:
    """A value that cannot be pickled: it can only work if it never leaves its worker."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()


@task
def load(i: int) -> Shard:
    return Shard(i)


@task
def etl(shard: Shard, scale: int = 10) -> int:
    return shard.n * scale


@task
def inc(x: int) -> int:
    return x + 1


@task
def twice(x: int) -> int:
    return 2 * x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def test_a_shard_never_leaves_the_worker_between_the_steps(process_backend):
    # Unfused, the shards would come home: they cannot be pickled.
    dag = load.product(i=range(6)).map(etl, scale=3).join(total)
    assert evaluate(dag, backend=process_backend) == 3 * sum(range(6))


def test_a_map_of_a_map_runs_element_by_element_in_one_chain(concurrent_backend):
    dag = load.product(i=range(5)).map(etl).map(inc).map(twice)
    assert evaluate(dag, backend=concurrent_backend) == [2 * (10 * i + 1) for i in range(5)]


class Watch:
    """Watches each node start, so a wide fan-out goes element by element, not in slices."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.expanded: list[tuple[str, int]] = []

    @hook_impl
    def before_node_execute(self, key, inputs):
        self.calls.append(("before", key, dict(inputs)))

    @hook_impl
    def after_node_execute(self, key, result):
        self.calls.append(("after", key, result))

    @hook_impl
    def on_graph_expand(self, key, added):
        self.expanded.append((key, added))


def test_the_chains_of_a_wide_map_are_packed_into_a_few_jobs():
    # 40 chains of two calls on two workers: about two jobs per worker.
    with CountingProcesses() as pool:
        dag = inc.product(x=range(40)).map(twice)
        assert evaluate(dag, backend=pool, plugins=[Watch()]) == [2 * (x + 1) for x in range(40)]
    assert pool.jobs == [20, 20, 20, 20]


def test_a_wide_map_goes_in_slices_each_behind_the_slice_it_maps():
    # Nobody watches single elements: 40 elements travel in 8 slices of 5, and
    # each slice of ``twice`` runs in the job of the slice of ``inc`` it maps.
    with CountingProcesses() as pool:
        dag = inc.product(x=range(40)).map(twice)
        assert evaluate(dag, backend=pool) == [2 * (x + 1) for x in range(40)]
    assert pool.jobs == [2] * 8


class Durations:
    """Watches each element end, with its run time (the bulk path stays on)."""

    def __init__(self) -> None:
        self.durations: dict[str, float] = {}

    @hook_impl
    def after_node_execute(self, key, duration):
        self.durations[key] = duration


def test_shards_of_a_wide_map_never_leave_their_slices_worker(process_backend):
    # On the bulk path too (processes; Dask and Ray send elements one by one).
    plugin = Durations()
    dag = load.product(i=range(40)).map(etl).join(total)
    assert evaluate(dag, backend=process_backend, plugins=[plugin]) == 10 * sum(range(40))
    keys = {f"{name}[{e}]" for name in ("load", "etl") for e in range(40)} | {"total"}
    assert set(plugin.durations) == keys
    assert all(d >= 0.0 for d in plugin.durations.values())


def test_hooks_see_each_element_after_the_one_it_maps(concurrent_backend):
    plugin = Watch()
    dag = inc.product(x=range(4)).map(twice)
    assert evaluate(dag, backend=concurrent_backend, plugins=[plugin]) == [2, 4, 6, 8]
    order = {(kind, key): n for n, (kind, key, _) in enumerate(plugin.calls)}
    for e in range(4):
        head, follower = f"inc[{e}]", f"twice[{e}]"
        assert order[("before", head)] < order[("after", head)] < order[("before", follower)]
        assert order[("before", follower)] < order[("after", follower)]
    inputs = {key: value for kind, key, value in plugin.calls if kind == "before"}
    assert [inputs[f"twice[{e}]"] for e in range(4)] == [{"x": e + 1} for e in range(4)]
    assert plugin.expanded == [("twice", 4)]


def _fails_once(marker: str) -> bool:
    """True the first time it is asked about ``marker`` (a file), False after."""
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False


def test_a_mapped_element_retried_runs_its_follower_once_after_it(concurrent_backend, tmp_path):
    @task(retries=1)
    def flaky_load(i: int, where: str) -> int:
        if i == 2 and _fails_once(os.path.join(where, "load")):
            raise RuntimeError("first attempt fails")
        return i

    @task
    def logged(x: int, where: str) -> int:
        with open(os.path.join(where, f"ran-{x}"), "a") as f:
            f.write("x")
        return 10 * x

    where = str(tmp_path)
    dag = flaky_load.product(i=range(5), where=where).map(logged, where=where)
    assert evaluate(dag, backend=concurrent_backend) == [0, 10, 20, 30, 40]
    assert [(tmp_path / f"ran-{x}").read_text() for x in range(5)] == ["x"] * 5


@pytest.mark.parametrize("width", [5, 40], ids=["per-element", "slices"])
def test_a_failed_element_of_a_slice_is_retried_and_its_map_runs_after_it(tmp_path, width):
    @task(retries=1)
    def flaky_inc(x: int, where: str) -> int:
        if x == 3 and _fails_once(os.path.join(where, "inc")):
            raise RuntimeError("first attempt fails")
        return x + 1

    @task(retries=1)
    def flaky_twice(x: int, where: str) -> int:
        if x == 2 and _fails_once(os.path.join(where, "twice")):
            raise RuntimeError("first attempt fails")
        return 2 * x

    where = str(tmp_path)
    dag = flaky_inc.product(x=range(width), where=where).map(flaky_twice, where=where).map(inc)
    with ProcessBackend(max_workers=2) as pool:
        assert evaluate(dag, backend=pool) == [2 * (x + 1) + 1 for x in range(width)]
    assert (tmp_path / "inc").exists() and (tmp_path / "twice").exists()


def test_a_follower_retried_in_the_middle_of_a_map_chain(concurrent_backend, tmp_path):
    @task(retries=2)
    def flaky_inc(x: int, where: str) -> int:
        if x == 3 and _fails_once(os.path.join(where, "inc")):
            raise RuntimeError("first attempt fails")
        return x + 1

    dag = inc.product(x=range(5)).map(flaky_inc, where=str(tmp_path)).map(twice)
    assert evaluate(dag, backend=concurrent_backend) == [2 * (x + 2) for x in range(5)]


def test_a_failed_element_names_its_key_and_the_map_does_not_run_after_it(backend):
    @task
    def bad_at_two(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    dag = inc.product(x=range(4)).map(bad_at_two).map(twice)
    with pytest.raises(TaskError, match=r"key 'bad_at_two\[1\]'"):
        evaluate(dag, backend=backend)
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=backend, on_error="continue")
    assert list(info.value.errors) == ["bad_at_two[1]"]
    assert info.value.skipped == ["twice"]


def test_a_worker_death_in_a_fused_element(tmp_path):
    @task(retries=1)
    def dies_once(i: int, where: str) -> int:
        if i == 1 and _fails_once(os.path.join(where, "die")):
            os._exit(1)
        return i

    with ProcessBackend(max_workers=2) as pool:
        dag = dies_once.product(i=range(6), where=str(tmp_path)).map(inc).map(twice)
        assert evaluate(dag, backend=pool) == [2 * (i + 1) for i in range(6)]


_ALIVE: list[weakref.ref[Shard]] = []


@task
def tracked_load(i: int) -> Shard:
    shard = Shard(i)
    _ALIVE.append(weakref.ref(shard))
    return shard


@task
def others_alive(shard: Shard) -> int:
    """How many shards other than this one are alive."""
    gc.collect()
    return sum(ref() is not None for ref in _ALIVE) - 1


def test_a_shard_is_dropped_once_its_follower_is_done():
    # One thread runs the chains one after another: each finished chain's
    # shard is gone before the next chain loads its own (unfused, every shard
    # is loaded before the second step starts). Four elements: more would
    # travel in slices of several, unfused.
    _ALIVE.clear()
    with ThreadBackend(max_workers=1) as pool:
        dag = tracked_load.product(i=range(4)).map(others_alive)
        assert evaluate(dag, backend=pool) == [0] * 4
