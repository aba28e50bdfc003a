"""How one hook call runs: pluggy's order and wrapper protocol, each implementation isolated.

``HookDispatcher`` (``manager.py``) calls hooks whose implementations are all
plain functions itself, in a tight loop. A hook with a wrapper (``wrapper=True``
or ``hookwrapper=True``) goes through a ``_Chain`` built here, which follows
pluggy's rules:

- wrappers run first, each up to its ``yield``; then the plain implementations;
  then the wrappers' code after ``yield``, innermost first;
- a new-style wrapper gets the inner result from ``yield`` (or the inner error
  thrown in there) and returns the result; an old-style one gets a
  ``pluggy.Result`` it may change with ``force_result`` / ``force_exception``;
- a firstresult hook stops at the first plain implementation that returns
  something other than None.

daglite's isolation comes on top: an implementation that raises is reported to
``failed`` (logged once per plugin and hook) and the others still run. A plain
one that raised is skipped; the wrappers see its error as pluggy would show it,
unless a later implementation of a firstresult hook answered. A wrapper that
raises before its ``yield`` is left out of the call; one that raises after it
passes its error on to the wrappers around it. An error already reported is
not raised again. In strict mode nothing is isolated: the first error stops the
call and unwinds the wrappers exactly as in pluggy.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, final

import pluggy

__all__: list[str] = []

# A plain implementation as the dispatcher calls it: the plugin's display name,
# the function, and the names of the hook arguments it takes, in call order.
_Impl = tuple[str, Callable[..., Any], tuple[str, ...]]
# A wrapper: the same, plus whether it is old-style (``hookwrapper=True``).
_WrapperImpl = tuple[str, Callable[..., Any], tuple[str, ...], bool]
# Told about each isolated failure: plugin name and the error.
_Failed = Callable[[str, BaseException], None]
# Whether an error is isolated (reported, the call goes on) or stops the call.
_Report = Callable[[str, BaseException], bool]
# A wrapper that reached its ``yield``: plugin name, generator, old-style or not.
_Entered = tuple[str, Generator[Any, Any, Any], bool]


def impl_entry(name: str, impl: Any, spec_args: Sequence[str]) -> _Impl:
    """How to call ``impl``: every spec argument it names, with or without a default.

    pluggy's ``HookImpl.argnames`` leaves out parameters that have a default
    (they are in ``kwargnames``); those that are spec arguments are passed too.
    A parameter with a default that the spec does not know keeps its default.
    """
    required: tuple[str, ...] = tuple(impl.argnames)
    optional = [a for a in impl.kwargnames if a in spec_args]
    # Positionally as long as the defaults taken are the leading ones; by keyword after that.
    lead = 0
    while lead < len(optional) and impl.kwargnames[lead] == optional[lead]:
        lead += 1
    names = required + tuple(optional)
    func = impl.function
    if lead < len(optional):
        func = _by_keyword(func, len(required) + lead, names)
    return name, func, names


def _by_keyword(
    func: Callable[..., Any], positional: int, names: tuple[str, ...]
) -> Callable[..., Any]:
    """``func`` called with ``names`` in order, those after the first ``positional`` by keyword."""
    late = names[positional:]

    def call(*values: Any) -> Any:
        return func(*values[:positional], **dict(zip(late, values[positional:])))

    return call


def _args(names: tuple[str, ...], kwargs: dict[str, Any]) -> list[Any]:
    return [kwargs[a] for a in names]


@final
class _Chain:
    """The implementations of one hook that has wrappers, in pluggy's call order.

    Attributes:
        spec_args: The hook's arguments, which ``run`` gets in ``kwargs``.
        name: The wrappers' plugins, for a message about the chain as a whole.
    """

    __slots__ = ("firstresult", "name", "plain", "spec_args", "wrappers")

    def __init__(
        self,
        wrappers: list[_WrapperImpl],
        plain: list[_Impl],
        firstresult: bool,
        spec_args: tuple[str, ...],
    ) -> None:
        self.wrappers: Final = wrappers
        self.plain: Final = plain
        self.firstresult: Final = firstresult
        self.spec_args: Final = spec_args
        self.name: Final = ", ".join(w[0] for w in wrappers)

    def run(self, kwargs: dict[str, Any], failed: _Failed, strict: Callable[[], bool]) -> Any:
        """Call the hook once; returns its result (a list, or one value for firstresult).

        Raises:
            BaseException: In strict mode, an error that no wrapper handled; in
                any mode, one that is not an ``Exception`` (KeyboardInterrupt).
        """
        reported: list[BaseException] = []  # kept alive, so identity is reliable

        def report(name: str, exc: BaseException) -> bool:
            """Whether ``exc`` is isolated (reported) rather than stopping the call."""
            if not isinstance(exc, Exception) or strict():  # asked only when something failed
                return False
            reported.append(exc)
            failed(name, exc)
            return True

        entered, error = self._enter(kwargs, report)
        result: Any = None
        if error is None:
            result, error = self._call_plain(kwargs, report)
        result, error = _unwind(entered, result, error, report)
        if error is not None and not any(error is e for e in reported):
            raise error
        return None if error is not None else result

    def _enter(
        self, kwargs: dict[str, Any], report: _Report
    ) -> tuple[list[_Entered], BaseException | None]:
        """Run each wrapper up to its ``yield``; a failing one is left out (or stops all)."""
        entered: list[_Entered] = []
        for name, func, names, old_style in self.wrappers:
            try:
                gen = func(*_args(names, kwargs))
                if _advance(gen):
                    raise RuntimeError(f"hook wrapper of plugin {name!r} did not yield")
            except BaseException as exc:
                if not report(name, exc):
                    return entered, exc
                continue
            entered.append((name, gen, old_style))
        return entered, None

    def _call_plain(
        self, kwargs: dict[str, Any], report: _Report
    ) -> tuple[Any, BaseException | None]:
        """Call the plain implementations; returns (result, first error)."""
        results: list[Any] = []
        first_error: BaseException | None = None
        for name, func, names in self.plain:
            try:
                value = func(*_args(names, kwargs))
            except BaseException as exc:
                if not report(name, exc):
                    return None, exc
                if first_error is None:
                    first_error = exc
                continue
            if value is not None:
                results.append(value)
                if self.firstresult:
                    return value, None  # a later answer wins over an isolated error
        if self.firstresult:
            return None, first_error
        return results, first_error


def _advance(gen: Generator[Any, Any, Any]) -> bool:
    """Run a wrapper to its ``yield``; True if it returned without yielding."""
    try:
        next(gen)
    except StopIteration:
        return True
    return False


def _unwind(
    entered: list[_Entered], result: Any, error: BaseException | None, report: _Report
) -> tuple[Any, BaseException | None]:
    """Run the wrappers' code after ``yield``, innermost first; returns the final outcome."""
    for name, gen, old_style in reversed(entered):
        finish = _finish_old if old_style else _finish_new
        try:
            result, error = finish(name, gen, result, error)
        except BaseException as exc:
            if exc is not error:  # a new error of this wrapper, not the inner one passing through
                report(name, exc)
            result, error = None, exc
    return result, error


def _finish_new(
    name: str, gen: Generator[Any, Any, Any], result: Any, error: BaseException | None
) -> tuple[Any, None]:
    """Resume a new-style wrapper with the inner outcome; its return value is the result."""
    try:
        if error is not None:
            gen.throw(error)
        else:
            gen.send(result)
    except StopIteration as stop:
        return stop.value, None
    gen.close()
    raise RuntimeError(f"hook wrapper of plugin {name!r} has a second yield")


def _finish_old(
    name: str, gen: Generator[Any, Any, Any], result: Any, error: BaseException | None
) -> tuple[Any, BaseException | None]:
    """Resume an old-style hookwrapper with a ``pluggy.Result`` it may change."""
    outcome: pluggy.Result[Any] = pluggy.Result(result, error)
    try:
        gen.send(outcome)
    except StopIteration:
        if outcome.exception is not None:
            return None, outcome.exception
        return outcome.get_result(), None
    gen.close()
    raise RuntimeError(f"hookwrapper of plugin {name!r} has a second yield")
