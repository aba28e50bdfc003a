"""Stopping a Ray evaluation that fails fast: seconds to the raise, and a storm of them.

Usage::

    python benchmarks/ray_failfast.py             # 1,000-call fan-out x5, storm of 60 runs
    python benchmarks/ray_failfast.py --quick     # smoke check: small sizes

Both run one call per Ray task (``max_batch = 1``) on a local instance with
2 CPUs, so every call is a Ray task daglite must stop:

- ``fan-out``: ``total(inc.product(x=range(N)))`` beside a task that fails at
  once; seconds from ``evaluate`` to its ``TaskError``, median of the runs
  (after each, a small evaluation waits until the pool is back).
- ``storm``: runs of a failing task beside 12 ``add(work, work)`` pairs whose
  ``work`` sleeps up to 20 ms, so the failure lands while Ray hands tasks to
  workers; total seconds, and how many ``ray.cancel`` calls and worker
  kills daglite made.

Prints the figures, then JSON. The peer for Ray's per-task costs is
``benchmarks/ray_vs.py``; this script is about the error path.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from typing import Any

from workloads import inc_t, total_t

from daglite import TaskError, evaluate, task
from daglite.backends.ray import RayBackend

WORKERS = 2


class _OneCallPerTask(RayBackend):
    max_batch = 1


@task
def boom() -> int:
    raise ValueError("boom")


@task
def work(i: int) -> int:
    time.sleep(random.random() * 0.02)  # the workload: a short task of varying length
    return i


@task
def add(a: int, b: int) -> int:
    return a + b


def _fails(dag: Any, backend: RayBackend) -> float:
    start = time.perf_counter()
    try:
        evaluate(dag, backend=backend)
    except TaskError:
        return time.perf_counter() - start
    raise AssertionError("the evaluation did not fail")


def _fan_out(backend: RayBackend, calls: int, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        seconds.append(_fails([total_t(inc_t.product(x=range(calls))), boom()], backend))
        assert evaluate(total_t(inc_t.product(x=range(10))), backend=backend) == 55
    return seconds


def _storm(backend: RayBackend, runs: int, counts: dict[str, int]) -> float:
    import ray

    import daglite.backends.ray as ray_backend

    kill, cancel = ray_backend.kill_titled, ray.cancel

    def counted_kill(processes: list[Any], title: str) -> bool:
        killed = kill(processes, title)
        counts["kills"] += killed
        return killed

    def counted_cancel(*args: Any, **kwargs: Any) -> Any:
        counts["ray.cancel"] += 1
        return cancel(*args, **kwargs)

    ray_backend.kill_titled, ray.cancel = counted_kill, counted_cancel
    try:
        start = time.perf_counter()
        for _ in range(runs):
            _fails([boom(), *(add(work(i), work(i + 1)) for i in range(12))], backend)
        return time.perf_counter() - start
    finally:
        ray_backend.kill_titled, ray.cancel = kill, cancel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--storm", type=int, default=60)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.runs, args.storm = 100, 2, 5
    backend = _OneCallPerTask(max_workers=WORKERS)
    backend.ensure_started()
    try:
        assert evaluate(total_t(inc_t.product(x=range(50))), backend=backend) == 1_275  # warm
        fan_out = _fan_out(backend, args.calls, args.runs)
        counts = {"ray.cancel": 0, "kills": 0}
        storm = _storm(backend, args.storm, counts)
    finally:
        backend.shutdown()
    print(
        f"fan-out of {args.calls:,} calls, seconds to the raise: "
        f"{' '.join(f'{s:.2f}' for s in fan_out)} (median {statistics.median(fan_out):.2f})"
    )
    print(
        f"storm of {args.storm} failing runs: {storm:.1f} s, "
        f"{counts['ray.cancel']} ray.cancel, {counts['kills']} worker kills"
    )
    figures = {"fan_out": fan_out, "storm_seconds": storm, **counts, "args": vars(args)}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
