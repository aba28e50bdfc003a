"""Time daglite against concurrent.futures, loky and Dask on the same workloads.

Usage::

    python benchmarks/run.py                 # full run (10-30 minutes on 2 cores)
    python benchmarks/run.py --quick         # smoke check: small sizes, 1 repeat
    python benchmarks/run.py --only chain --repeats 5 --json chain.json

Every case (workload x system x mode) runs in a fresh interpreter
(``benchmarks/_case.py``), once per repeat. Inside it, the pool or cluster is
started and a warm-up run completes first ("time to first result"); only the
section after that is measured. The table shows the median measured figure,
the ratio daglite / best peer, and the pass/fail of the performance targets.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads as wl  # noqa: E402

COLUMNS = {
    "daglite": "daglite",
    "cf": "concurrent.futures",
    "loky": "loky",
    "dask": "dask",
    "client": "dask client.submit",
    "pipe": "pickle+pipe",
}
# (unit shown, higher is better?)
UNITS = {
    "fanout": ("µs/task", False),
    "mapped": ("µs/task", False),
    "watched": ("µs/task", False),
    "chain": ("µs/hop", False),
    "cpu": ("speedup", True),
    "events": ("events/s", True),
    "build": ("µs/node", False),
    "data": ("MB/s", True),
    "sklearn": ("s", False),
    "matmul": ("s", False),
}
FULL_SIZES = {
    "fanout": 10_000,
    "mapped": 100_000,
    "watched": 1_000_000,
    "chain": 1_000,
    "cpu": wl.CPU_TASKS,
    "events": wl.EVENTS_TASKS,
    "build": 100_000,
    "data": 1,
    "sklearn": wl.SWEEP_SIZE,
    "matmul": wl.MATMUL_TASKS,
}
CPU_SECONDS = 0.25
EVENTS_PER_TASK = 200
DATA_BYTES = 50_000_000
# Stop repeating a case once its runs took this long in total (slow peers).
CASE_BUDGET = 150.0


# -- sizes ----------------------------------------------------------------------------


def _calibrate_spin(seconds: float) -> int:
    """Loop count of ``spin_base`` that takes about ``seconds`` here."""
    k = 100_000
    best = min(_time(lambda: wl.spin_base(k)) for _ in range(3))
    return max(1_000, int(k * seconds / best))


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sizes(scale: float) -> dict[str, tuple[int, int]]:
    """``{workload: (size, param)}`` for a scale factor (1.0: the published sizes)."""
    return {
        "fanout": (max(10, int(FULL_SIZES["fanout"] * scale)), 0),
        "mapped": (max(10, int(FULL_SIZES["mapped"] * scale)), 0),
        "watched": (max(10, int(FULL_SIZES["watched"] * scale)), 0),
        "chain": (max(5, int(FULL_SIZES["chain"] * scale)), 0),
        "cpu": (wl.CPU_TASKS, _calibrate_spin(CPU_SECONDS * min(1.0, scale))),
        "events": (
            max(4, int(wl.EVENTS_TASKS * min(1.0, scale))),
            max(2, int(EVENTS_PER_TASK * min(1.0, scale))),
        ),
        "build": (max(10, int(FULL_SIZES["build"] * scale)), 0),
        "data": (1, max(256 * 1024, int(DATA_BYTES * scale))),
        "sklearn": (max(300, int(FULL_SIZES["sklearn"] * scale)), wl.SWEEP_FEATURES),
        "matmul": (wl.MATMUL_TASKS, max(100, int(wl.MATMUL_N * min(1.0, scale)))),
    }


# -- running cases ----------------------------------------------------------------------


def _run_once(key: tuple[str, str, str], size: int, param: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONHASHSEED", "0")
    cmd = [sys.executable, os.path.join(HERE, "_case.py"), *key, str(size), str(param)]
    # A session of its own, so a timeout can stop the case and every process it started.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        _kill_group(proc.pid)  # leftovers of a case that exited (orphaned workers)
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            out: dict[str, Any] = json.loads(line[len("RESULT ") :])
            if "error" in out:
                out["stderr"] = stderr[-3000:]
            return out
    return {"error": f"exit code {proc.returncode}, no result", "stderr": stderr[-3000:]}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_case(
    key: tuple[str, str, str], size: int, param: int, repeats: int, timeout: float
) -> dict[str, Any]:
    """Run one case ``repeats`` times, each in a fresh interpreter; summarise."""
    workload, system, mode = key
    cap = wl.SIZE_CAPS.get((workload, system))
    note = ""
    if cap is not None and size > cap[0]:
        size, note = cap[0], cap[1]
    runs: list[dict[str, Any]] = []
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = _run_once(key, size, param, timeout)
        spent += time.perf_counter() - t0
        runs.append(out)
        if "measured" not in out or not out.get("verified") or spent > CASE_BUDGET:
            break
    case: dict[str, Any] = {
        "workload": workload,
        "system": system,
        "mode": mode,
        "api": wl.APIS[key],
        "size": size,
        "param": param,
        "note": note,
        "repeats": len(runs),
    }
    bad = [r for r in runs if "skipped" not in r and not r.get("verified")]
    if runs and "skipped" in runs[0]:
        case.update(status="skipped", note=runs[0]["skipped"])
    elif bad:
        first = bad[0]
        reason = first.get("error") or (
            f"wrong result {first.get('result')!r}, expected {first.get('expected')!r}"
        )
        case.update(status="FAILED", error=reason, stderr=first.get("stderr", ""))
    else:
        measured = [r["measured"] for r in runs]
        case.update(
            status="ok",
            verified=True,
            measured=measured,
            median=statistics.median(measured),
            startup=statistics.median(r["startup"] for r in runs),
            extra=runs[-1].get("extra", {}),
            result=runs[-1].get("result"),
        )
    return case


# -- metrics ------------------------------------------------------------------------------


def _per_unit(case: dict[str, Any]) -> float:
    return float(case["median"]) / case["size"] * 1e6


def metric(case: dict[str, Any], cases: dict[tuple[str, str, str], dict[str, Any]]) -> float | None:
    """The figure the table shows for a case (see ``UNITS``), or None."""
    if case.get("status") != "ok":
        return None
    workload = case["workload"]
    if workload in ("fanout", "mapped", "watched", "chain", "build"):
        return _per_unit(case)
    if workload == "events":
        return case["size"] * case["param"] / case["median"]
    if workload == "data":
        return wl.DATA_HOPS * case["param"] / 1e6 / case["median"]
    if workload in ("sklearn", "matmul"):
        return float(case["median"])
    if workload == "cpu":
        ref = cases.get(("cpu", *_inline_reference(case["system"], case["mode"])))
        if ref is None or ref.get("status") != "ok":
            return None
        return float(ref["median"]) / case["median"]
    raise ValueError(workload)


def _inline_reference(system: str, mode: str) -> tuple[str, str]:
    """Which inline run a system's CPU speedup is measured against."""
    if system == "daglite":
        return "daglite", "inline"
    if system == "dask":
        return "dask", "inline"  # dask's synchronous scheduler
    return "cf", "inline"  # the plain Python loop


