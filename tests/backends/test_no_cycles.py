"""Results are freed by reference counting, not by the cycle collector (gh-14).

A finished outcome and its pool future's callback used to hold each other, and
so did the units of a fused chain: every result stayed in memory until the
cycle collector happened to run. With the collector off during ``evaluate``,
no result a task returned may be alive once ``evaluate`` returns, except what
it returns.
"""

from __future__ import annotations

import gc
import weakref

import pytest

from daglite import evaluate, task
from daglite.plugins.hooks import hook_impl


class Box:
    def __init__(self, n: int) -> None:
        self.n = n


@task
def make(n: int) -> Box:
    return Box(n)


@task
def grow(b: Box) -> Box:
    return Box(b.n + 1)


@task
def unbox(b: Box) -> int:
    return b.n


class Grab:
    """Keeps a weak reference to every Box a task returned (in the caller)."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Box]] = []

    @hook_impl
    def after_node_execute(self, result):
        if isinstance(result, Box):
            self.refs.append(weakref.ref(result))


@pytest.mark.parametrize("backend", ["inline", "threads", "processes"])
def test_intermediate_results_are_freed_without_the_cycle_collector(backend):
    dags = [unbox(grow(grow(make(i)))) for i in range(10)]  # fused chains, and plain calls
    evaluate(dags, backend=backend)  # warm: pools started, imports done
    grab = Grab()
    gc.collect()
    gc.disable()
    try:
        assert evaluate(dags, backend=backend, plugins=[grab]) == [i + 2 for i in range(10)]
        alive = [r for r in grab.refs if r() is not None]
    finally:
        gc.enable()
    assert len(grab.refs) == 30
    assert alive == []
