"""The Chrome trace file (``TracePlugin``, ``evaluate(trace=)``, ``--trace``) on every backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from daglite import TaskError, evaluate, evaluate_async, task
from daglite.plugins.builtin import TracePlugin
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import EventRegistry, get_reporter


@task
def tick(x: int) -> int:
    get_reporter().report("tick", {"x": x})
    return x + 1


@task
def total(xs: list[int], bonus: int) -> int:
    return sum(xs) + bonus


def check_chrome_trace(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Assert the format's required fields; return the events that are not metadata."""
    assert doc["displayTimeUnit"] in ("ms", "ns")
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    for event in events:
        assert {"name", "ph", "pid", "tid"} <= event.keys(), event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
    meta = [e for e in events if e["ph"] == "M"]
    processes = {e["pid"] for e in meta if e["name"] == "process_name" and e["args"]["name"]}
    threads = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"}
    assert all(e["args"]["name"] for e in meta if e["name"] == "thread_name")
    timed = [e for e in events if e["ph"] != "M"]
    for event in timed:
        assert event["pid"] in processes, event
        assert (event["pid"], event["tid"]) in threads, event
        assert isinstance(event["ts"], (int, float)) and event["ts"] >= 0, event
        if event["ph"] == "X":
            assert isinstance(event["dur"], (int, float)) and event["dur"] >= 0, event
        else:
            assert event["ph"] == "i" and event["s"] in ("g", "p", "t"), event
    return timed


def read(path: Path) -> list[dict[str, Any]]:
    return check_chrome_trace(json.loads(path.read_text(encoding="utf-8")))


def flaky_dag(marker: Path) -> Any:
    @task(retries=1)
    def flaky(x: int) -> int:
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("first attempt fails")
        return x

    return tick.product(x=[1, 2, 3]).join(total, bonus=flaky(10))


def test_trace_has_one_bar_per_attempt_and_the_events(backend, tmp_path):
    path = tmp_path / "run.json"
    plugin = TracePlugin(path)
    assert evaluate(flaky_dag(tmp_path / "marker"), backend=backend, plugins=[plugin]) == 19
    events = read(path)
    bars = [e for e in events if e["ph"] == "X" and e["cat"] == "task"]
    attempts = plugin.last.attempts
    assert len(bars) == len(attempts) == 6  # 3 ticks, flaky twice, total
    assert sorted((b["args"]["key"], b["args"]["attempt"]) for b in bars) == [
        ("flaky", 1),
        ("flaky", 2),
        ("tick[0]", 1),
        ("tick[1]", 1),
        ("tick[2]", 1),
        ("total", 1),
    ]
    failed = [b for b in bars if b["args"]["error"]]
    assert [(b["name"], b["args"]["error"]) for b in failed] == [
        ("flaky", "RuntimeError: first attempt fails")
    ]
    # Each attempt sits on the track of the worker that ran it.
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in json.loads(path.read_text())["traceEvents"]
        if e["name"] == "thread_name"
    }
    by_key = {(a.key, a.attempt): a for a in attempts}
    for bar in bars:
        assert (
            names[(bar["pid"], bar["tid"])]
            == by_key[(bar["args"]["key"], bar["args"]["attempt"])].worker
        )
    # One instant event per report, on its attempt's track, inside its bar.
    ticks = sorted((e for e in events if e["ph"] == "i"), key=lambda e: e["args"]["x"])
    assert [(e["name"], e["cat"], e["args"]["x"], e["args"]["key"]) for e in ticks] == [
        ("tick", "event", 1, "tick[0]"),
        ("tick", "event", 2, "tick[1]"),
        ("tick", "event", 3, "tick[2]"),
    ]
    for event in ticks:
        (bar,) = [b for b in bars if b["args"]["key"] == event["args"]["key"]]
        assert (event["pid"], event["tid"], event["s"]) == (bar["pid"], bar["tid"], "t")
        assert bar["ts"] <= event["ts"] <= bar["ts"] + bar["dur"]
    (run,) = [e for e in events if e["cat"] == "evaluation"]
    assert run["name"] == "evaluate" and run["args"]["error"] is None
    assert all(run["ts"] <= b["ts"] for b in bars)


def test_trace_is_written_when_the_evaluation_fails(backend, tmp_path):
    @task
    def boom(x: int) -> int:
        raise ValueError(f"boom {x}")

    path = tmp_path / "failed.json"
    with pytest.raises(TaskError):
        evaluate(boom(1), backend=backend, trace=path)
    events = read(path)
    (bar,) = [e for e in events if e.get("cat") == "task"]
    assert bar["args"] == {"key": "boom", "attempt": 1, "error": "ValueError: boom 1"}
    (run,) = [e for e in events if e.get("cat") == "evaluation"]
    assert "boom" in run["args"]["error"]


