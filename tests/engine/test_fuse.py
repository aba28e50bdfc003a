"""Chain fusion's static pass (``daglite.graph.fuse``) on hand-built graphs."""

from __future__ import annotations

from tests.engine._tasks import add, double, inc, source, total

from daglite.graph import build_graph
from daglite.graph.fuse import elementwise_links, fusable_links


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


# -- element-wise links (gh-14): a map over a fan-out, element by element -----------


def _element_links(*roots, place_of=lambda task: "here"):
    graph = build_graph(list(roots), lambda t: "inline")
    return graph, elementwise_links(graph, place_of)


def test_a_map_over_a_fan_out_links_element_by_element():
    a = source.product(n=[1, 2, 3])
    b = a.map(inc)
    c = b.map(double)
    graph, links = _element_links(c)
    ia, ib, ic = (graph.node_of(f) for f in (a, b, c))
    assert links == {ia: (ib, ("x",)), ib: (ic, ("x",))}
    assert _links(c)[1] == {}  # none of them is a single call


def test_a_map_with_fixed_arguments_links():
    a = source.product(n=[1, 2])
    b = add.product(x=a, y=5)
    graph, links = _element_links(b)
    assert links == {graph.node_of(a): (graph.node_of(b), ("x",))}


def test_element_links_need_a_fan_out_feeding_a_map_of_it_alone():
    listed = source(3)  # a single call returning a list: its elements are not calls
    assert _element_links(inc.product(x=listed))[1] == {}
    a = source.product(n=[1, 2])
    assert _element_links(add.product(x=a, y=[1, 2]))[1] == {}  # two fanned-out parameters
    a = source.product(n=[1, 2])
    assert _element_links(add.product(x=a, y=source(1)))[1] == {}  # another input
    a = source.product(n=[1, 2])
    assert _element_links(add.product(x=a, y=a))[1] == {}  # fanned out twice
    a = source.product(n=[1, 2])
    assert _element_links(a.map(inc), a.map(double))[1] == {}  # two consumers
    a = source.product(n=[1, 2])
    assert _element_links(a.join(total))[1] == {}  # the whole list


def test_element_links_only_where_both_run_in_one_place_that_fuses():
    a = source.product(n=[1, 2])
    b = a.map(inc)
    graph, links = _element_links(b, place_of=lambda t: {"source": 1, "inc": 2}[t.name])
    assert links == {}
    assert _element_links(b, place_of=lambda t: None)[1] == {}
