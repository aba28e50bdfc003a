"""Issue 12: ``HookDispatcher`` calls one hook as pluggy would, without running a DAG."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from daglite.plugins.hooks import hook_impl
from daglite.plugins.manager import HookDispatcher, dispatcher_for

NODE = dict(
    key="k", metadata=None, inputs={}, result=1, duration=0.5, reporter="R", started=0.0, worker="w"
)


def _dispatcher(*plugins: object) -> HookDispatcher:
    return dispatcher_for(list(plugins)).for_run()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


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
