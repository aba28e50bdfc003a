"""Every code block of the plugin guide (creating-plugins.md), run verbatim on every backend.

The blocks below are copied verbatim from the guide (the tests must not read the spec
at run time). Blocks call ``evaluate`` without ``backend=``, so each test sets
``DAGLITE_BACKEND`` to the backend under test. ``print`` in hooks runs in the
caller's process, so ``capsys`` sees it on every backend.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from daglite import TaskError, evaluate, task

# fmt: off
SIMPLE_PLUGIN = r'''
from daglite.plugins.hooks import hook_impl
from daglite.graph.base import GraphMetadata
from typing import Any

class LoggingPlugin:
    """Plugin that logs task execution events."""

    @hook_impl
    def before_node_execute(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        reporter=None,
    ) -> None:
        print(f"Starting task: {metadata.name}")

    @hook_impl
    def after_node_execute(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        result: Any,
        duration: float,
        reporter=None,
    ) -> None:
        print(f"Completed task: {metadata.name} in {duration:.2f}s")
'''

REGISTER_AND_USE = r'''
from daglite import task, evaluate
from daglite.plugins.manager import register_plugins

# Register plugin globally
register_plugins(LoggingPlugin())

@task
def add(x: int, y: int) -> int:
    return x + y

# Plugin hooks are called during evaluation
result = evaluate(add(x=1, y=2))
# Output:
# Starting task: add
# Completed task: add in 0.00s
'''

SPEC_BEFORE_NODE = r'''
@hook_impl
def before_node_execute(
    self,
    key: str,              # Unique key for this node
    metadata: GraphMetadata,  # Task metadata (name, description)
    inputs: dict[str, Any],   # Resolved input parameters
    reporter=None,            # Event reporter (optional)
) -> None:
    ...
'''

SPEC_AFTER_NODE = r'''
@hook_impl
def after_node_execute(
    self,
    key: str,
    metadata: GraphMetadata,
    inputs: dict[str, Any],
    result: Any,           # Task result
    duration: float,       # Execution time in seconds
    reporter=None,
) -> None:
    ...
'''

SPEC_ON_NODE_ERROR = r'''
@hook_impl
def on_node_error(
    self,
    key: str,
    metadata: GraphMetadata,
    inputs: dict[str, Any],
    error: Exception,      # The exception that was raised
    duration: float,
    reporter=None,
) -> None:
    ...
'''

SPEC_BEFORE_GRAPH = r'''
from uuid import UUID

@hook_impl
def before_graph_execute(
    self,
    root_id: UUID,         # UUID of root node
    node_count: int,       # Total nodes in graph
    is_async: bool,        # True for async execution
) -> None:
    ...
'''

SPEC_AFTER_GRAPH = r'''
@hook_impl
def after_graph_execute(
    self,
    root_id: UUID,
    result: Any,           # Final result
    duration: float,       # Total execution time
    is_async: bool,
) -> None:
    ...
'''

SPEC_ON_GRAPH_ERROR = r'''
@hook_impl
def on_graph_error(
    self,
    root_id: UUID,
    error: Exception,
    duration: float,
    is_async: bool,
) -> None:
    ...
'''

TIMING_PLUGIN = r'''
from daglite.plugins.hooks import hook_impl
import time

class TimingPlugin:
    """Track execution times for all tasks."""

    def __init__(self):
        self.timings = {}

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        self.timings[metadata.name] = duration

    @hook_impl
    def after_graph_execute(self, root_id, result, duration, is_async):
        print("\nExecution Times:")
        for task_name, task_duration in sorted(
            self.timings.items(),
            key=lambda x: x[1],
            reverse=True
        ):
            print(f"  {task_name}: {task_duration:.4f}s")
        print(f"\nTotal: {duration:.4f}s")
'''

PROGRESS_PLUGIN = r'''
from daglite.plugins.hooks import hook_impl

class ProgressPlugin:
    """Display execution progress."""

    def __init__(self):
        self.total = 0
        self.completed = 0

    @hook_impl
    def before_graph_execute(self, root_id, node_count, is_async):
        self.total = node_count
        self.completed = 0
        print(f"Starting execution: 0/{self.total} tasks")

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        self.completed += 1
        pct = (self.completed / self.total) * 100
        print(f"Progress: {self.completed}/{self.total} ({pct:.0f}%)")

    @hook_impl
    def after_graph_execute(self, root_id, result, duration, is_async):
        print(f"Completed: {self.total}/{self.total} tasks in {duration:.2f}s")
'''

ERROR_TRACKING_PLUGIN = r'''
from daglite.plugins.hooks import hook_impl

class ErrorTrackingPlugin:
    """Track all errors during execution."""

    def __init__(self):
        self.errors = []

    @hook_impl
    def on_node_error(self, key, metadata, inputs, error, duration, reporter=None):
        self.errors.append({
            'task': metadata.name,
            'error': str(error),
            'error_type': type(error).__name__,
            'inputs': inputs,
            'duration': duration
        })

    @hook_impl
    def on_graph_error(self, root_id, error, duration, is_async):
        print(f"\nExecution failed after {duration:.2f}s")
        print(f"Total errors: {len(self.errors)}")
        for err in self.errors:
            print(f"  - {err['task']}: {err['error_type']}: {err['error']}")
'''

CACHING_PLUGIN = r'''
from daglite.plugins.hooks import hook_impl
import hashlib
import json

class CachingPlugin:
    """Cache task results based on inputs."""

    def __init__(self):
        self.cache = {}

    def _hash_inputs(self, inputs):
        """Create hash from inputs."""
        return hashlib.sha256(
            json.dumps(inputs, sort_keys=True).encode()
        ).hexdigest()

    @hook_impl
    def before_node_execute(self, key, metadata, inputs, reporter=None):
        cache_key = (metadata.name, self._hash_inputs(inputs))
        if cache_key in self.cache:
            print(f"Cache hit for {metadata.name}")
            # Note: Currently can't skip execution, just track hits
            self.cache_hits = self.cache.get('_hits', 0) + 1

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        cache_key = (metadata.name, self._hash_inputs(inputs))
        self.cache[cache_key] = result
'''

GLOBAL_REGISTRATION = r'''
from daglite.plugins.manager import register_plugins

# Register multiple plugins at once
register_plugins(
    TimingPlugin(),
    ProgressPlugin(),
    ErrorTrackingPlugin()
)
'''

PER_EXECUTION_REGISTRATION = r'''
from daglite import evaluate

timing = TimingPlugin()
result = evaluate(
    my_dag,
    plugins=[timing]  # Only active for this evaluation
)

print(timing.timings)
'''

ENTRY_POINT_REGISTRATION = r'''
# setup.py or pyproject.toml
entry_points={
    'daglite.hooks': [
        'myplugin = mypackage.plugin:MyPlugin'
    ]
}
'''

DESCRIPTIVE_NAMES = r'''
# Good
class PostgresResultWriterPlugin:
    """Write task results to PostgreSQL database."""
    ...

# Less clear
class DBPlugin:
    ...
'''

HANDLE_ERRORS = r'''
@hook_impl
def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
    try:
        self.save_to_database(metadata.name, result)
    except Exception as e:
        # Log but don't crash
        logger.warning(f"Failed to save result: {e}")
'''

CONFIGURABLE_PLUGIN = r'''
class LoggingPlugin:
    def __init__(self, verbose: bool = False, log_file: str | None = None):
        self.verbose = verbose
        self.log_file = log_file

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        message = f"{metadata.name} completed in {duration:.2f}s"
        if self.verbose:
            message += f" with inputs: {inputs}"

        if self.log_file:
            with open(self.log_file, 'a') as f:
                f.write(message + '\n')
        else:
            print(message)
'''

DOCUMENT_HOOKS = r'''
class MetricsPlugin:
    """
    Collect execution metrics and export to monitoring system.

    This plugin tracks:
    - Task execution times
    - Task success/failure rates
    - Total graph execution time

    Metrics are exported via Prometheus client.
    """

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        """Record task execution time metric."""
        ...
'''

TEST_YOUR_PLUGINS = r'''
from daglite import task, evaluate

def test_timing_plugin():
    plugin = TimingPlugin()

    @task
    def slow_task(x: int) -> int:
        import time
        time.sleep(0.1)
        return x * 2

    result = evaluate(slow_task(x=5), plugins=[plugin])

    assert 'slow_task' in plugin.timings
    assert plugin.timings['slow_task'] >= 0.1
    assert result == 10
'''

STATEFUL_PLUGIN = r'''
class StatefulPlugin:
    def __init__(self):
        self.execution_count = 0
        self.total_duration = 0

    @hook_impl
    def after_graph_execute(self, root_id, result, duration, is_async):
        self.execution_count += 1
        self.total_duration += duration

    def get_average_duration(self):
        if self.execution_count == 0:
            return 0
        return self.total_duration / self.execution_count
'''

PLUGIN_DEPENDENCIES = r'''
class MetricsCollector:
    def __init__(self):
        self.metrics = []

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        self.metrics.append({
            'task': metadata.name,
            'duration': duration
        })

class MetricsExporter:
    def __init__(self, collector: MetricsCollector):
        self.collector = collector

    @hook_impl
    def after_graph_execute(self, root_id, result, duration, is_async):
        # Export metrics collected by MetricsCollector
        self.export_to_prometheus(self.collector.metrics)
'''
# fmt: on

ALL_BLOCKS = [
    SIMPLE_PLUGIN, REGISTER_AND_USE, SPEC_BEFORE_NODE, SPEC_AFTER_NODE, SPEC_ON_NODE_ERROR,
    SPEC_BEFORE_GRAPH, SPEC_AFTER_GRAPH, SPEC_ON_GRAPH_ERROR, TIMING_PLUGIN, PROGRESS_PLUGIN,
    ERROR_TRACKING_PLUGIN, CACHING_PLUGIN, GLOBAL_REGISTRATION, PER_EXECUTION_REGISTRATION,
    ENTRY_POINT_REGISTRATION, DESCRIPTIVE_NAMES, HANDLE_ERRORS, CONFIGURABLE_PLUGIN,
    DOCUMENT_HOOKS, TEST_YOUR_PLUGINS, STATEFUL_PLUGIN, PLUGIN_DEPENDENCIES,
]  # fmt: skip


def run(ns: dict[str, Any], *blocks: str) -> dict[str, Any]:
    """Execute guide blocks, in order, in the namespace ``ns``."""
    for block in blocks:
        exec(compile(block, "<creating-plugins.md>", "exec"), ns)
    return ns


@pytest.fixture
def ns(backend, monkeypatch):
    """A fresh module-like namespace; the guide's bare ``evaluate`` uses ``backend``."""
    monkeypatch.setenv("DAGLITE_BACKEND", backend)
    return {"__name__": "daglite_guide_example"}


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def square(x: int) -> int:
    return x * x


