"""Big data between processes (gh-14): daglite beside a memory copy and its peers.

Each case runs in a fresh interpreter (so one case's memory cannot hide in
another's) and prints its wall time and its peak memory increase: of the
caller, and of the whole process tree (private memory of every process plus
the machine's shared memory, ``Shmem`` in ``/proc/meminfo``: run it on a quiet
machine). Run::

    python benchmarks/bigdata.py            # every case, median of 3
    python benchmarks/bigdata.py --rounds 1 --only chain

It runs the daglite of the checkout it is in (that ``src`` goes first on
``PYTHONPATH``): for a before/after figure, run each checkout's own copy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

MB = 2**20

CASE = textwrap.dedent(
    """
    import json, os, sys, threading, time
    import numpy as np, psutil

    me = psutil.Process()

    def _shm_bytes():
        # Every shared-memory page of the machine (Linux): a segment counts
        # whether it is listed, unlinked but still mapped, or both. Sampling
        # each process's mappings instead missed unlinked ones (and slowed
        # the workers it read). Run on a quiet machine.
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _private(proc):
        info = proc.memory_info()
        return info.rss - info.shared

    def tree_memory():
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += _private(proc)
            except psutil.Error:
                pass
        return total + _shm_bytes()

    class Peak:
        def __enter__(self):
            self.caller0, self.tree0 = me.memory_info().rss, tree_memory()
            self.caller, self.tree = self.caller0, self.tree0
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._watch, daemon=True)
            self.thread.start()
            return self
        def _watch(self):
            while not self.stop.wait(0.01):
                self.caller = max(self.caller, me.memory_info().rss)
                self.tree = max(self.tree, tree_memory())
        def __exit__(self, *exc):
            self.stop.set(); self.thread.join()

    def run(fn, warm):
        warm()
        with Peak() as peak:
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
        print(json.dumps({"s": elapsed, "caller": peak.caller - peak.caller0,
                          "tree": peak.tree - peak.tree0}))
    """
)

# A 400 MB array in the caller, mapped as 8 chunks, joined: each peer defines
# ``go(data)``; the first call in the process (warmed up on a tiny array), and
# the same call a second time (warm: reused segments, pools).
_CHUNK_PEERS = {
    "daglite": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def part(chunk) -> float: return float(chunk.sum())
        @task
        def join(parts: list) -> float: return sum(parts)
        pool = ProcessBackend(max_workers=2)
        go = lambda d: evaluate(join(parts=part.product(chunk=np.split(d, 8))), backend=pool)
    """,
    "joblib": """
        from joblib import Parallel, delayed
        def part(chunk): return float(chunk.sum())
        par = Parallel(n_jobs=2, max_nbytes="1M")
        go = lambda d: sum(par(delayed(part)(c) for c in np.split(d, 8)))
    """,
    "futures": """
        from concurrent.futures import ProcessPoolExecutor
        def part(chunk): return float(chunk.sum())
        pool = ProcessPoolExecutor(2)
        go = lambda d: sum(pool.map(part, np.split(d, 8)))
    """,
    # The floor of a copying design: concurrent.futures by hand, over eight
    # shared-memory segments made, filled and mapped by every worker beforehand
    # (outside the timing): each call copies the chunks in and submits.
    "shm": """
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import shared_memory
        K, SIZE = 8, 400 * 2**20 // 8
        views = {}
        def attach(names):
            for i, name in enumerate(names):
                seg = shared_memory.SharedMemory(name)
                views[i] = (seg, np.ndarray(SIZE // K, buffer=seg.buf))
                views[i][1].sum()
        def part(i, n): return float(views[i][1][:n].sum())
        segs = [shared_memory.SharedMemory(create=True, size=SIZE) for _ in range(K)]
        mine = [np.ndarray(SIZE // K, buffer=s.buf) for s in segs]
        for m in mine: m[:] = 0
        pool = ProcessPoolExecutor(2, initializer=attach, initargs=([s.name for s in segs],))
        def go(d):
            futures = []
            for i, chunk in enumerate(np.split(d, K)):
                np.copyto(mine[i][: len(chunk)], chunk)
                futures.append(pool.submit(part, i, len(chunk)))
            return sum(f.result() for f in futures)
    """,
}
_DATA = "data = np.random.rand(400 * 2**20 // 8)\n"
_CHUNK_RUNS = {
    "chunks": _DATA + "run(lambda: go(data), lambda: go(data[:80]))\n",
    "rerun": _DATA + "run(lambda: go(data), lambda: go(data))\n",
    # A long-lived caller's steady state: the fourth call (the pool's segments
    # and every worker's mappings of them warm).
    "steady": _DATA + "run(lambda: go(data), lambda: [go(data) for _ in range(3)])\n",
}

