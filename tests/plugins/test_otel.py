"""OpenTelemetry spans (``OpenTelemetryPlugin``) on every backend, via the in-memory exporter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The test extra installs the SDK; CI (every extra required) must not skip these.
if os.environ.get("DAGLITE_REQUIRE_ALL_BACKENDS") != "1":
    pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from daglite import TaskError, evaluate, evaluate_async, task
from daglite.plugins.builtin import OpenTelemetryPlugin
from daglite.plugins.builtin.timeline import TimelinePlugin


@task
def inc(x: int) -> int:
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def split(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, ReadableSpan, list[ReadableSpan]]:
    """(the test's outer span, the evaluation span, the task spans)."""
    (outer,) = [s for s in spans if s.name == "outer"]
    (run,) = [s for s in spans if s.name == "daglite.evaluate"]
    return outer, run, [s for s in spans if s not in (outer, run)]


def test_one_span_per_attempt_under_the_evaluation_under_the_caller(backend, provider, exporter):
    timeline = TimelinePlugin()
    with provider.get_tracer("test").start_as_current_span("outer"):
        dag = inc.product(x=[1, 2, 3]).join(total)
        plugins = [OpenTelemetryPlugin(provider), timeline]
        assert evaluate(dag, backend=backend, plugins=plugins) == 9
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    outer, run, tasks = split(spans)
    assert run.parent is not None and run.parent.span_id == outer.context.span_id
    assert run.context.trace_id == outer.context.trace_id
    assert run.status.status_code is StatusCode.UNSET
    assert run.attributes is not None and run.attributes["daglite.node_count"] == 4
    by_key = {a.key: a for a in timeline.last.attempts}
    assert sorted(s.attributes["daglite.key"] for s in tasks) == sorted(by_key)
    for span in tasks:
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        attempt = by_key[span.attributes["daglite.key"]]
        assert span.name == attempt.task
        assert dict(span.attributes) == {
            "daglite.key": attempt.key,
            "daglite.task": attempt.task,
            "daglite.backend": backend,
            "daglite.worker": attempt.worker,
            "daglite.attempt": 1,
        }
        assert attempt.worker
        # The times the attempt had where it ran, in nanoseconds.
        assert span.start_time == int(attempt.started * 1e9)
        assert span.end_time == span.start_time + int(attempt.duration * 1e9)
        assert span.status.status_code is StatusCode.UNSET


def test_failed_attempts_are_error_spans(backend, provider, exporter, tmp_path):
    marker = tmp_path / "tried"

    @task(retries=1)
    def flaky(x: int) -> int:
        if not marker.exists():
            marker.write_text("once")
            raise RuntimeError("first")
        raise ValueError("second")

    with provider.get_tracer("test").start_as_current_span("outer"):
        with pytest.raises(TaskError):
            evaluate(flaky(1), backend=backend, plugins=[OpenTelemetryPlugin(provider)])
    _, run, tasks = split(exporter.get_finished_spans())
    first, second = sorted(tasks, key=lambda s: s.attributes["daglite.attempt"])
    for span, attempt, text in (
        (first, 1, "RuntimeError: first"),
        (second, 2, "ValueError: second"),
    ):
        assert span.attributes["daglite.attempt"] == attempt
        assert span.attributes["daglite.error"] == text
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == text
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == text.split(":")[0]
        assert span.parent.span_id == run.context.span_id
    assert first.attributes["daglite.retried"] is True
    assert "daglite.retried" not in second.attributes
    assert run.status.status_code is StatusCode.ERROR
    assert [e.name for e in run.events] == ["exception"]


def test_evaluate_async_span_is_a_child_of_the_awaiting_callers_span(provider, exporter):
    async def traced() -> int:
        with provider.get_tracer("test").start_as_current_span("outer"):
            plugins = [OpenTelemetryPlugin(provider)]
            return await evaluate_async(inc(1), backend="threads", plugins=plugins)

    assert asyncio.run(traced()) == 2
    outer, run, (child,) = split(exporter.get_finished_spans())
    assert run.parent is not None and run.parent.span_id == outer.context.span_id
    assert run.attributes is not None and run.attributes["daglite.is_async"] is True
    assert child.parent is not None and child.parent.span_id == run.context.span_id


def test_global_provider_is_the_default(provider, exporter, monkeypatch):
    from opentelemetry import trace

    # The API's global provider can be set only once per process: patch its getter.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    plugin = OpenTelemetryPlugin()
    monkeypatch.undo()
    evaluate(inc(1), plugins=[plugin])
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["daglite.evaluate", "inc"]


def test_missing_opentelemetry_is_a_clear_error():
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "import daglite.plugins.builtin as b\n"
        "assert 'opentelemetry' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
        "try:\n"
        "    b.OpenTelemetryPlugin()\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert out.stdout.strip() == (
        "OpenTelemetryPlugin needs the 'opentelemetry-api' package; "
        "install it with `pip install daglite[otel]`"
    )


def test_importing_daglite_does_not_import_opentelemetry():
    code = (
        "import sys, daglite, daglite.plugins.builtin\n"
        "from daglite import evaluate, task\n"
        "print(any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert out.stdout.strip() == "False"
