"""Issue 12: ``HookDispatcher`` calls one hook as pluggy would, without running a DAG."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from tests.plugins._records import daglite_errors

from daglite.plugins.hooks import hook_impl
from daglite.plugins.manager import HookDispatcher, dispatcher_for

NODE = dict(
    key="k", metadata=None, inputs={}, result=1, duration=0.5, reporter="R", started=0.0, worker="w"
)


def _dispatcher(*plugins: object) -> HookDispatcher:
    return dispatcher_for(list(plugins)).for_run()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in daglite_errors(caplog)]


def test_spec_default_after_a_non_spec_default_is_passed_by_keyword():
    seen: list[tuple[Any, ...]] = []

    class Mixed:
        @hook_impl
        def after_node_execute(self, key, extra="kept", reporter=None, duration=None):
            seen.append((key, extra, reporter, duration))

    _dispatcher(Mixed()).call("after_node_execute", **NODE)
    assert seen == [("k", "kept", "R", 0.5)]


class NoYield:
    @hook_impl(wrapper=True)
    def after_node_execute(self):
        return
        yield


class TwoYields:
    @hook_impl(wrapper=True)
    def after_node_execute(self):
        yield
        yield


class OldTwoYields:
    @hook_impl(hookwrapper=True)
    def after_node_execute(self):
        yield
        yield


@pytest.mark.parametrize(
    ("broken", "match"),
    [(NoYield, "did not yield"), (TwoYields, "second yield"), (OldTwoYields, "second yield")],
)
def test_misbehaving_wrapper_is_logged_and_plain_hook_runs(broken, match, caplog):
    calls: list[str] = []

    class Plain:
        @hook_impl
        def after_node_execute(self, key):
            calls.append(key)

    _dispatcher(Plain(), broken()).call("after_node_execute", **NODE)
    assert calls == ["k"]
    errors = _errors(caplog)
    assert len(errors) == 1 and broken.__name__ in errors[0]
    assert match in str(caplog.records[-1].exc_info[1])


class Raises:
    @hook_impl
    def lookup_node_result(self):
        raise ValueError("no cache today")


class Answers:
    @hook_impl
    def lookup_node_result(self):
        return "answer"


class Passes:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hook_impl(wrapper=True)
    def lookup_node_result(self):
        found = yield
        self.seen.append(found)
        return found


def test_first_result_with_wrapper_matches_plain_isolation(caplog):
    # Registered last, Raises is called first; Answers still answers, as without wrappers.
    lookup = dict(key="k", metadata=None, inputs={}, task=None)
    assert _dispatcher(Answers(), Raises()).first_result("lookup_node_result", **lookup) == "answer"
    wrapper = Passes()
    hooks = _dispatcher(Answers(), Raises(), wrapper)
    assert hooks.first_result("lookup_node_result", **lookup) == "answer"
    assert wrapper.seen == ["answer"]
    assert len(_errors(caplog)) == 2  # Raises, once per dispatcher


def test_first_result_with_wrapper_stops_at_the_first_answer():
    calls: list[str] = []

    class Counts:
        @hook_impl
        def lookup_node_result(self):
            calls.append("counts")

    hooks = _dispatcher(Counts(), Answers(), Passes())
    assert (
        hooks.first_result("lookup_node_result", key="k", metadata=None, inputs={}, task=None)
        == "answer"
    )
    assert calls == []


def test_keyboard_interrupt_unwinds_wrappers_and_propagates():
    finished: list[str] = []

    class Interrupts:
        @hook_impl
        def after_node_execute(self):
            raise KeyboardInterrupt

    class Cleans:
        @hook_impl(wrapper=True)
        def after_node_execute(self):
            try:
                yield
            finally:
                finished.append("cleaned")

    with pytest.raises(KeyboardInterrupt):
        _dispatcher(Interrupts(), Cleans()).call("after_node_execute", **NODE)
    assert finished == ["cleaned"]


# -- caller: the positional form the engine uses for per-task hooks ------------------------

AFTER = ("key", "metadata", "inputs", "reporter", "result", "duration", "started", "worker")


def test_caller_gives_each_implementation_the_arguments_it_names():
    seen: list[tuple[str, tuple[Any, ...]]] = []

    class Few:
        @hook_impl
        def after_node_execute(self, worker, key):
            seen.append(("few", (worker, key)))

    class One:
        @hook_impl
        def after_node_execute(self, duration):
            seen.append(("one", (duration,)))

    class Nothing:
        @hook_impl
        def after_node_execute(self):
            seen.append(("none", ()))

    class Default:
        @hook_impl
        def after_node_execute(self, key, extra="kept", reporter=None):
            seen.append(("default", (key, extra, reporter)))

    hooks = _dispatcher(Few(), One(), Nothing(), Default())
    hooks.caller("after_node_execute", AFTER)(*(NODE[name] for name in AFTER))
    assert sorted(seen) == [
        ("default", ("k", "kept", "R")),
        ("few", ("w", "k")),
        ("none", ()),
        ("one", (0.5,)),
    ]


def test_caller_isolates_a_failing_implementation(caplog, monkeypatch):
    monkeypatch.delenv("DAGLITE_STRICT_PLUGINS", raising=False)
    seen: list[str] = []

    class Broken:
        @hook_impl
        def after_node_execute(self, key):
            raise RuntimeError("broken")

    class Fine:
        @hook_impl
        def after_node_execute(self, key):
            seen.append(key)

    hooks = _dispatcher(Broken(), Fine())
    call = hooks.caller("after_node_execute", AFTER)
    with caplog.at_level(logging.ERROR, logger="daglite.plugins"):
        call(*(NODE[name] for name in AFTER))
        call(*(NODE[name] for name in AFTER))
    assert seen == ["k", "k"]
    assert len(_errors(caplog)) == 1 and "Broken" in _errors(caplog)[0]


def test_caller_in_strict_mode_raises(monkeypatch):
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")

    class Broken:
        @hook_impl
        def after_node_execute(self, key):
            raise RuntimeError("broken")

    call = _dispatcher(Broken()).caller("after_node_execute", AFTER)
    with pytest.raises(RuntimeError, match="broken"):
        call(*(NODE[name] for name in AFTER))


def test_caller_without_an_argument_an_implementation_takes_is_an_error():
    class Wants:
        @hook_impl
        def after_node_execute(self, key, worker):
            pass

    with pytest.raises(ValueError, match="'after_node_execute' is called without 'worker'"):
        _dispatcher(Wants()).caller("after_node_execute", ("key",))


def test_caller_runs_wrappers_around_the_plain_implementations():
    seen: list[str] = []

    class Wrapper:
        @hook_impl(wrapper=True)
        def after_node_execute(self, key):
            seen.append(f"before {key}")
            result = yield
            seen.append(f"after {key}")
            return result

    class Plain:
        @hook_impl
        def after_node_execute(self, worker):
            seen.append(f"plain {worker}")

    _dispatcher(Wrapper(), Plain()).caller("after_node_execute", AFTER)(
        *(NODE[name] for name in AFTER)
    )
    assert seen == ["before k", "plain w", "after k"]
