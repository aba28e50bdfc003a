"""The benchmark scripts must keep running and keep verifying their results.

These tests never judge speed: they run ``benchmarks/run.py --quick`` on tiny
sizes and ``benchmarks/soak.py`` on a few calls, and check that every case
computed the right answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# "sklearn" is left out: scikit-learn is a benchmark dependency, not a test one.
WORKLOADS = {"fanout", "mapped", "chain", "cpu", "events", "build", "data", "matmul"}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_quick_run_verifies_every_case(tmp_path, workload):
    # One workload per test keeps each run short and says which one broke.
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--quick",
            "--scale",
            "0.01",
            "--repeats",
            "1",
            "--only",
            workload,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        cwd=ROOT,
    )
    assert out.exists(), proc.stderr[-4000:]
    report = json.loads(out.read_text())
    failed = [
        (c["workload"], c["system"], c["mode"], c.get("error"), c.get("stderr", "")[-1500:])
        for c in report["cases"]
        if c["status"] == "FAILED"
    ]
    assert failed == [], proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert {c["workload"] for c in report["cases"]} == {workload}
    ran = [c for c in report["cases"] if c["status"] == "ok"]
    assert ran and all(c["verified"] for c in ran)
    # daglite ran and was verified on every local mode of the workload.
    daglite_modes = {c["mode"] for c in ran if c["system"] == "daglite"}
    local_modes = {c["mode"] for c in report["cases"] if c["mode"] != "dask"}
    assert local_modes <= daglite_modes
    assert any(c["system"] != "daglite" for c in ran)  # and at least one peer
    assert "| workload | mode |" in proc.stdout
    assert [r["workload"] for r in report["rows"]] and report["targets"]


@pytest.mark.timeout(300)
def test_soak_stays_flat_on_a_few_calls():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "soak.py"), "--calls", "20"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "summary: inline=FLAT, threads=FLAT, processes=FLAT" in proc.stdout


@pytest.mark.timeout(300)
def test_trace_cost_runs_every_variant():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "trace_cost.py"), "--rounds", "2", "--size", "200"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    for variant in ("plain", "noop-hook", "trace", "trace-noevents"):
        assert any(line.startswith(f"{variant} ") for line in lines), proc.stdout
    assert "target <= 1.3x" in proc.stdout


def test_cache_benchmark_runs_and_checks_its_results(tmp_path):
    # benchmarks/cache_keys.py asserts every cached rerun's result; sizes tiny here.
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "cache_keys.py"),
            "--rounds",
            "1",
            "--mb",
            "1",
            "--size",
            "50",
            "--modes",
            "inline,threads",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "daglite key" in proc.stdout
    assert "| inline |" in proc.stdout and "| threads |" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_vs_runs_every_system():
    pytest.importorskip("ray")
    pytest.importorskip("distributed")
    env = {k: v for k, v in os.environ.items() if k != "DAGLITE_RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "ray_vs.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert set(report["runs"]) == {"daglite-ray", "ray", "daglite-dask", "dask"}
    assert "| chain |" in proc.stdout and "| Dask |" in proc.stdout


@pytest.mark.timeout(300)
def test_nested_benchmark_runs_and_verifies() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "nested.py"), "--rounds", "1", "--work", "1000"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "nested / flat = " in proc.stdout