@task
def fail(x: int) -> int:
    raise ValueError(f"bad value {x}")


def three_node_dag():
    return add(square(2), square(3))


TIMING_LINE = re.compile(r"^  (add|square(-2)?): \d+\.\d{4}s$")


def check_timing_report(lines: list[str], timings: dict[str, float]) -> None:
    """TimingPlugin's after_graph_execute output: header, one line per task, total."""
    start = lines.index("Execution Times:")
    assert lines[start - 1] == ""
    body = lines[start + 1 : start + 1 + len(timings)]
    assert all(TIMING_LINE.match(line) for line in body), body
    expected = sorted(timings.items(), key=lambda item: item[1], reverse=True)
    assert body == [f"  {name}: {value:.4f}s" for name, value in expected]
    assert lines[start + 1 + len(timings)] == ""
    assert re.fullmatch(r"Total: \d+\.\d{4}s", lines[start + 2 + len(timings)])


def test_every_block_runs_in_guide_order(ns, capsys):
    for block in ALL_BLOCKS:
        if block is PER_EXECUTION_REGISTRATION:
            ns["my_dag"] = ns["add"](x=1, y=2)
        run(ns, block)
    assert ns["result"] == 3
    ns["test_timing_plugin"]()
    out = capsys.readouterr().out
    assert out.startswith("Starting task: add\nCompleted task: add in 0.00s\n")
    assert "Execution Times:" in out


