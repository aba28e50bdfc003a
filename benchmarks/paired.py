"""The native-thread workloads (``sklearn``, ``matmul``) timed in interleaved pairs.

Usage::

    python benchmarks/paired.py [--pairs 16]

``run.py`` times each case in its own interpreter, one case after the other,
so on a machine shared with other work the load can change between daglite's
runs and its peer's. Here one warm daglite ``ProcessBackend`` and one warm peer
(GridSearchCV / joblib on loky) live side by side and take turns, alternating
which goes first, and every pair must agree on the result. Printed: each
side's median and the median of the per-pair ratios daglite / peer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl  # noqa: E402

from daglite import evaluate  # noqa: E402
from daglite.backends import ProcessBackend  # noqa: E402


def _clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def _pairs(mine: Callable[[], Any], peer: Callable[[], Any], n: int) -> list[tuple[float, float]]:
    """``n`` (daglite seconds, peer seconds); the first to run alternates."""
    out = []
    for k in range(n):
        if k % 2 == 0:
            (a, x), (b, y) = _clock(mine), _clock(peer)
        else:
            (b, y), (a, x) = _clock(peer), _clock(mine)
        if x != y:
            raise SystemExit(f"daglite computed {x!r}, the peer {y!r}")
        out.append((a, b))
    return out


def _report(name: str, pairs: list[tuple[float, float]]) -> None:
    mine = statistics.median(a for a, _ in pairs)
    peer = statistics.median(b for _, b in pairs)
    ratio = statistics.median(a / b for a, b in pairs)
    n = len(pairs)
    print(f"{name}: daglite {mine:.3f} s, peer {peer:.3f} s, paired ratio {ratio:.3f} (n={n})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=16, help="pairs per workload")
    args = parser.parse_args(argv)
    import joblib

    X, y = wl._sweep_data(wl.SWEEP_SIZE, wl.SWEEP_FEATURES)
    params = wl._sweep_params()
    parallel = joblib.Parallel(n_jobs=wl.WORKERS)
    with ProcessBackend(max_workers=wl.WORKERS) as backend:
        warm = wl.warm_sklearn_t.product(i=list(range(2 * wl.WORKERS)))
        evaluate(warm, backend=backend)
        wl._sweep_search(wl.WORKERS).fit(*wl._sweep_data(90, 8))
        scores = wl.fit_fold_t.product(params=params, fold=list(range(wl.SWEEP_FOLDS)), X=X, y=y)
        sweep = wl.best_params_t(scores, params)
        _report(
            "sklearn (vs GridSearchCV(n_jobs=2))",
            _pairs(
                lambda: evaluate(sweep, backend=backend),
                lambda: dict(wl._sweep_search(wl.WORKERS).fit(X, y).best_params_),
                args.pairs,
            ),
        )
        products = wl.matmul_t.product(i=list(range(wl.MATMUL_TASKS)), n=wl.MATMUL_N)
        calls = [joblib.delayed(wl.matmul)(i, wl.MATMUL_N) for i in range(wl.MATMUL_TASKS)]
        _report(
            "matmul (vs joblib.Parallel(n_jobs=2) on loky)",
            _pairs(
                lambda: sum(evaluate(products, backend=backend)),
                lambda: sum(parallel(calls)),
                args.pairs,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
