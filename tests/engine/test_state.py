"""The run's scheduling state on its own: no ``evaluate``, no threads, no backends.

Each test builds a small graph, drives the transitions by hand (node done,
element done, slice done, failure, release of inputs) and checks the state, as
dask's ``test_local.py`` does for ``finish_task``.
"""

from __future__ import annotations

import pytest
from tests.engine._tasks import add, inc, source, total

from daglite._run.state import RunState
from daglite.graph import Graph, build_graph


def _state(*roots) -> tuple[RunState, Graph]:
    graph = build_graph(list(roots), lambda t: "inline")
    return RunState(graph), graph


def _node(graph: Graph, future) -> int:
    return graph.node_of(future)


def test_initial_ready_nodes_are_those_without_inputs_in_node_order():
    a, b = source(1), source(2)
    state, graph = _state(add(a, b))
    assert state.initial() == [_node(graph, a), _node(graph, b)]


def test_node_done_returns_only_dependents_whose_last_input_it_was():
    a, b = source(1), source(2)
    c = add(a, b)
    state, graph = _state(c)
    ia, ib, ic = (_node(graph, f) for f in (a, b, c))
    assert list(state.node_done(ia, 1)) == []
    assert state.waiting[ic] == 1
    assert list(state.node_done(ib, 2)) == [ic]
    assert state.results[ia] == 1 and state.results[ib] == 2


def test_a_node_with_many_consumers_makes_each_ready_in_dependents_order():
    a = source(1)
    x, y = inc(a), inc(a)
    state, graph = _state(x, y)
    ready = state.node_done(_node(graph, a), 1)
    assert list(ready) == [_node(graph, x), _node(graph, y)]


def test_release_inputs_drops_a_result_after_its_last_consumer_took_it():
    a = source(1)
    x, y = inc(a), inc(a)
    state, graph = _state(total([x, y]))
    ia = _node(graph, a)
    state.node_done(ia, 1)
    state.release_inputs(_node(graph, x))
    assert state.results[ia] == 1  # y still needs it
    state.release_inputs(_node(graph, y))
    assert state.results[ia] is None
    assert state.consumers[ia] == 0


def test_release_inputs_never_drops_a_root():
    a = source(1)
    b = inc(a)
    state, graph = _state(a, b)  # a is a root and an input of b
    ia = _node(graph, a)
    state.node_done(ia, 1)
    state.release_inputs(_node(graph, b))
    assert state.results[ia] == 1


def test_fan_out_completes_after_its_last_element_in_element_order():
    mapped = inc.product(x=[1, 2, 3])
    joined = mapped.join(total)
    state, graph = _state(joined)
    im, ij = _node(graph, mapped), _node(graph, joined)
    assert state.fan_out(im, 3) == ()
    assert state.elements_left[im] == 3
    assert list(state.element_done(im, 2, 4)) == []
    assert list(state.element_done(im, 0, 2)) == []
    assert list(state.element_done(im, 1, 3)) == [ij]
    assert state.results[im] == [2, 3, 4]
    assert im not in state.elements_left and im not in state.element_results


def test_an_empty_fan_out_is_done_at_once():
    mapped = inc.product(x=[])
    joined = mapped.join(total)
    state, graph = _state(joined)
    assert list(state.fan_out(_node(graph, mapped), 0)) == [_node(graph, joined)]
    assert state.results[_node(graph, mapped)] == []


def test_slice_done_counts_only_the_elements_that_succeeded():
    mapped = inc.product(x=list(range(6)))
    state, graph = _state(mapped.join(total))
    im = _node(graph, mapped)
    state.fan_out(im, 6)
    assert list(state.slice_done(im, 0, [1, 2, 3], failures=1)) == []
    assert state.elements_left[im] == 4  # the failed element is still to come
    assert state.element_results[im][:3] == [1, 2, 3]


def test_failure_skips_everything_downstream_once():
    a = source(1)
    b = inc(a)
    c = inc(b)
    other = source(5)
    state, graph = _state(c, other)
    ia = _node(graph, a)
    assert state.fail(ia) == ["inc", "inc-2"]
    assert state.fail(ia) == []
    assert state.skipped == ["inc", "inc-2"]
    assert _node(graph, other) not in state.failed


def test_a_failed_node_never_becomes_ready():
    a, b = source(1), source(2)
    c = add(a, b)
    state, graph = _state(c)
    state.fail(_node(graph, c))
    state.node_done(_node(graph, a), 1)
    assert list(state.node_done(_node(graph, b), 2)) == []


def test_a_fan_out_with_a_failed_element_does_not_complete():
    mapped = inc.product(x=[1, 2])
    joined = mapped.join(total)
    state, graph = _state(joined)
    im = _node(graph, mapped)
    state.fan_out(im, 2)
    state.fail(im)  # an element failed for good
    state.element_done(im, 0, 2)
    assert list(state.elements_done(im, 1)) == []
    assert state.results[im] is None


def test_abort_stops_readiness_but_keeps_results():
    a = source(1)
    b = inc(a)
    state, graph = _state(b)
    state.abort()
    assert list(state.node_done(_node(graph, a), 1)) == []
    assert state.results[_node(graph, a)] == 1


def test_a_claimed_node_is_not_made_ready_until_unclaimed():
    a = source(1)
    b = inc(a)
    c = inc(b)
    state, graph = _state(c)
    ib, ic = _node(graph, b), _node(graph, c)
    state.claim(ib)  # fused after a
    assert list(state.node_done(_node(graph, a), 1)) == []
    state.unclaim(ic)  # unclaiming another node changes nothing
    assert list(state.node_done(ib, 2)) == [ic]


@pytest.mark.parametrize("width", [1, 5])
def test_elements_left_is_empty_once_every_fan_out_is_done(width):
    mapped = inc.product(x=list(range(width)))
    state, graph = _state(mapped)
    im = _node(graph, mapped)
    state.fan_out(im, width)
    assert state.elements_left == {im: width}
    for e in range(width):
        state.element_done(im, e, e + 1)
    assert state.elements_left == {}
    assert state.results[im] == list(range(1, width + 1))