WORKLOADS = {
    # -- 200 MB made by a task, summed by the next ------------------------------------
    "pair:memcpy": """
        src = np.ones(200 * 2**20 // 8); dst = np.empty_like(src); dst[:] = 1
        run(lambda: np.copyto(dst, src), lambda: None)
    """,
    "pair:daglite": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def make(n: int): return np.ones(n)
        @task
        def total(a) -> float: return float(a.sum())
        pool = ProcessBackend(max_workers=2)
        run(lambda: evaluate(total(a=make(n=200 * 2**20 // 8)), backend=pool),
            lambda: evaluate(total(a=make(n=10)), backend=pool))
    """,
    "pair:futures": """
        from concurrent.futures import ProcessPoolExecutor
        def both(n): return float(np.ones(n).sum())
        pool = ProcessPoolExecutor(2)
        run(lambda: pool.submit(both, 200 * 2**20 // 8).result(),
            lambda: pool.submit(both, 10).result())
    """,
    # -- a 400 MB array in the caller, mapped as 8 chunks, joined (see _CHUNK_PEERS) --
    "chunks:memcpy": """
        src = np.random.rand(400 * 2**20 // 8); dst = np.empty_like(src); dst[:] = 1
        run(lambda: np.copyto(dst, src), lambda: None)
    """,
    **{
        f"{case}:{peer}": textwrap.dedent(setup) + run
        for case, run in _CHUNK_RUNS.items()
        for peer, setup in _CHUNK_PEERS.items()
    },
    # -- the same 400 MB made by a task, then mapped ----------------------------------
    "made:daglite": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def make(n: int) -> list: return np.split(np.full(n, 1.5), 8)
        @task
        def part(chunk) -> float: return float(chunk.sum())
        @task
        def join(parts: list) -> float: return sum(parts)
        pool = ProcessBackend(max_workers=2)
        dag = lambda n: join(parts=part.product(chunk=make(n=n)))
        run(lambda: evaluate(dag(400 * 2**20 // 8), backend=pool),
            lambda: evaluate(dag(80), backend=pool))
    """,
    # The floor of any design: making, splitting and summing in one worker (no
    # parallelism, nothing moves but the sum).
    "made:futures": """
        from concurrent.futures import ProcessPoolExecutor
        def both(n): return sum(float(c.sum()) for c in np.split(np.full(n, 1.5), 8))
        pool = ProcessPoolExecutor(2)
        run(lambda: pool.submit(both, 400 * 2**20 // 8).result(),
            lambda: pool.submit(both, 80).result())
    """,
    # joblib: the array comes home pickled, then goes out memmapped.
    "made:joblib": """
        from joblib import Parallel, delayed
        def make(n): return np.split(np.full(n, 1.5), 8)
        def part(chunk): return float(chunk.sum())
        par = Parallel(n_jobs=2, max_nbytes="1M")
        go = lambda n: sum(par(delayed(part)(c) for c in par([delayed(make)(n)])[0]))
        run(lambda: go(400 * 2**20 // 8), lambda: go(80))
    """,
    # -- a chain of 10 x 100 MB, only the last result kept ----------------------------
    "chain:threads": """
        from daglite import task, evaluate
        @task
        def start(n: int): return np.ones(n)
        @task
        def step(a): return a + 1
        def dag(n):
            x = start(n=n)
            for _ in range(9): x = step(a=x)
            return x
        run(lambda: evaluate(dag(100 * 2**20 // 8), backend="threads"),
            lambda: evaluate(dag(10), backend="threads"))
    """,
    "chain:dask-threads": """
        import dask
        def start(n): return np.ones(n)
        def step(a): return a + 1
        def dag(n):
            x = dask.delayed(start)(n)
            for _ in range(9): x = dask.delayed(step)(x)
            return x
        run(lambda: dag(100 * 2**20 // 8).compute(scheduler="threads"),
            lambda: dag(10).compute(scheduler="threads"))
    """,
    "chain:processes": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def start(n: int): return np.ones(n)
        @task
        def step(a): return a + 1
        def dag(n):
            x = start(n=n)
            for _ in range(9): x = step(a=x)
            return x
        pool = ProcessBackend(max_workers=2)
        run(lambda: evaluate(dag(100 * 2**20 // 8), backend=pool).sum(),
            lambda: evaluate(dag(10), backend=pool))
    """,
    # -- 2 M-row pandas ETL in 8 shards: two mapped steps vs the same work as one ------
    "etl:map-chain": """
        import pandas as pd
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def load(i: int, rows: int):
            rng = np.random.default_rng(i)
            return pd.DataFrame({"k": rng.integers(0, 100, rows), "v": rng.random(rows)})
        @task
        def etl(frame):
            frame = frame[frame.v > 0.1]
            return frame.groupby("k").v.agg(["sum", "mean"])
        pool = ProcessBackend(max_workers=2)
        dag = lambda rows: load.product(i=range(8), rows=[rows]).map(etl)
        run(lambda: evaluate(dag(250_000), backend=pool), lambda: evaluate(dag(10), backend=pool))
    """,
    "etl:one-task": """
        import pandas as pd
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def both(i: int, rows: int):
            rng = np.random.default_rng(i)
            frame = pd.DataFrame({"k": rng.integers(0, 100, rows), "v": rng.random(rows)})
            frame = frame[frame.v > 0.1]
            return frame.groupby("k").v.agg(["sum", "mean"])
        pool = ProcessBackend(max_workers=2)
        dag = lambda rows: both.product(i=range(8), rows=[rows])
        run(lambda: evaluate(dag(250_000), backend=pool), lambda: evaluate(dag(10), backend=pool))
    """,
    # -- 40 shards of 8 MB, made then summed: a map over a fan-out, on the bulk path ---
    "wide:map-chain": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def load(i: int, n: int): return np.full(n, float(i))
        @task
        def summ(a) -> float: return float(a.sum())
        pool = ProcessBackend(max_workers=2)
        dag = lambda n: load.product(i=range(40), n=[n]).map(summ)
        run(lambda: evaluate(dag(2**20), backend=pool), lambda: evaluate(dag(10), backend=pool))
    """,
    "wide:one-task": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        @task
        def both(i: int, n: int) -> float: return float(np.full(n, float(i)).sum())
        pool = ProcessBackend(max_workers=2)
        dag = lambda n: both.product(i=range(40), n=[n])
        run(lambda: evaluate(dag(2**20), backend=pool), lambda: evaluate(dag(10), backend=pool))
    """,
    # -- the same 100 MB array taken by 16 calls (a parameter sweep) ------------------
    "sweep:daglite": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        X = np.random.rand(100 * 2**20 // 8)
        @task
        def score(k: int, X) -> float: return float(X[k::97].sum())
        pool = ProcessBackend(max_workers=2)
        run(lambda: evaluate(score.product(k=range(16), X=X), backend=pool),
            lambda: evaluate(score.product(k=range(16), X=X[:10]), backend=pool))
    """,
    "sweep:joblib": """
        from joblib import Parallel, delayed
        X = np.random.rand(100 * 2**20 // 8)
        def score(k, X): return float(X[k::97].sum())
        par = Parallel(n_jobs=2, max_nbytes="1M")
        run(lambda: par(delayed(score)(k, X) for k in range(16)),
            lambda: par(delayed(score)(k, X[:10]) for k in range(16)))
    """,
    "sweep:futures": """
        from concurrent.futures import ProcessPoolExecutor
        X = np.random.rand(100 * 2**20 // 8)
        def score(k, X): return float(X[k::97].sum())
        pool = ProcessPoolExecutor(2)
        run(lambda: [f.result() for f in [pool.submit(score, k, X) for k in range(16)]],
            lambda: [f.result() for f in [pool.submit(score, k, X[:10]) for k in range(16)]])
    """,
    # -- 1 GB in and out of one task --------------------------------------------------
    "gig:daglite": """
        from daglite import task, evaluate
        from daglite.backends import ProcessBackend
        data = np.ones(2**30 // 8)
        @task
        def double(a): a *= 2; return a
        pool = ProcessBackend(max_workers=2)
        run(lambda: evaluate(double(a=data), backend=pool).sum(),
            lambda: evaluate(double(a=data[:10]), backend=pool))
    """,
}


def _run_case(name: str) -> dict[str, float]:
    code = CASE + textwrap.dedent(WORKLOADS[name])
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    """Run the cases, print medians and ratios to the memory copy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="cases whose name starts with these (a,b)")
    args = parser.parse_args()
    names = [n for n in WORKLOADS if n.startswith(tuple(args.only.split(",")))]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(args.rounds):  # interleaved: noise hits every case alike
        for name in names:
            try:
                results[name].append(_run_case(name))
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{name}: skipped ({str(exc).splitlines()[-1]})", file=sys.stderr)
    floors = {"pair": "pair:memcpy", "made": "chunks:memcpy"}
    floors |= {c: "chunks:memcpy" for c in ("chunks", "rerun", "steady")}
    print(f"{'case':22} {'seconds':>8} {'x memcpy':>9} {'caller MB':>10} {'tree MB':>8}")
    for name in names:
        runs = results[name]
        if not runs:
            continue
        s = statistics.median(r["s"] for r in runs)
        caller = statistics.median(r["caller"] for r in runs) / MB
        tree = statistics.median(r["tree"] for r in runs) / MB
        floor = results.get(floors.get(name.split(":")[0], ""), [])
        ratio = f"{s / statistics.median(r['s'] for r in floor):9.1f}" if floor else " " * 9
        print(f"{name:22} {s:8.3f} {ratio} {caller:10.0f} {tree:8.0f}")


if __name__ == "__main__":
    main()