def test_logging_plugin_prints_start_and_completion(ns, capsys):
    run(ns, SIMPLE_PLUGIN, REGISTER_AND_USE)
    assert ns["result"] == 3
    assert capsys.readouterr().out == "Starting task: add\nCompleted task: add in 0.00s\n"


def test_global_registration_applies_to_later_evaluations(ns, capsys):
    run(ns, TIMING_PLUGIN, PROGRESS_PLUGIN, ERROR_TRACKING_PLUGIN, GLOBAL_REGISTRATION)
    assert evaluate(three_node_dag()) == 13
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith(("Starting execution", "Progress"))]
    assert progress == [
        "Starting execution: 0/3 tasks",
        "Progress: 1/3 (33%)",
        "Progress: 2/3 (67%)",
        "Progress: 3/3 (100%)",
    ]
    assert re.fullmatch(r"Completed: 3/3 tasks in \d+\.\d\ds", lines[-1]) or any(
        re.fullmatch(r"Completed: 3/3 tasks in \d+\.\d\ds", line) for line in lines
    )
    assert "Execution Times:" in lines
    assert not any("Execution failed" in line for line in lines)


def test_timing_plugin_fills_timings_in_the_caller(ns, capsys):
    run(ns, TIMING_PLUGIN)
    timing = ns["TimingPlugin"]()
    assert evaluate(three_node_dag(), plugins=[timing]) == 13
    assert set(timing.timings) == {"add", "square"}  # keyed by task name
    assert all(value >= 0 for value in timing.timings.values())
    check_timing_report(capsys.readouterr().out.splitlines(), timing.timings)


