"""A/B: daglite's own figures at two commits, run alternately on this machine.

Usage::

    python benchmarks/ab.py OLD_REF [NEW_REF] [--rounds 5] [--cases fanout:inline,...]

Each ref is checked out into a temporary git worktree; every round runs each
case once on the old code, then once on the new (A B A B ...), each run in a
fresh interpreter (``_case.py``) with ``PYTHONPATH`` pointing at that ref's
``src``. The benchmark harness itself (``workloads.py``) is always the one of
this checkout, so both sides run the same workload code. ``NEW_REF`` defaults
to the work tree as it is (uncommitted changes included).

Prints, per case, the median of each side and the change in percent. This is
how "no worse than before" is judged for engine changes: both columns from one
sitting, interleaved, so the machine's drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (workload, mode, size): daglite's per-task figures of benchmarks/RESULTS.md.
DEFAULT_CASES = (
    ("fanout", "inline", 10_000),
    ("fanout", "threads", 10_000),
    ("fanout", "processes", 10_000),
    ("chain", "inline", 1_000),
    ("chain", "threads", 1_000),
    ("chain", "processes", 1_000),
    ("mapped", "processes", 100_000),
    ("build", "calls", 100_000),
)
PARAMS = {"events": 200}


def _worktree(ref: str, where: str) -> str:
    path = os.path.join(where, ref.replace("/", "_"))
    subprocess.run(
        ["git", "-C", ROOT, "worktree", "add", "--detach", "--force", path, ref],
        check=True,
        capture_output=True,
    )
    return path


def _run(src: str, workload: str, mode: str, size: int) -> float:
    env = {**os.environ, "PYTHONPATH": src}
    param = PARAMS.get(workload, 0)
    cmd = [sys.executable, os.path.join(HERE, "_case.py"), workload, "daglite", mode]
    out = subprocess.run(
        [*cmd, str(size), str(param)], env=env, capture_output=True, text=True, timeout=600
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{workload}/{mode} printed no result:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    if not result.get("verified"):
        raise RuntimeError(f"{workload}/{mode} failed: {result}")
    return float(result["measured"]) / size * 1e6


def _parse_cases(text: str | None) -> list[tuple[str, str, int]]:
    if not text:
        return list(DEFAULT_CASES)
    sizes = {(w, m): n for w, m, n in DEFAULT_CASES}
    cases = []
    for item in text.split(","):
        workload, mode = item.split(":")
        cases.append((workload, mode, sizes.get((workload, mode), 10_000)))
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="git ref of the code before")
    parser.add_argument("new", nargs="?", help="git ref of the code after (default: work tree)")
    parser.add_argument("--rounds", type=int, default=5, help="A B pairs per case (default 5)")
    parser.add_argument("--cases", help="workload:mode,... (default: the per-task figures)")
    args = parser.parse_args(argv)
    cases = _parse_cases(args.cases)
    with tempfile.TemporaryDirectory(prefix="daglite-ab-") as where:
        old_src = os.path.join(_worktree(args.old, where), "src")
        new_src = (
            os.path.join(_worktree(args.new, where), "src")
            if args.new
            else os.path.join(ROOT, "src")
        )
        try:
            rows = []
            for workload, mode, size in cases:
                a: list[float] = []
                b: list[float] = []
                for _ in range(args.rounds):
                    a.append(_run(old_src, workload, mode, size))
                    b.append(_run(new_src, workload, mode, size))
                rows.append((workload, mode, statistics.median(a), statistics.median(b)))
                old_m, new_m = rows[-1][2], rows[-1][3]
                print(
                    f"{workload:8} {mode:10} old {old_m:9.2f} µs  new {new_m:9.2f} µs  "
                    f"{(new_m / old_m - 1) * 100:+6.1f}%",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
