"""Count the primes below a limit, in chunks fanned out over workers.

Pure-Python trial division holds the GIL, so the ``threads`` backend gives no
speedup here while ``processes`` scales with the cores you have. Run this file
to compare the backends::

    python examples/primes.py --limit 2000000 --chunks 16

or run the DAG with the CLI::

    daglite run examples.primes:pipeline --backend processes --progress -p limit=2000000
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import pairwise
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daglite import TaskFuture, evaluate, task


@task
def split_range(limit: int, chunks: int) -> list[tuple[int, int]]:
    """Cut [0, limit) into ``chunks`` half-open ranges of nearly equal size."""
    if limit < 0 or chunks < 1:
        raise ValueError(f"need limit >= 0 and chunks >= 1, got {limit=} {chunks=}")
    bounds = [limit * i // chunks for i in range(chunks + 1)]
    return [(lo, hi) for lo, hi in pairwise(bounds) if hi > lo]


def is_prime(n: int) -> bool:
    """Trial division by 2, 3 and numbers of the form 6k +- 1."""
    if n < 4:
        return n >= 2
    if n % 2 == 0 or n % 3 == 0:
        return False
    f = 5
    while f * f <= n:
        if n % f == 0 or n % (f + 2) == 0:
            return False
        f += 6
    return True


@task
def count_primes(bounds: tuple[int, int]) -> int:
    """How many primes lie in [lo, hi)."""
    lo, hi = bounds
    return sum(1 for n in range(lo, hi) if is_prime(n))


@task
def add_up(counts: list[int]) -> int:
    """Sum the per-chunk counts."""
    return sum(counts)


def pipeline(limit: int = 1_000_000, chunks: int = 16) -> TaskFuture[int]:
    """The DAG: split [0, limit) into chunks, count each chunk's primes, add them up."""
    return split_range(limit=limit, chunks=chunks).map(count_primes).join(add_up)


def count_primes_directly(limit: int) -> int:
    """The same answer without daglite (a sieve of Eratosthenes), for checking."""
    if limit < 3:
        return 0
    sieve = bytearray([1]) * limit
    sieve[0] = sieve[1] = 0
    for p in range(2, int((limit - 1) ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit, p)))
    return sum(sieve)


def _compare(limit: int, chunks: int, backends: list[str]) -> None:
    timings = {}
    for name in backends:
        evaluate(add_up(counts=[]), backend=name)  # start the pool outside the timing
        started = time.perf_counter()
        count = evaluate(pipeline(limit, chunks), backend=name, progress=True)
        timings[name] = time.perf_counter() - started
        print(f"{name:>9}: {count} primes below {limit:,} in {timings[name]:.2f}s")
    base = timings.get("inline")
    if base:
        for name, seconds in timings.items():
            print(f"{name:>9}: {base / seconds:.2f}x the speed of inline")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1_000_000)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument(
        "--backends", default="inline,threads,processes", help="comma-separated backend names"
    )
    options = parser.parse_args()
    _compare(options.limit, options.chunks, options.backends.split(","))