def test_per_execution_registration_prints_timings(ns, capsys):
    run(ns, TIMING_PLUGIN)
    ns["my_dag"] = three_node_dag()
    run(ns, PER_EXECUTION_REGISTRATION)
    assert ns["result"] == 13
    timing = ns["timing"]
    lines = capsys.readouterr().out.splitlines()
    check_timing_report(lines, timing.timings)
    assert lines[-1] == repr(timing.timings)
    # per-execution only: the next evaluation does not touch it
    before = dict(timing.timings)
    evaluate(add(1, 1))
    assert timing.timings == before


def test_progress_plugin_counts_every_node(ns, capsys):
    run(ns, PROGRESS_PLUGIN)
    progress = ns["ProgressPlugin"]()
    dag = square.product(x=[1, 2, 3, 4])
    assert evaluate(dag, plugins=[progress]) == [1, 4, 9, 16]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:5] == [
        "Starting execution: 0/4 tasks",
        "Progress: 1/4 (25%)",
        "Progress: 2/4 (50%)",
        "Progress: 3/4 (75%)",
        "Progress: 4/4 (100%)",
    ]
    assert re.fullmatch(r"Completed: 4/4 tasks in \d+\.\d\ds", lines[5])
    assert len(lines) == 6


def test_error_tracking_plugin_reports_on_graph_error(ns, capsys):
    run(ns, ERROR_TRACKING_PLUGIN)
    tracker = ns["ErrorTrackingPlugin"]()
    with pytest.raises(TaskError) as info:
        evaluate(fail(square(3)), plugins=[tracker])
    assert isinstance(info.value.error, ValueError)
    assert len(tracker.errors) == 1
    error = tracker.errors[0]
    assert error["task"] == "fail"
    assert error["error"] == "bad value 9"
    assert error["error_type"] == "ValueError"
    assert error["inputs"] == {"x": 9}
    assert error["duration"] >= 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ""
    assert re.fullmatch(r"Execution failed after \d+\.\d\ds", lines[1])
    assert lines[2:] == ["Total errors: 1", "  - fail: ValueError: bad value 9"]