def test_events_false_records_no_events_and_keeps_the_bulk_path(tmp_path):
    class Registries:
        """Keeps the registry of each evaluation: empty means the bulk path stays on."""

        def __init__(self):
            self.registries: list[EventRegistry] = []

        def register_event_handlers(self, registry):
            self.registries.append(registry)

    watcher = Registries()
    path = tmp_path / "quiet.json"
    plugin = TracePlugin(path, events=False)
    dag = tick.product(x=[1, 2, 3]).join(total, bonus=0)
    assert evaluate(dag, backend="threads", plugins=[plugin, watcher]) == 9
    assert not watcher.registries[0]  # nobody subscribed: fan-outs may travel in slices
    events = read(path)
    assert not [e for e in events if e["ph"] == "i"]
    assert len([e for e in events if e.get("cat") == "task"]) == 4
    TracePlugin(path).register_event_handlers(registry := EventRegistry())
    assert registry  # events=True subscribes to every event type


def test_events_reported_by_hooks_are_run_wide(tmp_path):
    class Announcer:
        @hook_impl
        def after_node_execute(self, key, reporter):
            reporter.report("announced", {"of": key})

    path = tmp_path / "hooks.json"
    assert evaluate(tick(1), plugins=[Announcer()], trace=path) == 2
    (event,) = [e for e in read(path) if e["name"] == "announced"]
    assert (event["pid"], event["tid"], event["s"]) == (0, 0, "g")
    assert event["args"] == {"of": "tick", "type": "announced"}


def test_event_data_json_cannot_hold_is_written_as_its_repr(tmp_path):
    @task
    def odd(x: int) -> int:
        get_reporter().report("odd", {"value": {1, 2}})
        get_reporter().report("odder", {"nan": float("nan"), "tuple_keys": {(1, 2): 3}})
        return x

    path = tmp_path / "odd.json"
    evaluate(odd(1), trace=str(path))
    first, second = [e for e in read(path) if e["ph"] == "i"]
    assert first["args"]["value"] == repr({1, 2})
    assert second["args"] == {
        "nan": "nan",
        "tuple_keys": "{(1, 2): 3}",
        "type": "odder",
        "key": "odd",
    }


def test_evaluate_async_writes_a_trace(tmp_path):
    path = tmp_path / "async.json"
    assert asyncio.run(evaluate_async(tick(1), backend="threads", trace=path)) == 2
    assert [e["args"]["key"] for e in read(path) if e.get("cat") == "task"] == ["tick"]


def test_plugin_reused_rewrites_the_file_per_evaluation(tmp_path):
    path = tmp_path / "again.json"
    plugin = TracePlugin(path)
    evaluate(tick(1), plugins=[plugin])
    evaluate(tick.product(x=[1, 2]), plugins=[plugin])
    assert len(plugin.runs) == 2
    assert len([e for e in read(path) if e.get("cat") == "task"]) == 2
    assert len([e for e in read(path) if e["ph"] == "i"]) == 2


def test_cli_run_trace_writes_the_file(tmp_path, monkeypatch, capsys):
    from daglite.cli import main

    (tmp_path / "tracedag.py").write_text(
        "from daglite import task\n\n@task\ndef double(x: int) -> int:\n    return 2 * x\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tracedag", raising=False)
    code = main(["run", "tracedag:double", "-p", "x=4", "--trace", "cli.json"])
    assert (code, capsys.readouterr().out) == (0, "8\n")
    assert [e["args"]["key"] for e in read(tmp_path / "cli.json") if e.get("cat") == "task"] == [
        "double"
    ]


def test_attempt_whose_worker_died_sits_at_the_end_on_its_own_track(tmp_path):
    from daglite import WorkerLostError

    @task
    def die(x: int) -> int:
        import os

        os._exit(1)

    path = tmp_path / "lost.json"
    with pytest.raises(WorkerLostError):
        evaluate(die(1), backend="processes", trace=path)
    doc = json.loads(path.read_text())
    events = check_chrome_trace(doc)
    (bar,) = [e for e in events if e.get("cat") == "task"]
    (run,) = [e for e in events if e.get("cat") == "evaluation"]
    assert bar["args"]["error"].startswith("WorkerLostError")
    assert (bar["ts"], bar["dur"]) == (run["ts"] + run["dur"], 0.0)
    names = [e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"]
    assert names == ["run", "worker lost"]


def test_a_path_that_cannot_be_written_fails_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="trace must name a file"):
        evaluate(tick(1), trace=tmp_path)
    with pytest.raises(ValueError, match="directory of .* does not exist"):
        TracePlugin(tmp_path / "missing" / "run.json")
    with pytest.raises(TypeError, match="trace must be a file path"):
        evaluate(tick(1), trace=42)  # type: ignore[arg-type]


def test_cli_trace_to_a_missing_directory_is_a_usage_error(tmp_path, capsys):
    from daglite.cli import main

    code = main(["run", "daglite:__version__", "--trace", str(tmp_path / "no" / "t.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("daglite: error: --trace: the directory of") and err.count("\n") == 1
