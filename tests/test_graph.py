"""The graph builder: dedupe, topological order, keys, metadata, cycles (pure data)."""

from __future__ import annotations

import pytest

from daglite import GraphError, task
from daglite.graph import Graph, GraphMetadata, build_graph
from daglite.graph.builder import iter_futures


@task
def inc(x: int) -> int:
    """Add one."""
    return x + 1


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def _build(*roots) -> Graph:
    return build_graph(list(roots), lambda t: "inline")


def _position(graph: Graph, future) -> int:
    return graph.node_of(future)


def test_single_future_is_one_node_keyed_by_task_name():
    graph = _build(inc(1))
    assert len(graph) == 1
    assert graph.keys == ["inc"]
    assert graph.deps == [()]
    assert graph.roots == [0]
    assert graph.node_count == 1


def test_dependencies_come_before_dependents():
    a = inc(1)
    b = inc(a)
    c = add(a, b)
    graph = _build(c)
    order = [_position(graph, f) for f in (a, b, c)]
    assert order == sorted(order)
    assert set(graph.deps[_position(graph, c)]) == {_position(graph, a), _position(graph, b)}


def test_a_future_used_twice_is_one_node():
    a = inc(1)
    graph = _build(add(a, a))
    assert len(graph) == 2
    assert graph.deps[graph.node_of(graph.futures[-1])] == (graph.node_of(a),)


def test_repeated_task_names_get_numbered_keys():
    graph = _build(add(inc(1), inc(2)))
    assert sorted(graph.keys) == ["add", "inc", "inc-2"]
    assert len(set(graph.keys)) == len(graph)


def test_keys_are_stable_for_the_same_dag_built_twice():
    def build() -> list[str]:
        shared = inc(0)
        return _build(total([inc(shared), add(shared, 1), inc.product(x=[1, 2])])).keys

    assert build() == build()


def test_futures_nested_in_containers_are_edges():
    a, b = inc(1), inc(2)
    graph = _build(total({"xs": [a, (b,)]}))  # type: ignore[arg-type]
    root = graph.roots[0]
    assert set(graph.deps[root]) == {graph.node_of(a), graph.node_of(b)}


def test_iter_futures_looks_inside_nested_containers():
    a, b, c = inc(1), inc(2), inc(3)
    found = list(iter_futures({"k": [a, {b}], "j": (1, {"deep": [c]})}))
    assert sorted(map(id, found)) == sorted(map(id, (a, b, c)))


def test_metadata_describes_each_node():
    graph = _build(inc.product(x=[1, 2]).join(total))
    by_name = {m.name: m for m in graph.metadata}
    assert by_name["inc"] == GraphMetadata("inc", "Add one.", "map", "inline", 0, None)
    assert by_name["total"].kind == "task"


def test_metadata_uses_backend_name_of_each_task():
    slow = inc.with_options(name="slow", backend="threads", retries=2, timeout=3)
    graph = build_graph([add(slow(1), inc(1))], lambda t: t.backend or "inline")
    by_name = {m.name: m for m in graph.metadata}
    assert by_name["slow"].backend_name == "threads"
    assert (by_name["slow"].retries, by_name["slow"].timeout) == (2, 3.0)
    assert by_name["inc"].backend_name == "inline"


def test_node_count_includes_every_known_mapped_element():
    graph = _build(add.product(x=[1, 2, 3], y=[10, 20]).join(total))
    assert graph.node_count == 3 * 2 + 1
    zipped = _build(add.zip(x=[1, 2, 3], y=[4, 5, 6]))
    assert zipped.node_count == 3


def test_node_count_leaves_out_widths_known_only_at_run_time():
    @task
    def numbers(n: int) -> list[int]:
        return list(range(n))

    graph = _build(inc.product(x=numbers(3)))
    assert graph.node_count == 1  # numbers; inc's width is added at run time


def test_a_cycle_is_a_graph_error_naming_a_task():
    a = inc(1)
    b = inc(a)
    a.kwargs["x"] = b  # futures are never built this way; force a cycle
    with pytest.raises(GraphError, match="cycle.*'inc'"):
        _build(b)


def test_deep_chain_builds_without_recursion():
    f = inc(0)
    for _ in range(5_000):
        f = inc(f)
    graph = _build(f)
    assert len(graph) == 5_001
    assert graph.keys[0] == "inc" and graph.keys[-1] == "inc-5001"


def test_keys_follow_argument_order_depth_first_in_a_mixed_fan_in():
    # Leaves and deeper arguments interleaved: keys follow the depth-first walk
    # in argument order, whether a child is a leaf or not.
    a, b, c = inc(inc(0)), inc(5), inc(inc(1))
    graph = _build(total([a, b, c]))
    assert graph.keys == ["inc", "inc-2", "inc-3", "inc-4", "inc-5", "total"]
    assert [graph.keys[graph.node_of(f)] for f in (a, b, c)] == ["inc-2", "inc-3", "inc-5"]
    graph = _build(total([b, a]))
    assert graph.keys == ["inc", "inc-2", "inc-3", "total"]
    assert graph.keys[graph.node_of(b)] == "inc"


@pytest.mark.parametrize(
    ("names", "keys"),
    [
        (["load", "load", "load-2", "load"], ["load", "load-2", "load-2-2", "load-3"]),
        (["load-2", "load", "load"], ["load-2", "load", "load-3"]),
        (["a[0]", "a[0]", "a"], ["a[0]-2", "a[0]-3", "a"]),
    ],
)
def test_keys_stay_unique_when_a_name_looks_like_another_names_key(names, keys):
    # ``load-2`` is both the second key of ``load`` and the first of a task
    # called ``load-2``; ``[`` is kept for element keys.
    futures = [inc.with_options(name=name)(n) for n, name in enumerate(names)]
    graph = _build(total(futures))
    assert graph.keys[:-1] == keys
    assert len(set(graph.keys)) == len(graph.keys)


def test_a_lone_dependent_is_stored_as_an_index_and_several_as_a_list():
    shared = inc(1)
    graph = _build(total([inc(shared), add(shared, shared)]))
    i = graph.node_of(shared)
    assert len(graph.dependents_of(i)) == 2
    assert graph.dependents_of(graph.node_of(graph.futures[-1])) == []
    leaf = _build(inc(inc(2)))
    assert leaf.dependents_of(0) == [1]
