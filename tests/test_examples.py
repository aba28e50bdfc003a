"""The example pipelines give the same answers as a direct computation, on every path users take."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daglite import evaluate
from daglite.cli import main

REPO = Path(__file__).resolve().parent.parent
# At collection time, before any worker pool starts, so worker processes (which
# copy sys.path when they start) can import ``examples`` too.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from examples import etl, primes  # noqa: E402

EXAMPLE_BACKENDS = ["inline", "processes"]


@pytest.mark.parametrize("backend", EXAMPLE_BACKENDS)
@pytest.mark.parametrize(("limit", "chunks"), [(30_000, 6), (1_000, 7), (2, 3)])
def test_primes_pipeline_matches_sieve(backend, limit, chunks):
    result = evaluate(primes.pipeline(limit, chunks), backend=backend)
    assert result == primes.count_primes_directly(limit)


def test_primes_known_counts():
    assert primes.count_primes_directly(100) == 25
    assert primes.count_primes_directly(1_000_000) == 78_498
    assert [n for n in range(30) if primes.is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def test_primes_split_range_covers_everything():
    ranges = primes.split_range.func(10, 4)
    assert ranges == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert primes.split_range.func(2, 5) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="chunks >= 1"):
        primes.split_range.func(10, 0)


@pytest.mark.parametrize("backend", EXAMPLE_BACKENDS)
def test_etl_pipeline_matches_direct_run(backend):
    report = etl.EtlReport(verbose=False)
    result = evaluate(etl.pipeline(3_000, 5, seed=7), backend=backend, plugins=[report])
    assert result == etl.run_directly(3_000, 5, seed=7)
    assert result["rows"] == 3_000
    assert 0 < result["rejected"] < 3_000 // 10
    # Events reported by the tasks reached the plugin in the caller.
    assert report.shards_seen == 5
    assert (report.good, report.rejected) == (3_000 - result["rejected"], result["rejected"])
    assert set(report.seconds) == {"plan_shards", "extract", "transform", "load"}


def test_etl_is_deterministic_and_seeded():
    assert etl.run_directly(500, 3, seed=1) == etl.run_directly(500, 3, seed=1)
    assert etl.run_directly(500, 3, seed=1) != etl.run_directly(500, 3, seed=2)


def test_etl_revenue_is_the_sum_of_clean_rows():
    result = etl.run_directly(400, 2, seed=3)
    rows = []
    for plan in etl.plan_shards.func(400, 2, 3):
        raw = etl.extract.func(plan)
        rows += [etl._clean(r) for r in __import__("csv").DictReader(raw.splitlines())]
    kept = [r for r in rows if r is not None]
    assert len(rows) - len(kept) == result["rejected"]
    assert result["revenue"] == pytest.approx(sum(r["revenue"] for r in kept), abs=0.05)


def test_etl_report_summary_mentions_counts():
    report = etl.EtlReport(verbose=False)
    evaluate(etl.pipeline(200, 2), plugins=[report])
    text = report.summary(1.5)
    assert "2 shards" in text
    assert "wall time" in text


def test_cli_runs_the_etl_example(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(
        ["run", "examples.etl:pipeline", "--backend", "processes", "--progress"]
        + ["-p", "rows=1000", "-p", "shards=3", "--plugin", "examples.etl:EtlReport"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert eval(captured.out) == etl.run_directly(1000, 3)
    assert captured.err.startswith("etl: 3 shards, ")


def test_cli_runs_the_primes_example(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = main(["run", "examples.primes:pipeline", "-p", "limit=5000", "-p", "chunks=3"])
    assert (code, capsys.readouterr().out) == (0, "669\n")


def _run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the script must find ``examples`` on its own
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_run_all_small(tmp_path):
    done = _run_script(str(REPO / "examples" / "run_all.py"), "--small", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("primes: 2262 primes below 20,000")
    assert lines[1].startswith("etl: 2,000 rows")
    assert all(line.endswith("[ok]") for line in lines)
    assert done.stderr == ""  # not a terminal: no progress bar


def test_example_scripts_run_standalone(tmp_path):
    done = _run_script(
        str(REPO / "examples" / "primes.py"),
        *("--limit", "3000", "--chunks", "3", "--backends", "inline,processes"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "inline: 430 primes below 3,000" in done.stdout
    assert "processes: 430 primes below 3,000" in done.stdout
    done = _run_script(
        str(REPO / "examples" / "etl.py"), "--rows", "300", "--backend", "threads", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "rows: 300" in done.stdout
    assert "etl: 8 shards" in done.stderr
