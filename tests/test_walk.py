"""The one container walker (``daglite.graph.walk``): find and replace."""

from __future__ import annotations

from collections import namedtuple

from daglite.graph.walk import find, replace


class Marker:
    def __init__(self, n: int) -> None:
        self.n = n


Pair = namedtuple("Pair", "a b")


def test_find_looks_inside_every_kind_of_container_in_order():
    a, b, c, d = (Marker(i) for i in range(4))
    value = [a, (b, {"k": c}), Pair(1, [d]), frozenset({1, 2})]
    assert sorted(m.n for m in find(value, Marker)) == [0, 1, 2, 3]


def test_find_of_a_bare_instance_yields_it_and_of_a_scalar_nothing():
    m = Marker(1)
    assert list(find(m, Marker)) == [m]
    assert list(find(3, Marker)) == []


def test_find_never_looks_at_dict_keys():
    assert list(find({Pair(Marker(1), 2): 1}, Marker)) == []


def test_replace_rebuilds_containers_with_their_own_type():
    value = {"x": [Marker(1), (Marker(2), 5)], "p": Pair(Marker(3), "s"), "s": {1}}
    out = replace(value, Marker, lambda m: m.n * 10)
    assert out == {"x": [10, (20, 5)], "p": Pair(30, "s"), "s": {1}}
    assert type(out["p"]) is Pair


def test_replace_returns_containers_without_instances_as_they_are():
    inner = [1, 2, {"a": 3}]
    value = {"inner": inner, "m": Marker(1)}
    out = replace(value, Marker, lambda m: m.n)
    assert out["inner"] is inner
    assert replace(inner, Marker, lambda m: m.n) is inner
