"""Progress bar, trace file, OpenTelemetry spans, run report and a timeline in one evaluation."""

from __future__ import annotations

import io
import json
import os

import pytest

if os.environ.get("DAGLITE_REQUIRE_ALL_BACKENDS") != "1":  # CI has every extra: no skips
    pytest.importorskip("rich")
    pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from daglite import evaluate, task
from daglite.plugins.builtin import (
    OpenTelemetryPlugin,
    ProgressPlugin,
    ReportPlugin,
    TracePlugin,
)
from daglite.plugins.builtin.timeline import TimelinePlugin
from daglite.plugins.reporters import get_reporter

from .test_trace import check_chrome_trace


@task
def step(x: int) -> int:
    get_reporter().report("step", {"x": x})
    return 2 * x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def test_every_plugin_does_its_job_in_one_evaluation(backend, tmp_path):
    out = io.StringIO()
    progress = ProgressPlugin(console=Console(file=out, force_terminal=True, width=100))
    trace = TracePlugin(tmp_path / "run.json")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    timeline = TimelinePlugin()
    report = ReportPlugin(tmp_path / "run.html")
    plugins = [progress, trace, OpenTelemetryPlugin(provider), report, timeline]

    assert evaluate(step.product(x=[1, 2, 3]).join(total), backend=backend, plugins=plugins) == 12

    assert (progress.total, progress.done, progress.failed) == (4, 4, 0)
    assert "4/4" in out.getvalue()
    events = check_chrome_trace(json.loads((tmp_path / "run.json").read_text()))
    keys = sorted(a.key for a in timeline.last.attempts)
    assert keys == ["step[0]", "step[1]", "step[2]", "total"]
    assert sorted(e["args"]["key"] for e in events if e.get("cat") == "task") == keys
    assert sorted(e["args"]["x"] for e in events if e["ph"] == "i") == [1, 2, 3]
    spans = exporter.get_finished_spans()
    assert (
        sorted(s.attributes["daglite.key"] for s in spans if s.name != "daglite.evaluate") == keys
    )
    assert [a.key for a in trace.last.attempts] == [a.key for a in timeline.last.attempts]
    assert [a.key for a in report.last.attempts] == [a.key for a in timeline.last.attempts]
    page = (tmp_path / "run.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "total" in page