def _fmt(workload: str, value: float | None, case: dict[str, Any] | None) -> str:
    if case is None:
        return "—"
    status = case.get("status")
    if status == "FAILED":
        return "**FAILED**"
    if status == "skipped":
        return "skip"
    if value is None:
        return "?"
    if workload == "cpu":
        text = f"{value:.2f}x ({case['median']:.2f} s)"
    elif workload == "events":
        text = f"{value:,.0f}"
    elif workload == "data":
        text = f"{value:,.0f}"
    elif workload == "build":
        text = f"{value:.2f} µs, {case['extra'].get('bytes_per_node', 0):.0f} B"
    elif workload in ("sklearn", "matmul"):
        text = f"{value:.2f}"
    else:
        text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if case.get("note") and case["system"] != "daglite":
        text += "*"
    return text


def build_rows(cases: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, mode): each system's figure, best peer, ratio."""
    rows = []
    for workload in wl.WORKLOADS:
        for mode in wl.MODES[workload]:
            here = {s: cases.get((workload, s, mode)) for s in wl.SYSTEMS}
            if not any(here.values()):
                continue
            values = {s: metric(c, cases) if c else None for s, c in here.items()}
            higher = UNITS[workload][1]
            peers = {s: v for s, v in values.items() if s != "daglite" and v is not None}
            best_peer = None
            if peers:
                pick = max if higher else min
                best_peer = pick(peers, key=lambda s: peers[s])
            mine = values.get("daglite")
            ratio = None
            if mine is not None and best_peer is not None and peers[best_peer]:
                ratio = mine / peers[best_peer]
            rows.append(
                {
                    "workload": workload,
                    "mode": mode,
                    "unit": UNITS[workload][0],
                    "higher_is_better": higher,
                    "values": values,
                    "startup": {s: c.get("startup") if c else None for s, c in here.items()},
                    "best_peer": best_peer,
                    "ratio": ratio,
                }
            )
    return rows


# -- targets ---------------------------------------------------------------------------------


def _value(cases: dict[tuple[str, str, str], dict[str, Any]], *key: str) -> float | None:
    case = cases.get(key)  # type: ignore[arg-type]
    return metric(case, cases) if case else None


