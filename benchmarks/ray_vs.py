"""daglite's ray backend beside Ray's own API, and time to first result beside Dask's (gh-18).

Usage::

    python benchmarks/ray_vs.py               # 10,000-task fan-out, 500-hop chain, 3 repeats
    python benchmarks/ray_vs.py --quick       # smoke check: small sizes, 1 repeat

Every case runs in a fresh interpreter, once per repeat, the systems
interleaved (A B A B), each on a local instance with ``max_workers`` CPUs:

- ``first``: seconds from nothing started to the first result of one trivial
  task (Ray or Dask start included): daglite's ray backend, ``ray.init`` +
  ``f.remote``, daglite's dask backend, ``LocalCluster`` + ``Client.submit``.
- ``fanout``: µs per task of N trivial tasks after a warm-up: daglite
  ``inc.product(x=range(N))`` against ``ray.get([f.remote(i) for i in ...])``.
  ``fanout-watched`` is daglite's with a plugin that implements
  ``before_node_execute`` (every element a call of its own, 32 per Ray task).
- ``chain``: µs per hop of a chain of N trivial tasks: daglite ``inc(inc(...))``
  against ``ref = f.remote(ref)`` submitted ahead. daglite hands each job to
  Ray as soon as the one before it was (ObjectRefs as arguments) and fuses
  single-input links, up to 32 calls per Ray task. ``chain-unfused`` is the
  same chain with ``max_batch = 1``: one Ray task per call, chained by Ray,
  like the peer (what a DAG that cannot be fused gets).

Prints one table with medians and the ratio daglite / Ray, then JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2
WARMUP = 200


def inc(x: int) -> int:
    return x + 1


# -- cases (each in a fresh interpreter) -------------------------------------------------------


def _clock(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _case_daglite_ray(fanout: int, chain: int) -> dict[str, Any]:
    from daglite import evaluate, task
    from daglite.backends.ray import RayBackend
    from daglite.plugins.hooks import hook_impl

    t_inc = task(inc)
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    backend = RayBackend(max_workers=WORKERS)
    assert evaluate(t_inc(0), backend=backend) == 1
    out["first"] = time.perf_counter() - t0
    evaluate(t_inc.product(x=list(range(WARMUP))), backend=backend)
    seconds, result = _clock(
        lambda: evaluate(t_inc.product(x=list(range(fanout))), backend=backend)
    )
    assert result == list(range(1, fanout + 1))
    out["fanout"] = seconds / fanout * 1e6

    class Watch:
        @hook_impl
        def before_node_execute(self, key: str) -> None:
            pass

    dag = t_inc.product(x=list(range(fanout)))
    seconds, result = _clock(lambda: evaluate(dag, backend=backend, plugins=[Watch()]))
    assert result == list(range(1, fanout + 1))
    out["fanout-watched"] = seconds / fanout * 1e6
    future = t_inc(0)
    for _ in range(chain - 1):
        future = t_inc(future)
    seconds, result = _clock(lambda: evaluate(future, backend=backend))
    assert result == chain
    out["chain"] = seconds / chain * 1e6

    class OneCallPerTask(RayBackend):
        max_batch = 1

    unfused = OneCallPerTask(max_workers=WORKERS)  # the same local instance
    warm = t_inc(0)
    for _ in range(WARMUP // 10):
        warm = t_inc(warm)
    evaluate(warm, backend=unfused)  # its own Ray remote function: warm it up
    seconds, result = _clock(lambda: evaluate(future, backend=unfused))
    assert result == chain
    out["chain-unfused"] = seconds / chain * 1e6
    unfused.shutdown()
    backend.shutdown()
    return out


def _case_ray(fanout: int, chain: int) -> dict[str, Any]:
    import logging

    import ray

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ray.init(
        num_cpus=WORKERS, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    f = ray.remote(inc)
    assert ray.get(f.remote(0)) == 1
    out["first"] = time.perf_counter() - t0
    ray.get([f.remote(i) for i in range(WARMUP)])
    seconds, result = _clock(lambda: ray.get([f.remote(i) for i in range(fanout)]))
    assert result == list(range(1, fanout + 1))
    out["fanout"] = seconds / fanout * 1e6

    def run_chain() -> int:
        ref = f.remote(0)
        for _ in range(chain - 1):
            ref = f.remote(ref)
        return int(ray.get(ref))

    seconds, result = _clock(run_chain)
    assert result == chain
    out["chain"] = seconds / chain * 1e6
    ray.shutdown()
    return out


def _case_daglite_dask(fanout: int, chain: int) -> dict[str, Any]:
    from daglite import evaluate, task
    from daglite.backends.dask import DaskBackend

    t0 = time.perf_counter()
    backend = DaskBackend(max_workers=WORKERS)
    assert evaluate(task(inc)(0), backend=backend) == 1
    first = time.perf_counter() - t0
    backend.shutdown()
    return {"first": first}


def _case_dask(fanout: int, chain: int) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    assert client.submit(inc, 0).result() == 1
    first = time.perf_counter() - t0
    client.close()
    cluster.close()
    return {"first": first}


CASES = {
    "daglite-ray": _case_daglite_ray,
    "ray": _case_ray,
    "daglite-dask": _case_daglite_dask,
    "dask": _case_dask,
}


# -- the driver -------------------------------------------------------------------------------


def _run_case(system: str, fanout: int, chain: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", system, str(fanout), str(chain)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    return {"error": proc.stderr[-2000:] or f"exit {proc.returncode}"}


def _median(runs: list[dict[str, Any]], metric: str) -> float | None:
    values = [r[metric] for r in runs if metric in r]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _table(runs: dict[str, list[dict[str, Any]]], fanout: int, chain: int) -> str:
    rows = [
        "| workload | unit | daglite (ray backend) | Ray API | daglite / Ray |",
        "|---|---|---|---|---|",
    ]
    for metric, unit, peer in (
        ("fanout", f"µs/task, {fanout:,} tasks", "fanout"),
        ("fanout-watched", f"µs/task, {fanout:,} tasks, hooks on", "fanout"),
        ("chain", f"µs/hop, {chain} hops", "chain"),
        ("chain-unfused", f"µs/hop, {chain} hops, 1 call per Ray task", "chain"),
    ):
        ours, theirs = _median(runs["daglite-ray"], metric), _median(runs["ray"], peer)
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "—"
        rows.append(f"| {metric} | {unit} | {_fmt(ours)} | {_fmt(theirs)} | {ratio} |")
    rows += [
        "",
        "| time to first result (start included) | daglite | native API |",
        "|---|---|---|",
    ]
    for label, ours, theirs in (("Ray", "daglite-ray", "ray"), ("Dask", "daglite-dask", "dask")):
        a, b = _median(runs[ours], "first"), _median(runs[theirs], "first")
        rows.append(f"| {label} | {_fmt(a, 2)} s | {_fmt(b, 2)} s |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--case":
        system, fanout, chain = argv[1], int(argv[2]), int(argv[3])
        try:
            out = CASES[system](fanout, chain)
        except Exception as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write("RESULT " + json.dumps(out) + "\n")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--fanout", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    fanout, chain, repeats = args.fanout, args.chain, args.repeats
    if args.quick:
        fanout, chain, repeats = 200, 20, 1
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    failed = False
    for _ in range(repeats):
        for system in CASES:  # interleaved: A B A B
            result = _run_case(system, fanout, chain, args.timeout)
            if "error" in result:
                failed = True
                print(f"{system}: {result['error']}", file=sys.stderr)
            runs[system].append(result)
    print(_table(runs, fanout, chain))
    print(json.dumps({"fanout": fanout, "chain": chain, "workers": WORKERS, "runs": runs}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
