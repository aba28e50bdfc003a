"""Soak test: many consecutive ``evaluate`` calls must not leak.

Usage: ``python benchmarks/soak.py [--calls 1000] [--backend processes ...]``

For each backend (inline, threads, processes by default), runs ``--calls``
evaluations of a small DAG (20 nodes: a 16-wide fan-out, a join, a short
chain) on one backend instance, and prints the caller's RSS, open file
descriptors, threads and child processes every 100 calls (or every tenth of
the calls). The verdict compares the end with the first sample, taken once
the backend is warm: RSS within ``--rss-mb`` MB, fds and threads within 2,
worker processes == pool size; after ``shutdown()`` no worker process may be
alive. Exit code 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import psutil

from daglite import evaluate, task

WORKERS = 2


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def small_dag() -> Any:
    """20 nodes: 16 inc, a join, then 3 chained inc."""
    out = total([inc(i) for i in range(16)])
    for _ in range(3):
        out = inc(out)
    return out


EXPECTED = sum(range(1, 17)) + 3


def _make(name: str) -> Any:
    from daglite.backends import InlineBackend, ProcessBackend, ThreadBackend

    if name == "inline":
        return InlineBackend()
    if name == "threads":
        return ThreadBackend(max_workers=WORKERS)
    if name == "processes":
        return ProcessBackend(max_workers=WORKERS)
    raise SystemExit(f"unknown backend {name!r}")


def _sample(me: psutil.Process) -> dict[str, float]:
    children = me.children(recursive=True)
    return {
        "rss_mb": me.memory_info().rss / 2**20,
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "children": len(children),
    }


def _workers_alive(backend: Any) -> list[int]:
    pids = getattr(backend, "worker_pids", lambda: [])()
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def soak(name: str, calls: int, rss_limit_mb: float) -> bool:
    """Run one backend's soak, print samples and the verdict; True when flat."""
    me = psutil.Process()
    every = max(1, min(100, calls // 10))
    dag = small_dag()
    backend = _make(name)
    print(f"\n## {name}: {calls} calls of a 20-node DAG")
    print(f"{'calls':>6} {'RSS MB':>8} {'fds':>5} {'threads':>8} {'children':>9} {'workers':>8}")
    first: dict[str, float] | None = None
    last: dict[str, float] = {}
    worker_counts: list[int] = []
    pids_before = set()
    with backend:
        for i in range(1, calls + 1):
            result = evaluate(dag, backend=backend)
            if result != EXPECTED:
                print(f"wrong result at call {i}: {result!r} != {EXPECTED!r}")
                return False
            if i % every == 0 or i == 1:
                last = _sample(me)
                workers = len(_workers_alive(backend))
                worker_counts.append(workers)
                if first is None and i >= every:
                    first = last
                print(
                    f"{i:>6} {last['rss_mb']:>8.1f} {last['fds']:>5.0f} {last['threads']:>8.0f} "
                    f"{last['children']:>9.0f} {workers:>8}"
                )
        pids_before = set(getattr(backend, "worker_pids", lambda: [])())
    first = first or last
    left = [
        p for p in pids_before if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
    ]
    others = [f"{c.pid}:{_describe(c)}" for c in me.children(recursive=True)]
    checks = {
        f"RSS growth {last['rss_mb'] - first['rss_mb']:+.1f} MB <= {rss_limit_mb} MB": (
            last["rss_mb"] - first["rss_mb"] <= rss_limit_mb
        ),
        f"fds {first['fds']:.0f} -> {last['fds']:.0f} (within 2)": abs(last["fds"] - first["fds"])
        <= 2,
        f"threads {first['threads']:.0f} -> {last['threads']:.0f} (within 2)": (
            abs(last["threads"] - first["threads"]) <= 2
        ),
    }
    if name == "processes":
        steady = worker_counts[1:] or worker_counts
        checks[f"worker processes == {WORKERS} at every sample (saw {sorted(set(steady))})"] = all(
            w == WORKERS for w in steady
        )
    checks[f"no worker process alive after shutdown (left: {left})"] = not left
    ok = all(checks.values())
    for text, passed in checks.items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {text}")
    if others:
        print(f"  note: child processes still present after shutdown: {', '.join(others)}")
    print(f"  verdict for {name}: {'FLAT' if ok else 'NOT FLAT'}")
    return ok


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return "?"
    if "forkserver" in cmd:
        return "multiprocessing forkserver"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    return cmd[:80]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="evaluate calls per backend")
    parser.add_argument(
        "--backend",
        action="append",
        choices=("inline", "threads", "processes"),
        help="backend to soak (repeatable; default: all three)",
    )
    parser.add_argument("--rss-mb", type=float, default=10.0, help="allowed RSS growth in MB")
    args = parser.parse_args(argv)
    print(f"daglite soak: pid {os.getpid()}, python {sys.version.split()[0]}")
    results = {
        name: soak(name, args.calls, args.rss_mb)
        for name in args.backend or ("inline", "threads", "processes")
    }
    print(
        "\nsummary: "
        + ", ".join(f"{n}={'FLAT' if ok else 'NOT FLAT'}" for n, ok in results.items())
    )
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
