"""Nested runs (gh-15): an outer map whose tasks each run an inner map, against the flat run.

Usage::

    python benchmarks/nested.py                  # 5 rounds, 4 x 8 tasks of ~40 ms
    python benchmarks/nested.py --rounds 9 --work 200000

Workload: an outer map of ``--outer`` tasks on ``processes``, each running an
inner map of ``--inner`` short CPU-bound tasks on ``processes`` (a run nested
in a worker process: it runs on the worker's own slot, gh-15), against the
same ``outer x inner`` tasks run flat on a pool of the same size, and, as the
peer, the same tasks through a ``concurrent.futures.ProcessPoolExecutor`` of
that size (``Executor.map``). The three are timed in turn in one process,
round after round, each after a warm-up that starts every worker; the
figures are the medians. Target: nested / flat <= 1.2.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from daglite import evaluate, task
from daglite.backends import ProcessBackend
from daglite.settings import usable_cpu_count


def spin(n: int) -> int:
    """Short CPU-bound work: a pure-Python loop of ``n`` steps."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _nested_dag(outer: int, inner: int, work: int) -> Any:
    leaf = task(spin, name="leaf")

    @task
    def group(g: int) -> int:
        return sum(evaluate(leaf.product(n=[work] * inner), backend="processes"))

    return group.product(g=list(range(outer)))


def _timed(fn: Callable[[], Any], expected: Any) -> float:
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    if out != expected:
        raise SystemExit(f"wrong result: {out!r} != {expected!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer", type=int, default=4)
    parser.add_argument("--inner", type=int, default=8)
    parser.add_argument("--work", type=int, default=400_000, help="loop steps per task")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=usable_cpu_count())
    args = parser.parse_args()
    outer, inner, work, workers = args.outer, args.inner, args.work, args.workers
    one = spin(work)
    nested_dag = _nested_dag(outer, inner, work)
    flat_dag = task(spin, name="leaf").product(n=[work] * (outer * inner))
    times: dict[str, list[float]] = {"nested": [], "flat": [], "cf": []}
    with ProcessBackend(max_workers=workers) as pool, ProcessPoolExecutor(workers) as cf:
        # Warm-up: every worker started, functions loaded.
        evaluate(nested_dag, backend=pool)
        evaluate(flat_dag, backend=pool)
        list(cf.map(spin, [work] * (2 * workers)))
        for _ in range(args.rounds):
            times["nested"].append(
                _timed(lambda: evaluate(nested_dag, backend=pool), [one * inner] * outer)
            )
            times["flat"].append(
                _timed(lambda: evaluate(flat_dag, backend=pool), [one] * (outer * inner))
            )
            times["cf"].append(
                _timed(
                    lambda: list(cf.map(spin, [work] * (outer * inner))), [one] * (outer * inner)
                )
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{outer} outer x {inner} inner tasks of {work} steps, {workers} workers, "
        f"{args.rounds} rounds (median s)"
    )
    print("| case | s | vs daglite flat | vs concurrent.futures |")
    print("|---|---|---|---|")
    for name, label in (
        ("nested", "daglite nested"),
        ("flat", "daglite flat"),
        ("cf", "concurrent.futures flat"),
    ):
        print(
            f"| {label} | {med[name]:.3f} | {med[name] / med['flat']:.2f}x | "
            f"{med[name] / med['cf']:.2f}x |"
        )
    ratio = med["nested"] / med["flat"]
    print(f"nested / flat = {ratio:.2f} (target <= 1.2): {'pass' if ratio <= 1.2 else 'FAIL'}")


if __name__ == "__main__":
    main()
