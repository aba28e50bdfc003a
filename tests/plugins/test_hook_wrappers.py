"""Issue 12: ``wrapper=True``, ``hookwrapper=True``, ``tryfirst`` and ``trylast`` as in pluggy."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import pluggy
import pytest
from tests.plugins._records import daglite_errors

from daglite import evaluate, task
from daglite.plugins.hooks import CachedResult, hook_impl, specs
from daglite.plugins.hooks.markers import PROJECT_NAME


@task
def left(x: int) -> int:
    return x + 1


@task
def right(x: int) -> int:
    return x * 10


@task
def total(a: int, b: int) -> int:
    return a + b


def diamond() -> Any:
    return total(left(1), right(2))  # 2 + 20


KEYS = {"left", "right", "total"}


class Log:
    """Where plugins write (tag, key) as they are called."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def per_key(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for tag, key in self.entries:
            out[key].append(tag)
        return dict(out)


class Tagged:
    def __init__(self, log: Log, tag: str) -> None:
        self.log, self.tag = log, tag


class Plain(Tagged):
    @hook_impl
    def after_node_execute(self, key):
        self.log.entries.append((self.tag, key))


class First(Tagged):
    @hook_impl(tryfirst=True)
    def after_node_execute(self, key):
        self.log.entries.append((self.tag, key))


class Last(Tagged):
    @hook_impl(trylast=True)
    def after_node_execute(self, key):
        self.log.entries.append((self.tag, key))


class Wrapper(Tagged):
    @hook_impl(wrapper=True)
    def after_node_execute(self, key):
        self.log.entries.append((f"{self.tag}>", key))
        try:
            return (yield)
        finally:  # also when an inner error is thrown in at the yield
            self.log.entries.append((f"<{self.tag}", key))


class LastWrapper(Tagged):
    @hook_impl(wrapper=True, trylast=True)
    def after_node_execute(self, key):
        self.log.entries.append((f"{self.tag}>", key))
        result = yield
        self.log.entries.append((f"<{self.tag}", key))
        return result


class OldWrapper(Tagged):
    @hook_impl(hookwrapper=True)
    def after_node_execute(self, key):
        self.log.entries.append((f"{self.tag}>", key))
        outcome = yield
        outcome.get_result()
        self.log.entries.append((f"<{self.tag}", key))


def _plugins(log: Log) -> list[object]:
    """Registered in this order: plain and wrappers, tryfirst and trylast, mixed up."""
    return [
        Last(log, "last"),
        Wrapper(log, "w1"),
        Plain(log, "p1"),
        LastWrapper(log, "wlast"),
        First(log, "first"),
        OldWrapper(log, "old"),
        Plain(log, "p2"),
        Wrapper(log, "w2"),
    ]


def _pluggy_order() -> list[str]:
    """The order pluggy itself calls the same implementations in, for one node."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(specs.NodeSpecs)
    log = Log()
    for plugin in _plugins(log):
        pm.register(plugin)
    pm.hook.after_node_execute(
        key="k",
        metadata=None,
        inputs={},
        result=None,
        duration=0.0,
        reporter=None,
        started=0.0,
        worker="",
    )
    return [tag for tag, _ in log.entries]


def test_wrappers_and_ordering_match_pluggy_on_every_node(backend):
    expected = _pluggy_order()
    assert expected == [
        "w2>", "old>", "w1>", "wlast>",  # wrappers first, last registered first, trylast last
        "first", "p2", "p1", "last",
        "<wlast", "<w1", "<old", "<w2",
    ]  # fmt: skip
    log = Log()
    assert evaluate(diamond(), backend=backend, plugins=_plugins(log)) == 22
    assert log.per_key() == {key: expected for key in KEYS}


class SeesResult:
    """A new-style wrapper that sees and replaces the result of ``lookup_node_result``."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hook_impl(wrapper=True)
    def lookup_node_result(self, key):
        found = yield
        self.seen[key] = found
        return CachedResult(7) if key == "right" else found


class Answers:
    @hook_impl
    def lookup_node_result(self, key):
        return CachedResult(100) if key == "left" else None


