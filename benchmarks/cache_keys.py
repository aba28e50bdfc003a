"""What the cache costs (issue 16): keys of large inputs, and a fully cached rerun.

Usage::

    python benchmarks/cache_keys.py                 # both parts, 5 rounds
    python benchmarks/cache_keys.py --rounds 9 --mb 100 --size 10000
    python benchmarks/cache_keys.py --profile       # cProfile of one cached rerun

Part 1, key of a task with a 100 MB numpy input: the time ``CachePlugin``
takes to compute the entry key (the inputs' digest; the code digest is made
once per task and timed apart) against hashing the array's bytes once with the
same function (``hashlib.sha256``). Target: <= 1.5x. Beside it, joblib's
``joblib.hash`` (md5, what ``joblib.Memory`` keys on) against ``hashlib.md5``
of the same bytes, when joblib is installed.

Part 2, the ``fanout`` workload (10,000 ``inc(i)`` + one ``total`` join) rerun
with every node served from the cache: µs per task, on the inline, threads
and processes backends. Target: <= 50 µs per task. Beside it: the same DAG
without a cache, and ``joblib.Memory``'s cached call of ``inc`` 10,000 times.

Each figure is the median of ``--rounds`` runs in this warm process, rounds
interleaved (A B A B) so a noisy neighbour hits every variant alike.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from daglite import evaluate, task  # noqa: E402
from daglite.backends import InlineBackend, ProcessBackend, ThreadBackend  # noqa: E402
from daglite.plugins.builtin.cache import (  # noqa: E402
    CachePolicy,
    _code_digest,
    _CodeMemo,
    _entry,
    _TaskKey,
)

# Keep the secret key and entries out of the user's own directories.
_SCRATCH = tempfile.mkdtemp(prefix="daglite-cache-bench-")
os.environ.setdefault("DAGLITE_CACHE_KEY_FILE", os.path.join(_SCRATCH, "key"))


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


inc_t = task(inc, name="inc")
total_t = task(total, name="total")


@task
def summarize(data: Any, label: str) -> float:
    return float(data.mean())


def _clock(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rounds(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each variant, run interleaved ``rounds`` times."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(_clock(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}


# -- part 1: keys -------------------------------------------------------------------------


def bench_keys(mb: int, rounds: int) -> None:
    data = np.random.default_rng(0).random(mb * 1_000_000 // 8)
    view = memoryview(data).cast("B")
    memo = _CodeMemo()
    t0 = time.perf_counter()
    code = _code_digest(summarize.func, memo)
    code_s = time.perf_counter() - t0
    task_key = _TaskKey(summarize, code, CachePolicy())
    inputs = {"data": data, "label": "train"}
    variants: dict[str, Callable[[], Any]] = {
        "daglite key": lambda: _entry(task_key, "summarize", inputs, memo),
        "sha256(bytes)": lambda: hashlib.sha256(view).digest(),
    }
    try:
        import joblib

        variants["joblib.hash"] = lambda: joblib.hash(data)
        variants["md5(bytes)"] = lambda: hashlib.md5(view).digest()
    except ImportError:
        pass
    med = _rounds(variants, rounds)
    print(f"\n## Key of a task with a {mb} MB numpy input (median of {rounds})\n")
    print("| what | time | ratio |")
    print("|---|---|---|")
    ratio = med["daglite key"] / med["sha256(bytes)"]
    print(
        f"| daglite key (inputs digest, sha256) | {med['daglite key'] * 1e3:.1f} ms | "
        f"{ratio:.2f}x sha256 {'PASS' if ratio <= 1.5 else 'FAIL'} (target <= 1.5x) |"
    )
    print(f"| sha256 of the array's bytes | {med['sha256(bytes)'] * 1e3:.1f} ms | 1.00x |")
    if "joblib.hash" in med:
        jr = med["joblib.hash"] / med["md5(bytes)"]
        print(f"| joblib.hash (md5) | {med['joblib.hash'] * 1e3:.1f} ms | {jr:.2f}x md5 |")
        print(f"| md5 of the array's bytes | {med['md5(bytes)'] * 1e3:.1f} ms | 1.00x |")
    print(f"| daglite code digest of the task, once per task | {code_s * 1e3:.2f} ms | |")


# -- part 2: fully cached rerun -----------------------------------------------------------------


def _backend(mode: str) -> Any:
    if mode == "inline":
        return InlineBackend()
    if mode == "threads":
        return ThreadBackend(max_workers=2)
    return ProcessBackend(max_workers=2)


def _joblib_rerun(size: int) -> Callable[[], Any] | None:
    try:
        import joblib
    except ImportError:
        return None
    memory = joblib.Memory(tempfile.mkdtemp(dir=_SCRATCH), verbose=0)
    cached_inc = memory.cache(inc)

    def run() -> int:
        return sum(cached_inc(i) for i in range(size))

    run()  # fill
    return run


def bench_rerun(size: int, rounds: int, modes: list[str]) -> None:
    dag = total_t([inc_t(i) for i in range(size)])
    expected = size * (size + 1) // 2
    print(f"\n## Fully cached rerun of the fan-out ({size:,} inc + 1 join; median of {rounds})\n")
    print("| backend | cached rerun | first run (fills) | no cache | ratio to no cache | target |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        with _backend(mode) as backend:
            location = tempfile.mkdtemp(dir=_SCRATCH)
            evaluate(inc_t.product(x=[0, 1]), backend=backend)  # warm the pool
            fill = _clock(lambda: evaluate(dag, backend=backend, cache=location))

            def cached() -> None:
                assert evaluate(dag, backend=backend, cache=location) == expected

            def plain() -> None:
                assert evaluate(dag, backend=backend) == expected

            med = _rounds({"cached": cached, "plain": plain}, rounds)
        per = med["cached"] / (size + 1) * 1e6
        plain_per = med["plain"] / (size + 1) * 1e6
        print(
            f"| {mode} | {per:.1f} µs/task | {fill / (size + 1) * 1e6:.1f} µs/task | "
            f"{plain_per:.1f} µs/task | {med['cached'] / med['plain']:.2f}x | "
            f"{'PASS' if per <= 50 else 'FAIL'} (<= 50 µs) |"
        )
    joblib_run = _joblib_rerun(size)
    if joblib_run is not None:
        t = _rounds({"joblib": joblib_run}, rounds)["joblib"]
        print(
            f"| joblib.Memory, {size:,} cached calls of inc (peer) | "
            f"{t / size * 1e6:.1f} µs/call | | | | |"
        )


def profile_rerun(size: int) -> None:
    dag = total_t([inc_t(i) for i in range(size)])
    location = tempfile.mkdtemp(dir=_SCRATCH)
    evaluate(dag, cache=location)
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate(dag, cache=location)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=100, help="size of the numpy input in MB")
    parser.add_argument("--size", type=int, default=10_000, help="tasks in the fan-out")
    parser.add_argument("--modes", default="inline,threads,processes")
    parser.add_argument("--profile", action="store_true", help="profile one cached rerun")
    args = parser.parse_args()
    if args.profile:
        profile_rerun(args.size)
        return
    bench_keys(args.mb, args.rounds)
    bench_rerun(args.size, args.rounds, args.modes.split(","))


if __name__ == "__main__":
    main()
