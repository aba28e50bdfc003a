"""The event channel: ``get_reporter().report`` in tasks reaches ``registry.on`` handlers.

The ``check_*`` helpers take a backend name or instance, so custom-backend tests
reuse them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections import defaultdict
from typing import Any

import pytest
from tests.plugins._records import daglite_records

from daglite import TaskError, evaluate, task
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import Reporter, get_reporter

WAIT = 30.0  # deadlock detector only


class Collector:
    """Plugin with event handlers; records every event with the pid/thread it arrived on."""

    def __init__(self, *types: str) -> None:
        self.types = types or ("tick",)
        self.events: list[dict[str, Any]] = []
        self.where: set[tuple[int, int]] = set()
        self.seen_at_after_node: dict[str, int] = {}
        self.seen_at_after_graph: int | None = None

    def register_event_handlers(self, registry):
        for event_type in self.types:
            registry.on(event_type, self.on_event)

    def on_event(self, event: dict[str, Any]) -> None:
        self.where.add((os.getpid(), threading.get_ident()))
        self.events.append(event)

    def by_key(self, event_type: str = "tick") -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for event in self.events:
            if event["type"] == event_type:
                out[event["key"]].append(event["i"])
        return dict(out)

    @hook_impl
    def after_node_execute(self, key):
        self.seen_at_after_node[key] = sum(1 for e in self.events if e.get("key") == key)

    @hook_impl
    def after_graph_execute(self):
        self.seen_at_after_graph = len(self.events)


@task
def emit(count: int, tag: int = 0) -> int:
    reporter = get_reporter()
    for i in range(count):
        reporter.report("tick", {"i": i, "tag": tag})
    return count


def check_single_event(backend: Any, **options: Any) -> None:
    collector = Collector()
    assert evaluate(emit(1, tag=7), backend=backend, plugins=[collector], **options) == 1
    assert collector.events == [{"i": 0, "tag": 7, "type": "tick", "key": "emit"}]
    assert collector.where == {(os.getpid(), threading.get_ident())}


def check_counts_and_order(
    backend: Any, tasks: int = 100, per_task: int = 200, **options: Any
) -> None:
    """Exact counts, strict order within each task, all delivered before returning."""
    collector = Collector()
    dag = emit.product(count=[per_task], tag=list(range(tasks)))
    assert evaluate(dag, backend=backend, plugins=[collector], **options) == [per_task] * tasks
    assert len(collector.events) == tasks * per_task
    assert collector.seen_at_after_graph == tasks * per_task
    per_key = collector.by_key()
    assert sorted(per_key) == sorted(f"emit[{t}]" for t in range(tasks))
    for key, values in per_key.items():
        assert values == list(range(per_task)), key
        # every event of a task has arrived before its after_node_execute
        assert collector.seen_at_after_node[key] == per_task
    assert collector.where == {(os.getpid(), threading.get_ident())}


@task
def ping_then_wait(gate: Any) -> bool:
    get_reporter().report("ping", {"i": 0})
    opened = gate.wait(WAIT)
    get_reporter().report("ping", {"i": 1})
    return opened


class Opener:
    """Opens the gate when the first ping arrives, while the task is still running."""

    def __init__(self, gate: Any) -> None:
        self.gate = gate
        self.pings: list[int] = []

    def register_event_handlers(self, registry):
        registry.on("ping", self.on_ping)

    def on_ping(self, event):
        self.pings.append(event["i"])
        self.gate.set()


def check_mid_run_delivery(backend: Any, gate: Any, **options: Any) -> None:
    opener = Opener(gate)
    assert evaluate(ping_then_wait(gate), backend=backend, plugins=[opener], **options) is True
    assert opener.pings == [0, 1]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mp_manager():
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Manager() as manager:
        yield manager


# -- tests ---------------------------------------------------------------------------------------


def test_event_reaches_handler_in_caller_with_type_and_key(backend):
    check_single_event(backend)


def test_events_counted_exactly_and_ordered_per_task(backend):
    check_counts_and_order(backend)


def test_events_from_several_tasks_may_interleave_but_each_stays_ordered(concurrent_backend):
    collector = Collector()
    dag = emit.product(count=[300], tag=[0, 1, 2, 3])
    evaluate(dag, backend=concurrent_backend, plugins=[collector])
    per_key = collector.by_key()
    assert all(v == list(range(300)) for v in per_key.values())
    assert len(per_key) == 4


def test_events_of_a_long_task_arrive_while_it_runs(backend, mp_manager):
    # On inline the handler is called from within report(), which also proves mid-run delivery.
    check_mid_run_delivery(backend, mp_manager.Event())


def test_events_only_reach_handlers_of_their_type(backend):
    collector = Collector("other")
    evaluate(emit(5), backend=backend, plugins=[collector])
    assert collector.events == []


def test_reporter_given_to_hooks_reports_to_handlers(backend):
    class HookReporter:
        def __init__(self) -> None:
            self.received: list[dict[str, Any]] = []

        def register_event_handlers(self, registry):
            registry.on("from_hook", self.received.append)

        @hook_impl
        def after_node_execute(self, key, reporter):
            assert isinstance(reporter, Reporter)
            reporter.report("from_hook", {"node": key})

    plugin = HookReporter()
    evaluate(emit(2), backend=backend, plugins=[plugin])
    assert plugin.received == [{"node": "emit", "type": "from_hook"}]


def test_on_any_handler_gets_every_type_after_the_own_handlers(backend):
    class Everything:
        def __init__(self) -> None:
            self.received: list[tuple[str, dict[str, Any]]] = []

        def register_event_handlers(self, registry):
            registry.on("from_hook", lambda e: self.received.append(("own", e)))
            registry.on_any(lambda e: self.received.append(("any", e)))

        @hook_impl
        def after_node_execute(self, key, reporter):
            reporter.report("from_hook", {"node": key})

    @task
    def two_kinds() -> int:
        get_reporter().report("a", {"i": 1})
        get_reporter().report("b", {"i": 2})
        return 0

    plugin = Everything()
    evaluate(two_kinds(), backend=backend, plugins=[plugin])
    assert plugin.received == [
        ("any", {"i": 1, "type": "a", "key": "two_kinds"}),
        ("any", {"i": 2, "type": "b", "key": "two_kinds"}),
        ("own", {"node": "two_kinds", "type": "from_hook"}),
        ("any", {"node": "two_kinds", "type": "from_hook"}),
    ]


def test_registry_on_any_checks_the_handler_and_counts_as_a_subscriber():
    from daglite.plugins.reporters import EventRegistry

    registry = EventRegistry()
    assert not registry and registry.handlers("x") == []
    with pytest.raises(TypeError, match="must be callable"):
        registry.on_any("not callable")  # type: ignore[arg-type]
    registry.on_any(print)
    assert registry and registry.handlers("x") == [print]


@task
def report_unpicklable(kind: str, gate: Any = None) -> str:
    bad: Any = threading.Lock() if kind == "lock" else (lambda: None)
    reporter = get_reporter()
    reporter.report("tick", {"i": 0})
    reporter.report("unpicklable", {"thing": bad})
    reporter.report("tick", {"i": 1})
    if gate is not None:  # stay running so the events are flushed mid-run
        reporter.report("ping", {"i": 0})
        gate.wait(WAIT)
    return "finished"


@pytest.mark.parametrize("kind", ["lock", "lambda"])
@pytest.mark.parametrize("long_running", [False, True], ids=["with-result", "flushed"])
def test_unpicklable_event_is_dropped_with_warning_on_processes(
    kind, long_running, caplog, mp_manager
):
    gate = mp_manager.Event() if long_running else None
    collector = Collector("tick", "unpicklable")
    plugins: list[Any] = [collector]
    if gate is not None:
        plugins.append(Opener(gate))
    caplog.set_level(logging.WARNING)
    result = evaluate(report_unpicklable(kind, gate), backend="processes", plugins=plugins)
    assert result == "finished"
    assert [e["i"] for e in collector.events] == [0, 1]
    warnings = [r for r in daglite_records(caplog, logging.WARNING) if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "'unpicklable'" in warnings[0].getMessage()
    assert "report_unpicklable" in warnings[0].getMessage()


def test_unpicklable_event_is_delivered_as_is_in_process(caplog):
    collector = Collector("tick", "unpicklable")
    evaluate(report_unpicklable("lock"), backend="threads", plugins=[collector])
    assert [e["type"] for e in collector.events] == ["tick", "unpicklable", "tick"]


def test_get_reporter_outside_a_task_is_a_no_op():
    reporter = get_reporter()
    assert isinstance(reporter, Reporter)
    reporter.report("tick", {"i": 1})  # goes nowhere, raises nothing
    assert emit.func(3) == 3  # a task function called directly can still report


def test_handler_gets_a_dict_it_may_keep(backend):
    collector = Collector()
    evaluate(emit.product(count=[3], tag=[1, 2]), backend=backend, plugins=[collector])
    tags = sorted({e["tag"] for e in collector.events})
    assert tags == [1, 2]
    assert all(e["type"] == "tick" for e in collector.events)


@task
async def emit_from_a_helper_thread(tag: int) -> int:
    reporter = get_reporter()
    reporter.report("tick", {"i": 0, "tag": tag})
    # asyncio.to_thread copies the context: the same reporter, another thread
    await asyncio.to_thread(reporter.report, "tick", {"i": 1, "tag": tag})
    reporter.report("tick", {"i": 2, "tag": tag})
    return tag


@task(timeout=WAIT)
def emit_flush_emit(tag: int) -> int:
    # With a timeout the task runs on a helper thread, inline too; a flush in
    # the middle sends the first event ahead of the result.
    reporter = get_reporter()
    reporter.report("tick", {"i": 0, "tag": tag})
    flush = getattr(reporter, "flush", None)
    if flush is not None:
        flush()
    reporter.report("tick", {"i": 1, "tag": tag})
    return tag


@pytest.mark.parametrize("emitter", [emit_from_a_helper_thread, emit_flush_emit])
def test_events_a_task_reports_from_other_threads_keep_order_and_arrive(backend, emitter):
    collector = Collector()
    assert evaluate(emitter(5), backend=backend, plugins=[collector]) == 5
    count = 3 if emitter is emit_from_a_helper_thread else 2
    key = emitter.name
    assert collector.by_key() == {key: list(range(count))}
    assert collector.seen_at_after_node == {key: count}
    assert collector.where == {(os.getpid(), threading.get_ident())}


@pytest.mark.parametrize("event_type", ["daglite.log", "daglite.start", "daglite.anything"])
def test_event_types_of_daglite_itself_are_refused_on_every_backend(backend, event_type):
    @task
    def impostor() -> int:
        get_reporter().report(event_type, {"msg": "hello"})
        return 1

    with pytest.raises(TaskError, match="daglite's own") as info:
        evaluate(impostor(), backend=backend)
    assert isinstance(info.value.error, ValueError)
