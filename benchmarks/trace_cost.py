"""What the trace file costs: the 10,000-task fan-out on processes, with and without it.

Usage::

    python benchmarks/trace_cost.py [--rounds 12] [--size 10000] [--workers 2]

One warm ``ProcessBackend`` runs the ``fanout`` workload (10,000 ``inc(i)``
then one ``total`` join) in rounds; each round runs every variant once, in an
order that rotates from round to round, so the machine's drift hits all alike:

- ``plain``: no plugin;
- ``noop-hook``: a plugin with an empty ``after_node_execute`` (the guide's
  timing plugin doing nothing): what any plugin that watches each task costs
  the engine, the floor under the trace's figure;
- ``trace``: ``evaluate(..., trace=path)`` (``TracePlugin``, events recorded);
- ``trace-noevents``: ``TracePlugin(path, events=False)``;
- ``report``: ``evaluate(..., report=path)`` (``ReportPlugin``: the HTML report,
  with its memory sampler).

The traced and reported runs include writing the file. Printed: each variant's median and
the median of the per-round ratios to ``plain`` (issue 19's target: <= 1.3x), and
the same for the CPU time of this process (the engine thread, the backend's
threads here, the report's sampler): steadier than the wall clock when other
work shares the machine, since the caller's thread is what a watched run adds to.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl  # noqa: E402

from daglite import evaluate  # noqa: E402
from daglite.backends import ProcessBackend  # noqa: E402
from daglite.plugins.builtin import TracePlugin  # noqa: E402

TARGET = 1.3


def _variants(dag: Any, backend: Any, where: str) -> dict[str, Callable[[], Any]]:
    path = os.path.join(where, "run.json")
    page = os.path.join(where, "run.html")
    return {
        "plain": lambda: evaluate(dag, backend=backend),
        "noop-hook": lambda: evaluate(dag, backend=backend, plugins=[wl._NoOpTimer()]),
        "trace": lambda: evaluate(dag, backend=backend, trace=path),
        "trace-noevents": lambda: evaluate(
            dag, backend=backend, plugins=[TracePlugin(path, events=False)]
        ),
        "report": lambda: evaluate(dag, backend=backend, report=page),
    }


def _rounds(
    variants: dict[str, Callable[[], Any]], n: int, expect: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and caller CPU seconds (every thread of this process) of each run."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for k in range(n):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            value = variants[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            if value != expect:
                raise SystemExit(f"{name} computed {value!r}, expected {expect!r}")
    return times, cpu


def _report(times: dict[str, list[float]], cpu: dict[str, list[float]], size: int) -> None:
    plain, plain_cpu = times["plain"], cpu["plain"]
    for name, runs in times.items():
        ratio = statistics.median(t / p for t, p in zip(runs, plain))
        cpu_ratio = statistics.median(t / p for t, p in zip(cpu[name], plain_cpu))
        verdict = "" if name == "plain" else f"  ratio {ratio:.2f}x"
        if name in ("trace", "report"):
            verdict += f" (target <= {TARGET}x: {'PASS' if ratio <= TARGET else 'FAIL'})"
        median, median_cpu = statistics.median(runs), statistics.median(cpu[name])
        print(
            f"{name:15} median {median * 1e3:8.1f} ms  {median / size * 1e6:6.2f} µs/task"
            f"  caller CPU {median_cpu * 1e3:7.1f} ms ({cpu_ratio:.2f}x){verdict}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="rounds of every variant")
    parser.add_argument("--size", type=int, default=10_000, help="tasks in the fan-out")
    parser.add_argument("--workers", type=int, default=wl.WORKERS, help="worker processes")
    args = parser.parse_args(argv)
    dag = wl.total_t([wl.inc_t(i) for i in range(args.size)])
    expect = wl.expected("fanout", args.size, 0)
    with (
        ProcessBackend(max_workers=args.workers) as backend,
        tempfile.TemporaryDirectory() as where,
    ):
        variants = _variants(dag, backend, where)
        for run in variants.values():  # warm-up: workers, imports, first file
            run()
        times, cpu = _rounds(variants, args.rounds, expect)
    print(
        f"fan-out of {args.size:,} tasks on processes (max_workers={args.workers}), "
        f"{args.rounds} rounds, rotating order"
    )
    _report(times, cpu, args.size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