class ForcesResult:
    """An old-style hookwrapper that serves ``left`` from its own cache."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hook_impl(hookwrapper=True)
    def lookup_node_result(self, key):
        outcome = yield
        self.seen[key] = outcome.get_result()
        if key == "left":
            outcome.force_result(CachedResult(1000))


def test_old_style_hookwrapper_forces_the_lookup_result(backend):
    wrapper = ForcesResult()
    # left is served 1000 by the wrapper (over the plain 100), right runs: 1000 + 20.
    assert evaluate(diamond(), backend=backend, plugins=[Answers(), wrapper]) == 1020
    assert repr(wrapper.seen["left"]) == "CachedResult(100)"
    assert wrapper.seen["right"] is None


def test_new_style_wrapper_sees_and_replaces_the_lookup_result(backend):
    wrapper = SeesResult()
    # left comes from the plain plugin (100), right from the wrapper (7).
    assert evaluate(diamond(), backend=backend, plugins=[Answers(), wrapper]) == 107
    assert repr(wrapper.seen["left"]) == "CachedResult(100)"
    assert wrapper.seen["right"] is None


class WrapperBoom(Exception):
    pass


class FailsBeforeYield:
    @hook_impl(wrapper=True)
    def after_node_execute(self, key):
        raise WrapperBoom(f"before yield, {key}")
        yield


class FailsAfterYield:
    @hook_impl(wrapper=True)
    def after_node_execute(self, key):
        yield
        raise WrapperBoom(f"after yield, {key}")


class OldFailsAfterYield:
    @hook_impl(hookwrapper=True)
    def after_node_execute(self, key):
        yield
        raise WrapperBoom(f"after yield, {key}")


FAILING_WRAPPERS = [FailsBeforeYield, FailsAfterYield, OldFailsAfterYield]


@pytest.mark.parametrize("failing", FAILING_WRAPPERS)
def test_raising_wrapper_is_logged_once_and_plain_hooks_still_run(backend, failing, caplog):
    caplog.set_level(logging.DEBUG)
    log = Log()
    plugins = [Plain(log, "inner"), failing(), Wrapper(log, "outer")]
    assert evaluate(diamond(), backend=backend, plugins=plugins) == 22
    # The plain implementation ran on every node; the wrapper around the failing one was resumed.
    assert log.per_key() == {key: ["outer>", "inner", "<outer"] for key in KEYS}
    errors = daglite_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert failing.__name__ in errors[0].getMessage()
    assert "after_node_execute" in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is WrapperBoom
    counts = [r for r in caplog.records if "3 times" in r.getMessage()]
    assert len(counts) == 1 and failing.__name__ in counts[0].getMessage()


@pytest.mark.parametrize("failing", FAILING_WRAPPERS)
def test_strict_mode_reraises_wrapper_error(backend, failing, monkeypatch):
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")
    with pytest.raises(WrapperBoom):
        evaluate(left(1), backend=backend, plugins=[failing()])


class PlainBoom(Exception):
    pass


class PlainFails:
    @hook_impl
    def after_node_execute(self, key):
        raise PlainBoom(key)


class CatchesInner:
    def __init__(self) -> None:
        self.caught: list[BaseException] = []

    @hook_impl(wrapper=True)
    def after_node_execute(self, key):
        try:
            return (yield)
        except PlainBoom as exc:
            self.caught.append(exc)
            return []


def test_plain_error_is_thrown_into_wrapper_and_logged_once(backend, caplog):
    caplog.set_level(logging.DEBUG)
    log, catcher = Log(), CatchesInner()
    plugins = [PlainFails(), Plain(log, "other"), catcher, Wrapper(log, "outer")]
    assert evaluate(diamond(), backend=backend, plugins=plugins) == 22
    assert sorted(str(e) for e in catcher.caught) == sorted(KEYS)
    assert log.per_key() == {key: ["outer>", "other", "<outer"] for key in KEYS}
    errors = daglite_errors(caplog)
    assert len(errors) == 1 and "PlainFails" in errors[0].getMessage()


def test_strict_mode_lets_a_wrapper_handle_an_inner_error(backend, monkeypatch):
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")
    catcher = CatchesInner()
    assert evaluate(left(1), backend=backend, plugins=[PlainFails(), catcher]) == 2
    assert [str(e) for e in catcher.caught] == ["left"]
