"""Issue 12: a hook implementation gets every spec argument it names, defaults included.

pluggy's ``HookImpl.argnames`` leaves out parameters with a default, which is
how the guide declares ``reporter=None``; daglite passes them all the same.
"""

from __future__ import annotations

from typing import Any

import pytest

from daglite import evaluate, task
from daglite.graph.base import GraphMetadata
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import Reporter, get_reporter


class Boom(Exception):
    pass


@task
def report_and_add(x: int, y: int) -> int:
    get_reporter().report("seen", {"by": "task"})
    return x + y


@task
def fail(x: int) -> int:
    raise Boom(f"failed on {x}")


class WithDefaults:
    """Every parameter has a default; ``extra`` is no spec argument and keeps its own."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    def register_event_handlers(self, registry: Any) -> None:
        registry.on("seen", self.events.append)

    @hook_impl
    def before_graph_execute(self, root_id=None, node_count=None, is_async=None):
        self.calls["before_graph_execute"] = dict(node_count=node_count, is_async=is_async)

    @hook_impl
    def before_node_execute(self, key, metadata=None, inputs=None, reporter=None):
        self.calls["before_node_execute"] = dict(metadata=metadata, inputs=inputs)
        assert reporter is not None
        reporter.report("seen", {"by": "before_node_execute"})

    @hook_impl
    def after_node_execute(
        self,
        key,
        extra="kept",
        metadata=None,
        inputs=None,
        result=None,
        duration=None,
        reporter=None,
    ):
        self.calls["after_node_execute"] = dict(
            extra=extra, metadata=metadata, inputs=inputs, result=result, duration=duration
        )
        assert reporter is not None
        reporter.report("seen", {"by": "after_node_execute"})

    @hook_impl
    def on_node_error(self, key, error=None, duration=None, reporter=None):
        self.calls["on_node_error"] = dict(error=error, duration=duration)
        assert reporter is not None
        reporter.report("seen", {"by": "on_node_error"})

    @hook_impl
    def after_graph_execute(self, root_id=None, result=None, duration=None, is_async=None):
        self.calls["after_graph_execute"] = dict(result=result, duration=duration)

    @hook_impl
    def on_graph_error(self, root_id=None, error=None, duration=None, is_async=None):
        self.calls["on_graph_error"] = dict(error=error, duration=duration)


def test_hook_arguments_with_defaults_are_passed(backend):
    plugin = WithDefaults()
    assert evaluate(report_and_add(1, 2), backend=backend, plugins=[plugin]) == 3
    assert plugin.calls["before_graph_execute"] == {"node_count": 1, "is_async": False}
    before = plugin.calls["before_node_execute"]
    assert isinstance(before["metadata"], GraphMetadata)
    assert before["metadata"].name == "report_and_add"
    assert before["inputs"] == {"x": 1, "y": 2}
    after = plugin.calls["after_node_execute"]
    assert after["extra"] == "kept"  # not a spec argument: its default stands
    assert after["result"] == 3
    assert after["inputs"] == {"x": 1, "y": 2}
    assert after["metadata"].name == "report_and_add"
    assert isinstance(after["duration"], float) and after["duration"] >= 0.0
    graph = plugin.calls["after_graph_execute"]
    assert graph["result"] == 3
    assert isinstance(graph["duration"], float)


def test_reporter_with_default_reaches_the_handlers_a_task_reports_to(backend):
    plugin = WithDefaults()
    evaluate(report_and_add(1, 2), backend=backend, plugins=[plugin])
    by = [event["by"] for event in plugin.events]
    assert by == ["before_node_execute", "task", "after_node_execute"]
    assert all(event["type"] == "seen" for event in plugin.events)


def test_error_hooks_get_their_arguments_with_defaults(backend):
    plugin = WithDefaults()
    with pytest.raises(Exception, match="failed on 1"):
        evaluate(fail(1), backend=backend, plugins=[plugin])
    node = plugin.calls["on_node_error"]
    assert isinstance(node["error"], Boom)
    assert isinstance(node["duration"], float)
    assert plugin.calls["on_graph_error"]["error"] is not None
    assert [event["by"] for event in plugin.events] == ["before_node_execute", "on_node_error"]


def test_reporter_with_default_is_a_reporter(backend):
    seen: list[object] = []

    class Takes:
        @hook_impl
        def after_node_execute(self, reporter=None):
            seen.append(reporter)

    evaluate(report_and_add(1, 2), backend=backend, plugins=[Takes()])
    assert len(seen) == 1 and isinstance(seen[0], Reporter)
