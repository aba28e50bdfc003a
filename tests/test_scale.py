"""Large graphs on inline: no recursion limits, memory proportional to node count.

No timing assertions: memory is measured with ``tracemalloc`` (peak bytes per
node, with a generous bound), and correctness by the result.
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from daglite import TaskFuture, evaluate, task

pytestmark = pytest.mark.slow

WIDTH = 100_000
CHAIN = 10_000
# Generous: the engine needs well under 1 KB per node today; this only catches
# memory that grows faster than the graph (e.g. quadratic bookkeeping).
MAX_BYTES_PER_NODE = 3 * 1024


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def _peak_bytes(build_and_run: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = build_and_run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_wide_fan_in_of_separate_futures():
    def run() -> int:
        return evaluate(total([inc(i) for i in range(WIDTH)]))

    result, peak = _peak_bytes(run)
    assert result == sum(range(1, WIDTH + 1))
    assert peak / (WIDTH + 1) < MAX_BYTES_PER_NODE


def test_wide_product_then_join():
    def run() -> int:
        return evaluate(inc.product(x=range(WIDTH)).join(total))

    result, peak = _peak_bytes(run)
    assert result == sum(range(1, WIDTH + 1))
    assert peak / (WIDTH + 1) < MAX_BYTES_PER_NODE


def test_long_chain_needs_no_recursion():
    assert CHAIN > sys.getrecursionlimit()

    def run() -> int:
        future: TaskFuture[int] = inc(0)
        for _ in range(CHAIN - 1):
            future = inc(future)
        return evaluate(future)

    result, peak = _peak_bytes(run)
    assert result == CHAIN
    assert peak / CHAIN < MAX_BYTES_PER_NODE


def test_memory_grows_roughly_linearly():
    """Ten times the nodes may not cost much more than ten times the memory."""

    def run(width: int) -> Callable[[], int]:
        return lambda: evaluate(inc.product(x=range(width)).join(total))

    _, small = _peak_bytes(run(2_000))
    _, large = _peak_bytes(run(20_000))
    assert large < 20 * small  # quadratic growth would be about 100 times