def targets(cases: dict[tuple[str, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The backend issue's performance targets, each judged from this run."""
    v = lambda *k: _value(cases, *k)  # noqa: E731
    out: list[dict[str, Any]] = []

    def ratio_target(name: str, mine: Any, peer: Any, limit: float, strict: bool = False) -> None:
        if mine is None or peer is None:
            out.append({"target": name, "figure": "n/a", "pass": None})
            return
        r = mine / peer
        ok = r < limit if strict else r <= limit
        out.append({"target": name, "figure": f"{mine:.2f} vs {peer:.2f} = {r:.2f}x", "pass": ok})

    def abs_target(name: str, value: Any, ok: Any, text: str) -> None:
        if value is None:
            out.append({"target": name, "figure": "n/a", "pass": None})
        else:
            out.append({"target": name, "figure": text, "pass": bool(ok)})

    inline = v("fanout", "daglite", "inline")
    abs_target(
        "fan-out inline <= 10 µs/task (no plugins)",
        inline,
        inline is not None and inline <= 10,
        f"{inline or 0:.2f} µs",
    )
    ratio_target(
        "fan-out threads <= 2x ThreadPoolExecutor.submit",
        v("fanout", "daglite", "threads"),
        v("fanout", "cf", "threads"),
        2.0,
    )
    ratio_target(
        "fan-out processes <= 1x ProcessPoolExecutor.submit",
        v("fanout", "daglite", "processes"),
        v("fanout", "cf", "processes"),
        1.0,
    )
    ratio_target(
        "chain threads faster per hop than dask threaded",
        v("chain", "daglite", "threads"),
        v("chain", "dask", "threads"),
        1.0,
        strict=True,
    )
    ratio_target(
        "chain processes <= 1.2x ProcessPoolExecutor round trip",
        v("chain", "daglite", "processes"),
        v("chain", "cf", "processes"),
        1.2,
    )
    ratio_target(
        "mapped processes <= 1x ProcessPoolExecutor.map(chunksize)",
        v("mapped", "daglite", "processes"),
        v("mapped", "cf", "processes"),
        1.0,
    )
    watched = v("watched", "daglite", "processes")
    wcase = cases.get(("watched", "daglite", "processes"), {})
    wbytes = wcase.get("extra", {}).get("peak_bytes_per_element") if watched is not None else None
    abs_target(
        "watched mapped processes <= 3 µs and <= 250 B per element",
        watched,
        watched is not None and wbytes is not None and watched <= 3 and wbytes <= 250,
        f"{watched or 0:.2f} µs, {wbytes or 0:.0f} B",
    )
    speedup = v("cpu", "daglite", "processes")
    abs_target(
        "CPU-bound processes speedup >= 1.9x",
        speedup,
        speedup is not None and speedup >= 1.9,
        f"{speedup or 0:.2f}x",
    )
    rate = v("events", "daglite", "processes")
    ev = cases.get(("events", "daglite", "processes"), {})
    got = (ev.get("result") or [None, None])[1] if ev.get("status") == "ok" else None
    abs_target(
        "events processes >= 200,000/s, none lost",
        rate,
        rate is not None and rate >= 200_000 and got == ev["size"] * ev["param"],
        f"{rate or 0:,.0f}/s, {got} of {ev.get('size', 0) * ev.get('param', 0)} received",
    )
    for mode in ("calls", "product"):
        case = cases.get(("build", "daglite", mode), {})
        us = v("build", "daglite", mode)
        per = case.get("extra", {}).get("bytes_per_node") if case.get("status") == "ok" else None
        abs_target(
            f"build 100,000 nodes ({mode}) <= 3 µs and <= 500 B per node",
            us,
            us is not None and per is not None and us <= 3 and per <= 500,
            f"{us or 0:.2f} µs, {per or 0:.0f} B",
        )
    sweep = cases.get(("sklearn", "daglite", "processes"), {})
    grid = cases.get(("sklearn", "loky", "processes"), {})
    same = sweep.get("status") == grid.get("status") == "ok" and sweep["result"] == grid["result"]
    ratio_target(
        "sklearn sweep processes <= 1.1x GridSearchCV(n_jobs=2)"
        + ("" if same or not sweep else ", same best params: NO"),
        v("sklearn", "daglite", "processes") if same or not sweep else None,
        v("sklearn", "loky", "processes"),
        1.1,
    )
    ratio_target(
        "8 matmuls 1500x1500 processes <= 1.05x joblib on loky",
        v("matmul", "daglite", "processes"),
        v("matmul", "loky", "processes"),
        1.05,
    )
    ratio_target(
        "per-task overhead on dask <= 1.3x client.submit",
        v("fanout", "daglite", "dask"),
        v("fanout", "client", "dask"),
        1.3,
    )
    return out


# -- output ------------------------------------------------------------------------------------


def markdown(
    rows: list[dict[str, Any]],
    cases: dict[tuple[str, str, str], dict[str, Any]],
    goals: list[dict[str, Any]],
) -> str:
    used = [s for s in wl.SYSTEMS if any(r["values"].get(s) is not None for r in rows)]
    used = [
        s
        for s in wl.SYSTEMS
        if s in used or any(cases.get((r["workload"], s, r["mode"])) for r in rows)
    ]
    head = ["workload", "mode", "unit", *(COLUMNS[s] for s in used), "daglite/best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["workload"], r["mode"], r["unit"] + (" ↑" if r["higher_is_better"] else " ↓")]
        for s in used:
            cells.append(
                _fmt(r["workload"], r["values"].get(s), cases.get((r["workload"], s, r["mode"])))
            )
        ratio = r["ratio"]
        cells.append("—" if ratio is None else f"{ratio:.2f} (vs {COLUMNS[r['best_peer']]})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "↓ lower is better, ↑ higher is better. * = see notes.", ""]
    lines += ["Time to first result (pool start + warm-up), seconds, median:", ""]
    head2 = ["workload", "mode", *(COLUMNS[s] for s in used)]
    lines += ["| " + " | ".join(head2) + " |", "|" + "---|" * len(head2)]
    for r in rows:
        cells = [r["workload"], r["mode"]]
        for s in used:
            t = r["startup"].get(s)
            cells.append("—" if t is None else f"{t:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", "", "| target | figure | result |", "|---|---|---|"]
    for g in goals:
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}[g["pass"]]
        lines.append(f"| {g['target']} | {g['figure']} | {verdict} |")
    notes = [c for c in cases.values() if c.get("note") or c.get("status") == "FAILED"]
    if notes:
        lines += ["", "Notes:", ""]
        for c in notes:
            what = c.get("error") if c.get("status") == "FAILED" else c["note"]
            lines.append(f"- {c['workload']}/{c['mode']}/{COLUMNS[c['system']]}: {what}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Facts about this machine and the package versions measured."""
    import psutil

    versions = {}
    for dist in (
        "daglite",
        "dask",
        "distributed",
        "loky",
        "numpy",
        "cloudpickle",
        "pluggy",
        "scikit-learn",
        "threadpoolctl",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(psutil.Process().cpu_affinity() or []),
        "load_average": os.getloadavg(),
        "workers": wl.WORKERS,
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (smoke check)")
    parser.add_argument(
        "--only", action="append", choices=wl.WORKLOADS, help="run only this workload (repeatable)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per case (default 3, quick 1)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="size factor (default 1, quick 0.02)"
    )
    parser.add_argument(
        "--json", dest="json_path", default=None, help="also write the results as JSON here"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per case run (default 600, quick 120)"
    )
    args = parser.parse_args(argv)
    scale = args.scale if args.scale is not None else (0.02 if args.quick else 1.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    timeout = args.timeout if args.timeout is not None else (120.0 if args.quick else 600.0)
    chosen = args.only or list(wl.WORKLOADS)
    plan = sizes(scale)
    info = machine()
    info.update(scale=scale, repeats=repeats, quick=args.quick, sizes=plan)
    print(
        f"daglite benchmarks: scale={scale} repeats={repeats} workers={wl.WORKERS} "
        f"python={info['python']} cpus={info['cpus']} load={info['load_average'][0]:.2f}",
        file=sys.stderr,
    )
    cases: dict[tuple[str, str, str], dict[str, Any]] = {}
    t_start = time.perf_counter()
    for key in sorted(
        wl.CASES,
        key=lambda k: (
            wl.WORKLOADS.index(k[0]),
            wl.MODES[k[0]].index(k[2]),
            wl.SYSTEMS.index(k[1]),
        ),
    ):
        if key[0] not in chosen:
            continue
        size, param = plan[key[0]]
        t0 = time.perf_counter()
        case = run_case(key, size, param, repeats, timeout)
        cases[key] = case
        status = case["status"] if case["status"] != "ok" else f"{case['median']:.4f} s"
        print(
            f"  {'/'.join(key):32s} {status}  ({time.perf_counter() - t0:.1f} s)", file=sys.stderr
        )
    rows = build_rows(cases)
    goals = targets(cases)
    info["wall_seconds"] = time.perf_counter() - t_start
    print(markdown(rows, cases, goals))
    failed = [c for c in cases.values() if c["status"] == "FAILED"]
    report = {
        "meta": info,
        "cases": list(cases.values()),
        "rows": rows,
        "targets": goals,
        "failed": len(failed),
    }
    text = json.dumps(report, indent=2, default=str)
    if args.json_path:
        with open(args.json_path, "w") as f:
            f.write(text)
    else:
        print("\n```json\n" + text + "\n```")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
