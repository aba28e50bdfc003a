"""``@task``, ``Task`` and the lazy ``TaskFuture``.

This module only binds arguments and records what should run; it never runs
anything. Binding happens at call time against a signature digest computed once
per function (``_Signature``), so mistakes raise ``TypeError`` immediately and
building large graphs stays cheap.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar, final, overload

from typing_extensions import ParamSpec

from daglite._cache_policy import CacheSetting, check_cache_setting
from daglite._limits import check_resources, parse_memory

__all__ = ["Task", "TaskFuture", "task"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_MapMode = Literal["product", "zip"]
_OPTION_NAMES = frozenset(
    {"name", "description", "backend", "retries", "timeout", "cache", "memory", "resources"}
)
# Sequence types that product()/zip() fan out; anything else is a fixed value.
_FANNED_TYPES = (list, tuple, range)


@final
class _Signature:
    """What binding needs to know about a function, computed once."""

    __slots__ = (
        "call_style",
        "defaults",
        "keyword_ok",
        "n_positional",
        "n_required",
        "params",
        "positional",
        "positional_only",
        "required",
        "unary",
        "var_keyword",
        "var_positional",
        "zip_bind",
    )

    def __init__(self, func: Callable[..., Any]) -> None:
        sig = inspect.signature(func)
        kinds = inspect.Parameter
        self.params: tuple[str, ...] = tuple(sig.parameters)
        self.positional = tuple(
            n
            for n, p in sig.parameters.items()
            if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        )
        self.positional_only = tuple(
            n for n, p in sig.parameters.items() if p.kind is kinds.POSITIONAL_ONLY
        )
        self.keyword_ok = frozenset(
            n
            for n, p in sig.parameters.items()
            if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        )
        self.var_positional = next(
            (n for n, p in sig.parameters.items() if p.kind is kinds.VAR_POSITIONAL), None
        )
        self.var_keyword = next(
            (n for n, p in sig.parameters.items() if p.kind is kinds.VAR_KEYWORD), None
        )
        self.defaults = {
            n: p.default
            for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        self.required = tuple(
            n
            for n, p in sig.parameters.items()
            if p.default is inspect.Parameter.empty
            and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        )
        # How to call the function with bound arguments; None for ``func(**bound)``.
        self.call_style = self._compute_call_style()
        # Positional arguments alone can be bound by zipping them with the
        # parameter names when the function is plain and its required
        # parameters come first (the common ``add(1, 2)``): ``Task._bind`` then
        # skips the general walk.
        self.zip_bind = self.is_plain and self.required == self.positional[: len(self.required)]
        self.n_required = len(self.required)
        self.n_positional = len(self.positional)
        # One parameter, required, nothing else: ``f(x)`` binds as ``{"x": x}``.
        self.unary = self.zip_bind and not self.defaults and self.n_positional == 1

    @property
    def is_plain(self) -> bool:
        """True when ``func(**bound)`` is a correct call (no /, *args or **kwargs)."""
        return not self.positional_only and self.var_positional is None and not self.var_keyword

    def _compute_call_style(self) -> tuple[tuple[str, ...], str | None, str | None] | None:
        if self.is_plain:
            return None
        # Before a ``*args`` every parameter must go positionally, or the extra
        # values would collide with it.
        positional = self.positional if self.var_positional is not None else self.positional_only
        return (positional, self.var_positional, self.var_keyword)


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class Task(Generic[P, R]):
    """A plain function wrapped for lazy, graph-based execution.

    Calling a task does not run it: it binds the arguments and returns a
    ``TaskFuture``. ``task.func`` is the undecorated function.

    Attributes:
        func: The wrapped function.
        name: Name used in keys, hooks and errors (default: the function's name).
        description: Free text (default: the first docstring line).
        backend: Backend name or instance this task always runs on, or None.
        retries: How many more times a failing call is re-run.
        timeout: Seconds after which a call fails with ``TaskTimeoutError``.
        memory: Bytes a call may use (its worker's RSS) before it fails with
            ``TaskMemoryError`` (processes backend), or None.
        resources: Named resources each call holds while it runs
            (``{"gpu": 1}``), or None; capacities are ``evaluate(resources=)``.
        fixed: Parameters fixed by ``partial()``.
        cache: True or a ``CachePolicy`` to cache results, False never to,
            None (default) to follow ``evaluate(cache=...)`` (see docs/caching.md).
    """

    __slots__ = (
        "_sig",
        "_unary",
        "backend",
        "cache",
        "description",
        "fixed",
        "func",
        "is_async",
        "memory",
        "name",
        "resources",
        "retries",
        "timeout",
    )

    def __init__(  # noqa: PLR0913 - one argument per option
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        backend: Any = None,
        retries: int = 0,
        timeout: float | None = None,
        memory: int | str | None = None,
        resources: Mapping[str, float] | None = None,
        fixed: Mapping[str, Any] | None = None,
        cache: CacheSetting = None,
        _sig: _Signature | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"@task needs a callable, got {func!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.func = func
        self.name: str = name or getattr(func, "__name__", None) or type(func).__name__
        if description is None:
            doc = inspect.getdoc(func) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self.description: str = description
        self.backend = backend
        self.retries = retries
        self.timeout = None if timeout is None else float(timeout)
        # gh-15: checked here, so a bad limit fails where the task is made.
        self.memory = parse_memory(memory, f"task {self.name!r}: memory")
        self.resources = check_resources(resources, self.name)
        self.fixed: dict[str, Any] = dict(fixed or {})
        self.is_async = inspect.iscoroutinefunction(func)
        self._sig = _sig or _Signature(func)
        check_cache_setting(self.name, self._sig.params, cache)
        self.cache = cache
        # The one parameter of ``f(x)`` when that call binds as ``{name: x}``.
        self._unary = self._sig.positional[0] if self._sig.unary and not self.fixed else None

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"

    # -- options -----------------------------------------------------------------

    def _copy(self, **changes: Any) -> Task[Any, R]:
        opts: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "backend": self.backend,
            "retries": self.retries,
            "timeout": self.timeout,
            "memory": self.memory,
            "resources": self.resources,
            "fixed": self.fixed,
            "cache": self.cache,
        }
        opts.update(changes)
        return Task(self.func, _sig=self._sig, **opts)

    def with_options(self, **options: Any) -> Task[P, R]:
        """Return a copy with some options changed; this task is left as it is.

        Args:
            **options: Any of ``name``, ``description``, ``backend``, ``retries``,
                ``timeout``, ``cache``, ``memory``, ``resources``.

        Raises:
            TypeError: For an unknown option name.
        """
        for opt in options:
            if opt not in _OPTION_NAMES:
                raise TypeError(
                    f"task {self.name!r}: unknown option {opt!r}{_did_you_mean(opt, _OPTION_NAMES)}"
                )
        return self._copy(**options)

    def partial(self, **fixed: Any) -> Task[..., R]:
        """Return a task with some parameters fixed (values may be futures).

        Raises:
            TypeError: For an unknown parameter, or one fixed already.
        """
        for name in fixed:
            self._check_keyword(name)
        return self._copy(fixed={**self.fixed, **fixed})

    # -- binding -----------------------------------------------------------------

    def _check_keyword(self, name: str) -> None:
        sig = self._sig
        if name in self.fixed:
            raise TypeError(
                f"task {self.name!r}: parameter {name!r} is already fixed by .partial()"
            )
        if name not in sig.keyword_ok and (sig.var_keyword is None or name == sig.var_keyword):
            if name in sig.positional_only:
                raise TypeError(
                    f"task {self.name!r}: parameter {name!r} is positional-only; "
                    "pass it by position"
                )
            raise TypeError(
                f"task {self.name!r} has no parameter {name!r}{_did_you_mean(name, sig.params)}"
            )

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind call arguments to parameter names, defaults included.

        Like ``inspect.BoundArguments.arguments``: ``*args`` are bound as a tuple
        under their parameter's name, extra keywords as a dict under ``**``'s name.
        """
        sig = self._sig
        fixed = self.fixed
        if not kwargs and not fixed and sig.zip_bind:
            n = len(args)
            if sig.n_required <= n <= sig.n_positional:
                if n == 1 and not sig.defaults:
                    return {sig.positional[0]: args[0]}
                bound = dict(sig.defaults)
                bound.update(zip(sig.positional, args))
                return bound
        bound = dict(sig.defaults)
        extras: dict[str, Any] = {}
        for name, value in fixed.items():
            (bound if name in sig.params else extras)[name] = value
        positional_names = self._bind_positional(args, bound) if args else ()
        for name, value in kwargs.items():
            if name in fixed or name not in sig.keyword_ok:
                self._check_keyword(name)
                if name not in sig.keyword_ok:  # accepted by **kwargs
                    extras[name] = value
                    continue
            if name in positional_names:
                raise TypeError(f"task {self.name!r} got multiple values for parameter {name!r}")
            bound[name] = value
        for name in sig.required:
            if name not in bound:
                raise TypeError(f"task {self.name!r} is missing required parameter {name!r}")
        if sig.var_keyword is not None and (extras or sig.var_keyword not in bound):
            bound[sig.var_keyword] = extras
        return bound

    def _bind_positional(self, args: tuple[Any, ...], bound: dict[str, Any]) -> Sequence[str]:
        """Bind ``args`` into ``bound`` by position (extras under ``*args``' name).

        Returns:
            The names of the parameters bound by position.
        """
        sig, fixed = self._sig, self.fixed
        free = [n for n in sig.positional if n not in fixed] if fixed else sig.positional
        positional_names = free[: len(args)]
        if len(args) > len(free):
            if sig.var_positional is None:
                raise TypeError(
                    f"task {self.name!r} takes {len(free)} positional argument(s) "
                    f"but {len(args)} were given"
                )
            bound[sig.var_positional] = tuple(args[len(free) :])
        for name, value in zip(free, args):
            bound[name] = value
        return positional_names

    def __call__(self, *args: Any, **kwargs: Any) -> TaskFuture[R]:
        """Bind arguments and return a lazy future; nothing runs.

        Raises:
            TypeError: For a missing, unknown or already fixed parameter.
        """
        unary = self._unary
        if unary is not None and len(args) == 1 and not kwargs:
            return TaskFuture(self, {unary: args[0]})  # the common f(x)
        return TaskFuture(self, self._bind(args, kwargs))

    def _first_unbound(self, taken: Iterable[str]) -> str:
        taken = set(taken) | set(self.fixed)
        for name in self._sig.params:
            if name not in taken and name != self._sig.var_keyword:
                return name
        raise TypeError(f"task {self.name!r} has no unbound parameter left to receive the input")

    # -- fan-out -----------------------------------------------------------------

    def product(self, **kwargs: Any) -> TaskFuture[list[R]]:
        """One call per element of the cartesian product of the sequence arguments.

        Lists, tuples, ranges and futures are fanned out (in the order given,
        like ``itertools.product``); other values are fixed for every call.
        """
        return self._fan_out(kwargs, "product")

    def zip(self, **kwargs: Any) -> TaskFuture[list[R]]:
        """One call per position of the sequence arguments, which must have equal lengths.

        Raises:
            GraphError: If the known sequences have different lengths.
        """
        return self._fan_out(kwargs, "zip")

    def _fan_out(self, kwargs: dict[str, Any], mode: _MapMode) -> TaskFuture[list[R]]:
        iterated: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for name, value in kwargs.items():
            if isinstance(value, TaskFuture):
                iterated[name] = value
            elif isinstance(value, _FANNED_TYPES):
                iterated[name] = list(value)
            else:
                fixed[name] = value
        if not iterated:
            raise TypeError(f"task {self.name!r}: {mode}() needs at least one sequence argument")
        if mode == "zip":
            _check_zip_lengths(self.name, iterated)
        # Bind once with placeholders so mistakes surface now, not at run time.
        probe = self._bind((), {**fixed, **dict.fromkeys(iterated)})
        for name in iterated:
            del probe[name]
        return TaskFuture(self, probe, iterated, mode)


def _check_zip_lengths(task_name: str, iterated: Mapping[str, Any]) -> None:
    from daglite.exceptions import GraphError

    lengths = {n: len(v) for n, v in iterated.items() if not isinstance(v, TaskFuture)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n}={size}" for n, size in lengths.items())
        raise GraphError(f"task {task_name!r}: zip() needs sequences of equal length, got {shown}")


class TaskFuture(Generic[T_co]):
    """A lazy result: one call of a task, or a fan-out of calls (a list future).

    Nothing runs until ``evaluate``. A future passed as an argument to another
    task becomes an edge of the graph; a future used twice is one node.
    """

    __slots__ = ("iterated", "kwargs", "mode", "task")

    def __init__(
        self,
        task: Task[Any, Any],
        kwargs: dict[str, Any],
        iterated: dict[str, Any] | None = None,
        mode: _MapMode | None = None,
    ) -> None:
        self.task = task
        self.kwargs = kwargs
        self.iterated = iterated
        self.mode = mode

    def __repr__(self) -> str:
        kind = f" {self.mode}" if self.mode else ""
        return f"<TaskFuture{kind} of {self.task.name!r}>"

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of a TaskFuture ({self.task.name!r}) is only known after "
            "evaluate(); branch inside a task instead"
        )

    def then(self, next_task: Task[..., R], **kwargs: Any) -> TaskFuture[R]:
        """Run ``next_task`` with this result as its first unbound parameter."""
        target = next_task._first_unbound(kwargs)
        return next_task(**{target: self}, **kwargs)

    def map(
        self: TaskFuture[Iterable[Any]], fn: Task[..., R], **kwargs: Any
    ) -> TaskFuture[list[R]]:
        """Apply ``fn`` to each element of this list future, one node per element."""
        target = fn._first_unbound(kwargs)
        return fn.product(**{target: self}, **kwargs)

    def join(self: TaskFuture[Iterable[Any]], fn: Task[..., R], **kwargs: Any) -> TaskFuture[R]:
        """Pass the whole list to ``fn`` as its first unbound parameter."""
        return self.then(fn, **kwargs)


@overload
def task(func: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def task(func: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = None,
    description: str | None = None,
    backend: Any = None,
    retries: int = 0,
    timeout: float | None = None,
    cache: CacheSetting = None,
    memory: int | str | None = None,
    resources: Mapping[str, float] | None = None,
) -> _TaskDecorator: ...
def task(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Turn a function (sync or ``async def``) into a ``Task``.

    Use bare (``@task``) or with options (``@task(name=..., backend="threads",
    retries=2, timeout=10.0, cache=True, memory="2GB", resources={"gpu": 1})``).

    Raises:
        TypeError: For an unknown option, or a ``cache`` that is not a bool, None
            or a ``CachePolicy``.
        ValueError: For a negative ``retries``, a non-positive ``timeout``, a
            malformed or non-positive ``memory``, or bad ``resources``.
    """
    for opt in options:
        if opt not in _OPTION_NAMES:
            raise TypeError(
                f"@task got an unknown option {opt!r}{_did_you_mean(opt, _OPTION_NAMES)}"
            )
    if func is None:
        return _TaskDecorator(options)
    return Task(func, **options)


@final
class _TaskDecorator:
    """What ``@task(...)`` returns: applies the options to the decorated function."""

    __slots__ = ("options",)

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    @overload
    def __call__(self, func: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> Task[P, R]: ...
    def __call__(self, func: Callable[..., Any], /) -> Any:
        return Task(func, **self.options)


Task.__module__ = "daglite"
TaskFuture.__module__ = "daglite"
