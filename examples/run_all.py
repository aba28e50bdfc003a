"""Run every example pipeline on the processes backend and print a short summary.

Usage (from the repository root)::

    python examples/run_all.py            # full sizes
    python examples/run_all.py --small    # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daglite import evaluate
from examples import etl, primes

FULL = {"primes": {"limit": 1_000_000, "chunks": 16}, "etl": {"rows": 200_000, "shards": 8}}
SMALL = {"primes": {"limit": 20_000, "chunks": 4}, "etl": {"rows": 2_000, "shards": 4}}


def run_primes(limit: int, chunks: int, backend: str) -> str:
    """Count primes below ``limit`` and check the count against a sieve."""
    started = time.perf_counter()
    count = evaluate(primes.pipeline(limit, chunks), backend=backend, progress=True)
    seconds = time.perf_counter() - started
    expected = primes.count_primes_directly(limit)
    status = "ok" if count == expected else f"MISMATCH (expected {expected})"
    return f"primes: {count} primes below {limit:,} in {chunks} chunks, {seconds:.2f}s [{status}]"


def run_etl(rows: int, shards: int, backend: str) -> str:
    """Run the ETL pipeline with its report plugin and summarise the result."""
    report = etl.EtlReport(verbose=False)
    started = time.perf_counter()
    result = evaluate(etl.pipeline(rows, shards), backend=backend, plugins=[report], progress=True)
    seconds = time.perf_counter() - started
    consistent = report.good + report.rejected == result["rows"] == rows
    status = "ok" if consistent else "MISMATCH between events and result"
    return (
        f"etl: {result['rows']:,} rows ({result['rejected']:,} rejected) in {shards} shards, "
        f"revenue {result['revenue']:,.2f}, top product {result['top_product']}, "
        f"{seconds:.2f}s [{status}]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (for tests)")
    parser.add_argument("--backend", default="processes")
    options = parser.parse_args(argv)
    sizes = SMALL if options.small else FULL
    lines = [
        run_primes(**sizes["primes"], backend=options.backend),
        run_etl(**sizes["etl"], backend=options.backend),
    ]
    print("\n".join(lines))
    return 0 if all(line.endswith("[ok]") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