def test_caching_plugin_reports_hits_on_second_run(ns, capsys):
    run(ns, CACHING_PLUGIN)
    cache = ns["CachingPlugin"]()
    assert evaluate(three_node_dag(), plugins=[cache]) == 13
    assert capsys.readouterr().out == ""
    assert len(cache.cache) == 3
    assert evaluate(three_node_dag(), plugins=[cache]) == 13
    out = capsys.readouterr().out
    assert sorted(out.splitlines()) == [
        "Cache hit for add",
        "Cache hit for square",
        "Cache hit for square",
    ]
    assert cache.cache_hits == 1


def test_stateful_plugin_keeps_state_across_evaluations(ns):
    run(ns, SIMPLE_PLUGIN, STATEFUL_PLUGIN)  # the guide's earlier imports
    plugin = ns["StatefulPlugin"]()
    assert plugin.get_average_duration() == 0
    evaluate(add(1, 2), plugins=[plugin])
    evaluate(three_node_dag(), plugins=[plugin])
    assert plugin.execution_count == 2
    assert plugin.total_duration > 0
    assert plugin.get_average_duration() == plugin.total_duration / 2


def test_metrics_collector_and_exporter_cooperate(ns):
    run(ns, SIMPLE_PLUGIN, PLUGIN_DEPENDENCIES)  # the guide's earlier imports

    class Exporter(ns["MetricsExporter"]):
        def __init__(self, collector):
            super().__init__(collector)
            self.exported: list[list[dict[str, Any]]] = []

        def export_to_prometheus(self, metrics):
            self.exported.append([dict(m) for m in metrics])

    collector = ns["MetricsCollector"]()
    exporter = Exporter(collector)
    assert evaluate(three_node_dag(), plugins=[collector, exporter]) == 13
    assert len(exporter.exported) == 1
    assert sorted(m["task"] for m in exporter.exported[0]) == ["add", "square", "square"]
    assert all(m["duration"] >= 0 for m in exporter.exported[0])


def test_configurable_logging_plugin(ns, capsys, tmp_path):
    run(ns, SIMPLE_PLUGIN, CONFIGURABLE_PLUGIN)  # the guide's earlier imports
    plugin_cls = ns["LoggingPlugin"]
    evaluate(add(1, 2), plugins=[plugin_cls(verbose=True)])
    assert capsys.readouterr().out == "add completed in 0.00s with inputs: {'x': 1, 'y': 2}\n"
    log_file = tmp_path / "plugin.log"
    evaluate(add(1, 2), plugins=[plugin_cls(log_file=str(log_file))])
    assert capsys.readouterr().out == ""
    assert log_file.read_text() == "add completed in 0.00s\n"


def test_documented_metrics_plugin_runs(ns):
    run(ns, SIMPLE_PLUGIN, DOCUMENT_HOOKS)  # the guide's earlier imports
    assert evaluate(add(1, 2), plugins=[ns["MetricsPlugin"]()]) == 3


def test_guides_test_timing_plugin_passes(ns, capsys):
    run(ns, TIMING_PLUGIN, TEST_YOUR_PLUGINS)
    ns["test_timing_plugin"]()
    assert "  slow_task: " in capsys.readouterr().out
