"""The HTML run report (``ReportPlugin``, ``evaluate(report=)``, ``--report``), read as a file.

The page is parsed with the standard library's HTMLParser: every bar, node and
table row carries its figures as ``data-*`` attributes, so these tests check the
numbers without a browser (``test_report_browser.py`` renders it for real).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import textwrap
import threading
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

from daglite import EvaluationError, evaluate, evaluate_async, task
from daglite.cli import main
from daglite.describe import GraphDescription, NodeDescription
from daglite.plugins.builtin import CachePlugin, ReportPlugin
from daglite.plugins.builtin._report_html import render_report
from daglite.plugins.builtin._report_svg import (
    AGGREGATED_CELLS,
    BUCKETS,
    DAG_NODE_LIMIT,
    DETAIL_LIMIT,
    MIN_BUCKETS,
)
from daglite.plugins.builtin._report_svg import seconds as _seconds
from daglite.plugins.builtin.timeline import Attempt, RunTimeline, TimelinePlugin

# -- reading the page ---------------------------------------------------------------------


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.found


def bars(html: str) -> list[dict[str, str]]:
    return [a for t, a in elements(html) if t == "rect" and "bar" in a.get("class", "").split()]


def nodes(html: str) -> dict[str, dict[str, str]]:
    return {
        a["data-key"]: a
        for t, a in elements(html)
        if t == "g" and a.get("class", "").startswith("node ")
    }


def rows(html: str, attribute: str) -> dict[str, dict[str, str]]:
    return {a[attribute]: a for t, a in elements(html) if t == "tr" and attribute in a}


def by_id(html: str, ident: str) -> dict[str, str]:
    (found,) = [a for _, a in elements(html) if a.get("id") == ident]
    return found


# -- a DAG with a retry, a failure and a skipped node ---------------------------------------


@task
def inc(x: int) -> int:
    return x + 1


@task(retries=1)
def flaky(xs: list[int], marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("tried")
        raise RuntimeError("first attempt fails")
    return sum(xs)


@task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@task
def after(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def mixed_dag(marker: Path):
    return after(inc.product(x=[1, 2, 3]).join(flaky, marker=str(marker)), boom(1))


def run_mixed(backend: str, tmp_path: Path) -> tuple[ReportPlugin, str]:
    plugin = ReportPlugin(tmp_path / "run.html")
    with pytest.raises(EvaluationError):
        evaluate(
            mixed_dag(tmp_path / "tried"), backend=backend, plugins=[plugin], on_error="continue"
        )
    return plugin, plugin.path.read_text(encoding="utf-8")


def test_every_attempt_is_one_bar_with_its_marks(backend, tmp_path):
    plugin, html = run_mixed(backend, tmp_path)
    run = plugin.last
    drawn = bars(html)
    assert sorted(b["data-key"] for b in drawn) == sorted(a.key for a in run.attempts)
    assert sorted(b["data-key"] for b in drawn) == [
        "boom",
        "flaky",
        "flaky",
        "inc[0]",
        "inc[1]",
        "inc[2]",
    ]
    state = {(b["data-key"], b["data-attempt"]): b["data-state"] for b in drawn}
    assert state == {
        ("inc[0]", "1"): "ok",
        ("inc[1]", "1"): "ok",
        ("inc[2]", "1"): "ok",
        ("flaky", "1"): "retried",
        ("flaky", "2"): "ok",
        ("boom", "1"): "failed",
    }
    for b in drawn:
        assert b["data-state"] in b["class"].split()
    assert {b["data-worker"] for b in drawn} == {a.worker for a in run.attempts}
    assert by_id(html, "timeline")["data-mode"] == "detail"
    assert "RuntimeError: first attempt fails" in html and "ValueError: boom 1" in html


def test_task_table_adds_up_the_attempts(backend, tmp_path):
    plugin, html = run_mixed(backend, tmp_path)
    table = rows(html, "data-task")
    assert set(table) == {"inc", "flaky", "boom"}  # 'after' never ran
    figures = {
        t: (r["data-calls"], r["data-failures"], r["data-retries"], r["data-cache-hits"])
        for t, r in table.items()
    }
    assert figures == {
        "inc": ("3", "0", "0", "0"),
        "flaky": ("2", "0", "1", "0"),
        "boom": ("1", "1", "0", "0"),
    }
    incs = [a.duration for a in plugin.last.attempts if a.task == "inc"]
    assert float(table["inc"]["data-total"]) == pytest.approx(sum(incs), abs=2e-6)
    assert float(table["inc"]["data-max"]) == pytest.approx(max(incs), abs=2e-6)
    assert float(table["inc"]["data-mean"]) == pytest.approx(sum(incs) / 3, abs=2e-6)


def test_dag_nodes_are_coloured_by_state(backend, tmp_path):
    _, html = run_mixed(backend, tmp_path)
    states = {k: n["data-state"] for k, n in nodes(html).items()}
    assert states == {"inc": "ok", "flaky": "ok", "boom": "failed", "after": "skipped"}
    assert nodes(html)["inc"]["data-kind"] == "map"
    assert "inc \u00d73" in html  # a mapped node is drawn once, with its element count


def test_totals_wall_time_busy_fraction_and_memory(backend, tmp_path):
    plugin, html = run_mixed(backend, tmp_path)
    run = plugin.last
    assert float(by_id(html, "wall")["data-seconds"]) == pytest.approx(run.wall_time, abs=2e-6)
    assert by_id(html, "status")["class"] == "failed"
    assert by_id(html, "attempts")["data-count"] == "6"
    workers = rows(html, "data-worker")
    assert set(workers) == {a.worker for a in run.attempts}
    for name, row in workers.items():
        busy = sum(a.duration for a in run.attempts if a.worker == name)
        assert float(row["data-busy-fraction"]) == pytest.approx(busy / run.wall_time, abs=1e-5)
    assert plugin.peak_memory is not None and plugin.peak_memory > 0
    assert by_id(html, "peak-memory")["data-bytes"] == str(plugin.peak_memory)


def test_memory_sampler_stops_with_the_run(tmp_path):
    run_mixed("threads", tmp_path)
    sampler = [t for t in threading.enumerate() if t.name == "daglite-report-memory"]
    assert sampler == []


def test_only_the_sampler_thread_walks_the_process_tree(tmp_path, monkeypatch):
    from daglite.plugins.builtin import report as report_module

    walked: list[str] = []
    read: list[tuple[str, int]] = []
    walk, rss = report_module._process_tree, report_module._rss

    def spy_walk():
        walked.append(threading.current_thread().name)
        return walk()

    def spy_rss(procs):
        read.append((threading.current_thread().name, len(procs)))
        return rss(procs)

    monkeypatch.setattr(report_module, "_process_tree", spy_walk)
    monkeypatch.setattr(report_module, "_rss", spy_rss)
    plugin = ReportPlugin(tmp_path / "r.html")
    assert evaluate(total([inc(i) for i in range(3)]), backend="threads", plugins=[plugin]) == 6
    assert walked and set(walked) == {"daglite-report-memory"}
    caller = threading.current_thread().name
    assert read[-1][0] == caller and read[-1][1] >= 1  # the last sample: the tree last walked
    assert plugin.peak_memory is not None and plugin.peak_memory > 0


def test_page_makes_no_request(tmp_path):
    _, html = run_mixed("inline", tmp_path)
    assert re.search(r"\b(src|href)\s*=", html) is None
    assert "<link" not in html and "@import" not in html and "url(http" not in html
    assert set(re.findall(r"https?://[^\s\"']+", html)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in html


# -- evaluate(report=) and the command line ------------------------------------------------


@pytest.mark.parametrize("as_path", [str, Path])
def test_evaluate_report_writes_the_file(tmp_path, as_path):
    target = tmp_path / "r.html"
    assert evaluate(inc.product(x=[1, 2]).join(total), report=as_path(target)) == 5
    html = target.read_text(encoding="utf-8")
    assert by_id(html, "status")["class"] == "ok"
    assert {k: n["data-state"] for k, n in nodes(html).items()} == {"inc": "ok", "total": "ok"}
    assert len(bars(html)) == 3


def test_a_run_without_attempts_still_has_a_page(tmp_path):
    target = tmp_path / "r.html"
    assert evaluate(inc.product(x=[]), report=target) == []
    html = target.read_text(encoding="utf-8")
    assert bars(html) == [] and rows(html, "data-task") == {}
    assert {k: n["data-state"] for k, n in nodes(html).items()} == {"inc": "ok"}
    assert by_id(html, "attempts")["data-count"] == "0"


def test_evaluate_async_report_writes_the_file(tmp_path):
    target = tmp_path / "r.html"
    assert asyncio.run(evaluate_async(inc(1), backend="threads", report=target)) == 2
    assert [b["data-key"] for b in bars(target.read_text(encoding="utf-8"))] == ["inc"]


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (3, TypeError, r"report must be a file path \(str or os.PathLike\), got 3"),
        (b"r.html", TypeError, "report must be a file path"),
        ("", ValueError, "report must be a non-empty file path"),
        (".", ValueError, "report must name a file, but '.' is a directory"),
        ("missing/r.html", ValueError, "report: the directory of 'missing/r.html' does not exist"),
    ],
)
def test_evaluate_rejects_bad_report_values_before_running(
    tmp_path, monkeypatch, value, error, match
):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"

    @task
    def touch() -> None:
        marker.write_text("ran")

    with pytest.raises(error, match=match):
        evaluate(touch(), report=value)
    assert not marker.exists()


def test_plugin_errors_name_its_path_parameter(tmp_path):
    with pytest.raises(TypeError, match="path must be a file path"):
        ReportPlugin(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path must name a file"):
        ReportPlugin(tmp_path)


CLI_TARGET = textwrap.dedent(
    """
    from daglite import task

    @task
    def square(x: int) -> int:
        return x * x

    @task
    def boom(x: int) -> int:
        raise ValueError("boom")

    def squares(n: int):
        return square.product(x=list(range(n)))

    def failing():
        return boom(1)
    """
)


@pytest.fixture
def cli_target(tmp_path, monkeypatch):
    name = f"report_cli_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(CLI_TARGET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_cli_report_option_writes_the_file(cli_target, capsys):
    code = main(["run", f"{cli_target}:squares", "-p", "n=4", "--report", "out.html"])
    assert (code, capsys.readouterr().out) == (0, "[0, 1, 4, 9]\n")
    assert len(bars(Path("out.html").read_text(encoding="utf-8"))) == 4


def test_cli_report_is_written_when_the_dag_fails(cli_target, capsys):
    assert main(["run", f"{cli_target}:failing", "--report", "out.html"]) == 1
    html = Path("out.html").read_text(encoding="utf-8")
    assert nodes(html)["boom"]["data-state"] == "failed"


def test_cli_bad_report_is_a_usage_error(cli_target, capsys, tmp_path):
    code = main(["run", f"{cli_target}:squares", "-p", "n=2", "--report", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("daglite: error: --report must name a file") and "directory" in err


# -- large runs ----------------------------------------------------------------------------


def test_100k_mapped_elements_are_aggregated_under_5_mb(tmp_path):
    target = tmp_path / "big.html"
    assert evaluate(inc.product(x=range(100_000)).join(total), report=target) == 5_000_050_000
    size = target.stat().st_size
    html = target.read_text(encoding="utf-8")
    drawn = bars(html)
    assert size < 5 * 2**20
    assert by_id(html, "timeline")["data-mode"] == "aggregated"
    assert 'id="aggregated"' in html
    assert sum(int(b["data-count"]) for b in drawn) == 100_001
    assert len(drawn) <= 2 * BUCKETS  # one worker (caller), two tasks
    assert rows(html, "data-task")["inc"]["data-calls"] == "100000"


def synthetic_run(count: int, failures: int, workers: int = 2) -> RunTimeline:
    graph = GraphDescription(
        (NodeDescription("work", "work", "map", "threads", count, "", ()),), ("work",)
    )
    run = RunTimeline(uuid.uuid4(), graph, started=1000.0, ended=1000.0 + count * 0.001)
    for i in range(count):
        error = "ValueError: bad" if i < failures else None
        worker = f"t{i % workers}"
        run.attempts.append(
            Attempt(f"work[{i}]", "work", "threads", worker, 1000.0 + i * 0.001, 0.0015, 1, error)
        )
    return run


@pytest.mark.parametrize(
    ("count", "mode"), [(DETAIL_LIMIT, "detail"), (DETAIL_LIMIT + 1, "aggregated")]
)
def test_aggregation_starts_above_the_detail_limit(count, mode):
    html = render_report(synthetic_run(count, failures=5), peak_memory=None)
    drawn = bars(html)
    assert by_id(html, "timeline")["data-mode"] == mode
    assert by_id(html, "peak-memory")["data-bytes"] == ""
    if mode == "detail":
        assert len(drawn) == count
        assert sum(b["data-state"] == "failed" for b in drawn) == 5
    else:
        assert sum(int(b["data-count"]) for b in drawn) == count
        assert sum(int(b["data-failed"]) for b in drawn) == 5
        assert {b["data-worker"] for b in drawn} == {"t0", "t1"}
        assert all("failed" in b["class"] for b in drawn if b["data-failed"] != "0")


@pytest.mark.parametrize("workers", [1, 100, 2000])
def test_many_workers_get_fewer_buckets(workers):
    html = render_report(synthetic_run(20_000, failures=0, workers=workers), peak_memory=None)
    buckets = int(by_id(html, "timeline")["data-buckets"])
    expected = max(MIN_BUCKETS, min(BUCKETS, AGGREGATED_CELLS // workers))
    assert buckets == expected
    assert f"cut into {buckets} time buckets" in html
    drawn = bars(html)
    assert len({b["data-worker"] for b in drawn}) == workers
    assert len(drawn) <= workers * buckets
    assert sum(int(b["data-count"]) for b in drawn) == 20_000
    assert len(html.encode()) < 5 * 2**20


def test_an_attempt_that_never_started_is_counted_not_drawn():
    run = synthetic_run(2, failures=0)
    lost = Attempt("work[2]", "work", "threads", "", 0.0, 0.0, 1, "WorkerLostError: gone")
    run.attempts.append(lost)
    html = render_report(run, peak_memory=None)
    assert sorted(b["data-key"] for b in bars(html)) == ["work[0]", "work[1]"]
    row = rows(html, "data-task")["work"]
    assert (row["data-calls"], row["data-failures"]) == ("3", "1")
    assert set(rows(html, "data-worker")) == {"t0", "t1"}


def test_overlapping_attempts_of_one_worker_get_lanes():
    # A Dask worker runs several tasks at once; back-to-back ones share a lane.
    run = synthetic_run(0, failures=0)
    for i, (start, duration) in enumerate([(0.0, 1.0), (0.5, 1.0), (0.6, 0.2), (1.0, 0.5)]):
        run.attempts.append(
            Attempt(f"work[{i}]", "work", "dask", "tcp://w1", 1000 + start, duration, 1)
        )
    run.attempts.append(Attempt("work[9]", "work", "dask", "tcp://w2", 1000.2, 0.1, 1))
    run.ended = 1002.0
    html = render_report(run, peak_memory=None)
    lanes = {
        a["data-worker"]: a["data-lanes"]
        for t, a in elements(html)
        if t == "text" and "data-lanes" in a
    }
    assert lanes == {"tcp://w1": "3", "tcp://w2": "1"}
    y = {b["data-key"]: float(b["y"]) for b in bars(html)}
    assert len({y["work[0]"], y["work[1]"], y["work[2]"]}) == 3
    assert y["work[3]"] == y["work[0]"]  # starts as work[0] ends
    assert y["work[9]"] > max(y[f"work[{i}]"] for i in range(4))


def test_large_dag_is_drawn_per_task(tmp_path):
    target = tmp_path / "r.html"
    futures = [inc(i) for i in range(DAG_NODE_LIMIT + 1)]
    evaluate(total(futures), report=target)
    html = target.read_text(encoding="utf-8")
    assert 'id="dag-grouped"' in html
    assert {k: n["data-kind"] for k, n in nodes(html).items()} == {"inc": "group", "total": "group"}


def test_large_failed_dag_groups_show_each_tasks_worst_state(tmp_path):
    target = tmp_path / "r.html"
    futures = [inc(i) for i in range(DAG_NODE_LIMIT)]
    with pytest.raises(EvaluationError):
        evaluate(after(total(futures), boom(1)), report=target, on_error="continue")
    html = target.read_text(encoding="utf-8")
    groups = nodes(html)
    assert 'id="dag-grouped"' in html
    assert {k: n["data-state"] for k, n in groups.items()} == {
        "inc": "ok",
        "total": "ok",
        "boom": "failed",
        "after": "skipped",
    }
    assert f"{DAG_NODE_LIMIT} nodes" in html and "1 nodes" in html


def test_large_dag_groups_add_up_node_counts_time_and_edges(tmp_path):
    target = tmp_path / "r.html"
    futures = [inc(i) for i in range(DAG_NODE_LIMIT)]
    report = ReportPlugin(target)
    evaluate(total(futures), plugins=[report])
    html = target.read_text(encoding="utf-8")
    box = r'<g class="node ok" data-key="(\w+)".*?</text><text[^>]*>([^<]*)<'
    details = dict(re.findall(box, html))
    spent = sum(a.duration for a in report.last.attempts if a.task == "inc")
    assert details["inc"].startswith(f"{DAG_NODE_LIMIT} nodes · ")
    assert details["inc"].endswith(_seconds(spent))
    assert html.count('class="edge"') == 1  # inc -> total, once for 300 node edges


# -- beside other plugins ------------------------------------------------------------------


def test_report_beside_progress_plugin(backend, tmp_path):
    pytest.importorskip("rich")
    from rich.console import Console

    from daglite.plugins.builtin import ProgressPlugin

    out = io.StringIO()
    bar = ProgressPlugin(console=Console(file=out, force_terminal=True, width=100))
    report = ReportPlugin(tmp_path / "r.html")
    dag = inc.product(x=list(range(8))).join(total)
    assert evaluate(dag, backend=backend, plugins=[bar, report]) == 36
    assert bar.done == 9 and "9/9" in out.getvalue()
    assert len(bars(report.path.read_text(encoding="utf-8"))) == 9


def test_cache_hits_are_counted_and_drawn_apart(tmp_path):
    cache = CachePlugin(tmp_path / "cache")
    dag = inc.product(x=[1, 2, 3]).join(total)
    evaluate(dag, plugins=[cache])
    report = ReportPlugin(tmp_path / "r.html")
    assert evaluate(dag, plugins=[cache, report]) == 9
    html = report.path.read_text(encoding="utf-8")
    assert (
        rows(html, "data-task")["inc"]["data-cache-hits"],
        rows(html, "data-task")["inc"]["data-calls"],
    ) == ("3", "0")
    cached = [b for b in bars(html) if b["data-task"] == "inc"]
    assert [(b["data-state"], b["data-worker"]) for b in cached] == [("cached", "cache")] * 3


def test_a_report_that_cannot_be_written_does_not_fail_the_run(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("DAGLITE_STRICT_PLUGINS", raising=False)
    folder = tmp_path / "gone"
    folder.mkdir()
    report = ReportPlugin(folder / "r.html")
    folder.rmdir()  # the directory disappears before the run ends
    with caplog.at_level("ERROR", logger="daglite.plugins"):
        assert evaluate(inc(1), plugins=[report]) == 2
    assert "ReportPlugin" in caplog.text and "after_graph_execute" in caplog.text
    assert not [t for t in threading.enumerate() if t.name == "daglite-report-memory"]


def test_memory_is_summed_over_the_process_tree():
    import psutil

    from daglite.plugins.builtin.report import _tree_rss

    child = subprocess.Popen(
        [sys.executable, "-c", "print('ready', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        child_rss = psutil.Process(child.pid).memory_info().rss
        assert child_rss > 2**20  # a started interpreter
        assert _tree_rss() > psutil.Process().memory_info().rss + child_rss // 2
    finally:
        child.communicate(b"\n", timeout=30)


def test_a_later_run_overwrites_the_report(tmp_path):
    report = ReportPlugin(tmp_path / "r.html")
    evaluate(inc(1), plugins=[report])
    evaluate(inc.product(x=[1, 2]), plugins=[report])
    html = report.path.read_text(encoding="utf-8")
    assert str(report.last.root_id) in html and str(report.runs[0].root_id) not in html
    assert len(bars(html)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.html")]  # no temp files


def test_report_plugin_is_a_timeline_plugin_imported_lazily():
    assert issubclass(ReportPlugin, TimelinePlugin)
    code = (
        "import sys, daglite.plugins.builtin as b\n"
        "assert 'daglite.plugins.builtin.report' not in sys.modules\n"
        "assert 'ReportPlugin' in b.__all__ and b.ReportPlugin.__name__ == 'ReportPlugin'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
