"""Chain fusion's static pass (``daglite.graph.fuse``) on hand-built graphs."""

from __future__ import annotations

from tests.engine._tasks import add, double, inc, source, total

from daglite.graph import build_graph
from daglite.graph.fuse import fusable_links


def _links(*roots, place_of=lambda task: "here"):
    graph = build_graph(list(roots), lambda t: "inline")
    return graph, fusable_links(graph, place_of)


def test_a_linear_chain_links_each_node_to_the_next():
    a = source(1)
    b = inc(a)
    c = inc(b)
    graph, links = _links(c)
    ia, ib, ic = (graph.node_of(f) for f in (a, b, c))
    assert links == {ia: (ib, ("x",)), ib: (ic, ("x",))}


def test_a_result_used_twice_is_not_fused():
    a = source(1)
    graph, links = _links(inc(a), inc(a))
    assert links == {}


def test_a_consumer_with_two_inputs_is_not_fused():
    graph, links = _links(add(source(1), source(2)))
    assert links == {}


def test_the_same_future_in_two_parameters_feeds_both():
    a = source(1)
    b = add(a, a)
    graph, links = _links(b)
    assert links == {graph.node_of(a): (graph.node_of(b), ("x", "y"))}


def test_a_result_nested_in_a_container_is_not_fused():
    a = source(1)
    graph, links = _links(total([a]))
    assert links == {}


def test_a_fan_out_consumer_is_not_fused():
    a = source(3)
    graph, links = _links(inc.product(x=a))
    assert links == {}


def test_links_only_where_both_tasks_run_in_one_place_that_fuses():
    a = source(1)
    b = inc(a)
    c = double(b)
    places = {"source": "pool", "inc": "pool", "double": "other pool"}
    graph, links = _links(c, place_of=lambda task: places[task.name])
    assert links == {graph.node_of(a): (graph.node_of(b), ("x",))}
    graph, links = _links(c, place_of=lambda task: None)  # nowhere fuses
    assert links == {}


def test_each_task_is_placed_once():
    asked: list[str] = []
    f = source(1)
    for _ in range(50):
        f = inc(f)

    def place_of(task):
        asked.append(task.name)
        return "pool"

    _, links = _links(f, place_of=place_of)
    assert len(links) == 50
    assert sorted(asked) == ["inc", "source"]
