"""``daglite.describe``: a DAG's nodes, edges and widths, without running anything."""

from __future__ import annotations

import pytest

from daglite import BackendError, evaluate, task
from daglite.backends import ThreadBackend
from daglite.describe import GraphDescription, describe
from daglite.plugins.hooks import hook_impl


@task
def load(n: int) -> list[int]:
    return list(range(n))


@task
def scale(x: int, factor: int = 2) -> int:
    return x * factor


@task
def pair(a: int, b: str) -> str:
    return f"{b}{a}"


@task
def combine(xs: list[int]) -> int:
    return sum(xs)


@task(backend="threading", description='Say "hi"')
def threaded(x: int) -> int:
    return x


@task
def explode() -> int:
    raise AssertionError("describe() must not run tasks")


def test_describe_lists_nodes_in_topological_order():
    base = load(n=3)
    dag = combine(base.map(scale)).then(threaded)
    info = describe(dag, backend="processes")
    assert [n.key for n in info.nodes] == ["load", "scale", "combine", "threaded"]
    assert [n.kind for n in info.nodes] == ["task", "map", "task", "task"]
    assert [n.backend for n in info.nodes] == ["processes", "processes", "processes", "threads"]
    assert info.node("scale").width is None  # a fan-out over a future: known at run time
    assert info.node("scale").width_text == "dynamic"
    assert info.node("load").width == 1
    assert info.edges == [("load", "scale"), ("scale", "combine"), ("combine", "threaded")]
    assert info.roots == ("threaded",)
    assert info.is_dynamic
    assert info.node("threaded").description == 'Say "hi"'


def test_describe_known_widths_for_product_and_zip():
    prod = scale.product(x=[1, 2, 3], factor=[10, 20])
    zipped = pair.zip(a=[1, 2], b=("x", "y"))
    info = describe([prod, zipped])
    assert info.node("scale").width == 6
    assert info.node("pair").width == 2
    assert info.call_count == 8
    assert not info.is_dynamic
    assert info.roots == ("scale", "pair")


def test_describe_uses_the_default_backend_name(monkeypatch):
    monkeypatch.delenv("DAGLITE_BACKEND", raising=False)
    assert describe(scale(x=1)).nodes[0].backend == "inline"
    monkeypatch.setenv("DAGLITE_BACKEND", "multiprocessing")
    assert describe(scale(x=1)).nodes[0].backend == "processes"
    assert describe(scale(x=1), backend=ThreadBackend(max_workers=1)).nodes[0].backend == "threads"


def test_describe_runs_nothing():
    boom = explode()
    info = describe({"a": boom, "b": scale(x=boom)})
    assert [n.key for n in info.nodes] == ["explode", "scale"]
    assert info.edges == [("explode", "scale")]


def test_describe_keys_match_the_keys_hooks_see():
    keys = []

    class Keys:
        @hook_impl
        def before_node_execute(self, key):
            keys.append(key)

    first, second = scale(x=1), scale(x=2)
    dag = combine([first, second]).then(scale)
    info = describe(dag)
    evaluate(dag, plugins=[Keys()])
    assert sorted(keys) == sorted(n.key for n in info.nodes)
    assert [n.key for n in info.nodes] == ["scale", "scale-2", "combine", "scale-3"]


def test_describe_text_shows_table_edges_and_roots():
    text = describe(load(n=4).map(scale).join(combine)).to_text()
    lines = text.splitlines()
    assert lines[0] == "3 nodes, 2 edges, 2 calls + dynamic fan-outs"
    assert lines[2].split() == ["key", "task", "kind", "backend", "width"]
    assert lines[4].split() == ["scale", "scale", "map", "inline", "dynamic"]
    assert "  load -> scale" in lines
    assert "  scale -> combine" in lines
    assert lines[-1] == "roots: combine"


def test_describe_dot_is_well_formed():
    dot = describe([threaded(x=1), scale.product(x=[1, 2])]).to_dot()
    assert dot.startswith("digraph daglite {\n")
    assert dot.endswith("}\n")
    assert '"scale" [label="scale\\nmap x2 · inline", shape=box3d, peripheries=2];' in dot
    assert 'tooltip="Say \\"hi\\""' in dot
    assert dot.count("{") == dot.count("}")


def test_describe_dot_edges():
    dot = describe(load(n=2).map(scale)).to_dot()
    assert '  "load" -> "scale";' in dot.splitlines()


def test_describe_rejects_non_futures():
    with pytest.raises(TypeError, match="did you call the task"):
        describe(scale)
    with pytest.raises(TypeError, match="needs a TaskFuture"):
        describe([1, 2])


def test_describe_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        describe(scale(x=1), backend="nope")


def test_describe_returns_a_description():
    assert isinstance(describe(scale(x=1)), GraphDescription)
    with pytest.raises(KeyError):
        describe(scale(x=1)).node("missing")


def _two_branches():
    base = load(n=3)
    return [combine(base.map(scale)).then(threaded), pair(a=1, b="x"), scale(x=base)]


def test_a_description_made_from_nodes_equals_the_lazy_one():
    lazy = describe(_two_branches())
    nodes, roots = lazy.nodes, lazy.roots
    eager = GraphDescription(nodes, roots)
    assert eager == lazy and hash(eager) == hash(lazy)
    assert eager != GraphDescription(nodes[:-1], roots)
    assert repr(eager) == repr(lazy) and repr(eager).startswith("GraphDescription(nodes=(")


def test_columns_match_the_nodes_and_need_none_made():
    lazy = describe(_two_branches())
    columns = lazy._columns()
    assert lazy._nodes is None and lazy.node_count == len(columns.keys) == 6
    nodes = lazy.nodes
    assert columns == GraphDescription(nodes, lazy.roots)._columns()
    for i, node in enumerate(nodes):
        assert (columns.keys[i], columns.tasks[i], columns.kinds[i]) == (
            node.key,
            node.task,
            node.kind,
        )
        assert (columns.backends[i], columns.widths[i], columns.descriptions[i]) == (
            node.backend,
            node.width,
            node.description,
        )
        assert tuple(columns.keys[d] for d in columns.deps[i]) == node.deps
    assert lazy.node_count == 6


def test_a_description_is_read_only():
    info = describe(scale(x=1))
    with pytest.raises(AttributeError):
        info.roots = ("other",)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        info.nodes = ()  # type: ignore[misc]


def test_the_description_hooks_get_keeps_no_task_argument_alive():
    import gc
    import weakref

    class Big:
        pass

    @task
    def use(x: Big) -> int:
        return 1

    seen: list[GraphDescription] = []

    class Keeper:
        @hook_impl
        def before_graph_execute(self, graph):
            seen.append(graph)

    value = Big()
    ref = weakref.ref(value)
    assert evaluate(use(value), plugins=[Keeper()]) == 1
    del value
    gc.collect()
    assert ref() is None
    assert [n.key for n in seen[0].nodes] == ["use"]
