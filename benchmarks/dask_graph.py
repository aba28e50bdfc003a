"""daglite's Dask backend beside Dask's own ``client.submit``, in one run (gh-17).

Usage::

    python benchmarks/dask_graph.py                 # chain of 500, fan-out of 10,000, 100 MB
    python benchmarks/dask_graph.py --repeats 5 --chain 500 --fanout 10000 --mb 100

Three workloads, each on a fresh two-worker ``LocalCluster`` per run:

* **chain**: ``inc(inc(...inc(0)))`` N deep; the peer is ``x = client.submit(inc, x)``
  N times (futures as arguments: Dask chains them on the cluster).
* **fan-out**: N ``inc(i)`` and a ``total`` of them; the peer submits each
  ``inc`` and then ``total`` of the futures.
* **chain, one call per Dask task**: the same chain on a ``DaskBackend`` with
  ``max_batch = 1``, so no hop is fused with the next: each is a Dask task
  of its own, chained by the scheduler (what a DAG that cannot be fused
  gets); beside the same ``client.submit`` chain, on one cluster, in this
  process, alternating.
* **intermediate**: ``length(sized(n))`` with an n-byte intermediate; the
  figure is the bytes the workers sent to the client (their
  ``transfer_outgoing_log`` entries that no worker asked for), for daglite and
  for ``client.submit(length, client.submit(sized, n))``.

The timed cases run through ``benchmarks/_case.py`` (one fresh interpreter
per case and repeat, daglite and the peer alternating) and report medians and
daglite/peer ratios; the intermediate runs here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads as wl  # noqa: E402

from daglite import evaluate, task  # noqa: E402


def _case(workload: str, system: str, size: int) -> float:
    """One run of a timed case in a fresh interpreter: the measured seconds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, os.path.join(HERE, "_case.py"), workload, system, "dask", str(size), "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            if not result.get("verified"):
                raise RuntimeError(f"{workload}/{system} failed: {result}")
            return float(result["measured"])
    raise RuntimeError(f"{workload}/{system}: no result\n{out.stderr[-2000:]}")


def _timed(workload: str, size: int, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"daglite": [], "client": []}
    for _ in range(repeats):
        for system in runs:  # alternating, so drifts of the machine hit both
            runs[system].append(_case(workload, system, size))
    daglite, client = (statistics.median(runs[s]) for s in ("daglite", "client"))
    return {
        "size": size,
        "runs": runs,
        "daglite_ms_per_task": daglite / size * 1e3,
        "client_ms_per_task": client / size * 1e3,
        "ratio": daglite / client,
    }


@task
def sized(n: int) -> bytes:
    return b"x" * n


@task
def length(data: bytes) -> int:
    return len(data)


def _sent_to_clients(dask_worker: Any) -> int:
    return sum(t["total"] for t in dask_worker.transfer_outgoing_log if t["who"] is None)


def _received(client: Any, run: Any) -> int:
    before = sum(client.run(_sent_to_clients).values())
    run()
    return sum(client.run(_sent_to_clients).values()) - before


def _intermediate(nbytes: int) -> dict[str, int]:
    """Bytes sent to the client while a ``nbytes`` intermediate passes between two tasks."""
    from distributed import Client, LocalCluster

    from daglite.backends.dask import DaskBackend

    out = {}
    with LocalCluster(
        n_workers=wl.WORKERS,
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        with Client(cluster) as client, DaskBackend(client=client) as backend:
            dag = length(sized(nbytes))
            assert evaluate(dag, backend=backend) == nbytes  # warm-up
            out["daglite"] = _received(client, lambda: evaluate(dag, backend=backend))

            def peer() -> None:
                raw_sized, raw_length = sized.func, length.func
                data = client.submit(raw_sized, nbytes, pure=False)
                assert client.submit(raw_length, data, pure=False).result() == nbytes

            out["client"] = _received(client, peer)
    return out


def _unfused_chain(size: int, repeats: int) -> dict[str, Any]:
    """The chain with one call per Dask task, beside ``client.submit``, on one cluster."""
    import time

    from distributed import Client, LocalCluster

    from daglite.backends.dask import DaskBackend

    class _OnePerTask(DaskBackend):
        max_batch = 1

    def raw_chain(client: Any) -> int:
        x: Any = 0
        for _ in range(size):
            x = client.submit(wl.inc, x, pure=False)
        return int(x.result())

    dag = wl.inc_t(0)
    for _ in range(size - 1):
        dag = wl.inc_t(dag)
    runs: dict[str, list[float]] = {"daglite": [], "client": []}
    with LocalCluster(
        n_workers=wl.WORKERS,
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        with Client(cluster) as client, _OnePerTask(client=client) as backend:
            assert evaluate(wl.inc_t(wl.inc_t(0)), backend=backend) == 2  # warm-up
            assert raw_chain(client) == size
            for _ in range(repeats):
                for system, run in (
                    ("daglite", lambda: evaluate(dag, backend=backend)),
                    ("client", lambda: raw_chain(client)),
                ):
                    t0 = time.perf_counter()
                    assert run() == size
                    runs[system].append(time.perf_counter() - t0)
    daglite, client_s = (statistics.median(runs[s]) for s in ("daglite", "client"))
    return {
        "size": size,
        "runs": runs,
        "daglite_ms_per_task": daglite / size * 1e3,
        "client_ms_per_task": client_s / size * 1e3,
        "ratio": daglite / client_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chain", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=10_000)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args(argv)
    chain = _timed("chain", args.chain, args.repeats)
    unfused = _unfused_chain(args.chain, args.repeats)
    fanout = _timed("fanout", args.fanout, args.repeats)
    data = _intermediate(args.mb << 20)
    print("| workload | daglite | client.submit | daglite / client.submit |")
    print("|---|---|---|---|")
    rows = (
        ("chain", "ms/hop", chain),
        ("chain, one call per Dask task,", "ms/hop", unfused),
        ("fan-out", "ms/task", fanout),
    )
    for name, unit, r in rows:
        print(
            f"| {name} of {r['size']:,} | {r['daglite_ms_per_task']:.3f} {unit} "
            f"| {r['client_ms_per_task']:.3f} {unit} | {r['ratio']:.2f} |"
        )
    print(
        f"| {args.mb} MB intermediate, bytes to the client | {data['daglite']:,} "
        f"| {data['client']:,} | — |"
    )
    figures = {"chain": chain, "unfused": unfused, "fanout": fanout, "intermediate": data}
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
