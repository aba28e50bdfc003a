"""``evaluate()`` and ``evaluate_async()``: the entry points that run a DAG.

They build the graph, pick the backends and plugins, and hand the run to its
scheduler loop (``daglite._run``).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar, overload

from daglite._job.call import in_worker_process
from daglite._limits import check_capacities, parse_memory
from daglite._run import OnError, _Run
from daglite._run.resources import ResourceGate, check_requests
from daglite.backends import backend_namer, get_backend
from daglite.backends.base import Backend
from daglite.graph.builder import build_graph
from daglite.plugins.manager import dispatcher_for
from daglite.settings import default_backend_name
from daglite.tasks import Task, TaskFuture

__all__ = ["evaluate", "evaluate_async"]

T = TypeVar("T")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
K = TypeVar("K", bound=Hashable)


# -- entry points -----------------------------------------------------------------


def _roots_of(value: Any) -> tuple[list[TaskFuture[Any]], Callable[[list[Any]], Any]]:
    """The futures to compute and how to put their results back in ``value``'s shape."""
    if isinstance(value, TaskFuture):
        return [value], lambda results: results[0]
    if isinstance(value, (list, tuple)):
        positions = [i for i, v in enumerate(value) if isinstance(v, TaskFuture)]

        def rebuild_seq(results: list[Any]) -> Any:
            items = list(value)
            for pos, res in zip(positions, results):
                items[pos] = res
            return type(value)(items) if isinstance(value, tuple) else items

        return [value[i] for i in positions], rebuild_seq
    if isinstance(value, dict):
        keys = [k for k, v in value.items() if isinstance(v, TaskFuture)]

        def rebuild_map(results: list[Any]) -> Any:
            out = dict(value)
            out.update(zip(keys, results))
            return out

        return [value[k] for k in keys], rebuild_map
    raise TypeError(
        f"evaluate() needs a TaskFuture (or a list, tuple or dict of them), got "
        f"{type(value).__name__}; did you call the task?"
        if isinstance(value, Task)
        else f"evaluate() needs a TaskFuture (or a list, tuple or dict of them), got {value!r}"
    )


def _resolve_backend(backend: str | Backend | None, options: dict[str, Any]) -> Backend:
    if isinstance(backend, Backend):
        if options:
            raise TypeError("backend options can only be given with a backend name")
        return _within_budget(backend)
    if backend is None:
        backend = default_backend_name()
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a name or a Backend instance, got {backend!r}")
    return _within_budget(get_backend(backend, **options))


def _within_budget(backend: Backend) -> Backend:
    """The backend a run uses for ``backend``: itself, unless the run is nested in a worker.

    gh-15: a task running in a worker process (a pool's or Dask's) holds one
    slot of its caller's budget. A run it starts on a backend that would
    start worker processes of its own (a process pool, an embedded Dask
    cluster) runs on that slot instead, in this process: no pool of pools,
    and nothing left behind at exit.
    """
    if backend.starts_processes() and in_worker_process():
        return get_backend("inline")
    return backend


def _backend_picker(default: Backend) -> Callable[[Task[Any, Any]], Backend]:
    cache: dict[Any, Backend] = {}

    def backend_of(task: Task[Any, Any]) -> Backend:
        chosen = task.backend
        if chosen is None:
            return default
        if isinstance(chosen, Backend):
            return _within_budget(chosen)
        found = cache.get(chosen)
        if found is None:
            found = cache[chosen] = _within_budget(get_backend(chosen))
        return found

    return backend_of


def _prepare(  # noqa: PLR0913, PLR0917 (one argument per option of evaluate)
    future: Any,
    backend: str | Backend | None,
    plugins: Iterable[object] | None,
    progress: bool,
    report: str | os.PathLike[str] | None,
    trace: str | os.PathLike[str] | None,
    on_error: str,
    options: dict[str, Any],
    is_async: bool,
    caching: tuple[Any, float | None] = (None, None),
    limits: tuple[object, object] = (None, None),
) -> tuple[_Run, Callable[[list[Any]], Any]]:
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    memory = parse_memory(limits[0], "evaluate(): memory_per_task")
    capacities = check_capacities(limits[1])
    roots, rebuild = _roots_of(future)
    default = _resolve_backend(backend, options)
    pick = _backend_picker(default)

    name_of = backend_namer(backend)
    graph = build_graph(roots, name_of)
    tasks = {f.task for f in graph.futures}
    for task in tasks:
        name_of(task)  # an unknown backend name fails here, before anything runs
    check_requests(tasks, capacities)  # and so does a resource the run cannot give
    extra = list(plugins or ())
    if caching[0] is not None or any(t.cache for t in tasks):
        extra += _cache_plugin(caching, tasks, extra)
    if progress:
        from daglite.plugins.builtin.progress import progress_plugin_if_terminal

        bar = progress_plugin_if_terminal()
        if bar is not None:
            extra.append(bar)
    if report is not None:
        from daglite.plugins.builtin.report import report_plugin

        extra.append(report_plugin(report))
    if trace is not None:
        from daglite.plugins.builtin.trace import trace_plugin

        extra.append(trace_plugin(trace))
    hooks = dispatcher_for(extra).for_run()
    run = _Run(graph, default, pick, hooks, on_error, is_async)  # type: ignore[arg-type]
    run.memory_default = memory
    if capacities:
        run.gate = ResourceGate(capacities)
    return run, rebuild


def _cache_plugin(
    caching: tuple[Any, float | None], tasks: set[Task[Any, Any]], plugins: list[object]
) -> list[object]:
    """The cache plugin ``evaluate(cache=..., cache_ttl=...)`` adds, if any."""
    from daglite.plugins.builtin.cache import run_cache_plugin
    from daglite.plugins.manager import get_plugin_manager

    registered = [p for _, p in get_plugin_manager().list_name_plugin()]
    found = run_cache_plugin(caching[0], caching[1], tasks, plugins + registered)
    return [] if found is None else [found]


@overload
def evaluate(
    future: TaskFuture[T],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> T: ...
@overload
def evaluate(
    future: tuple[TaskFuture[T1], TaskFuture[T2]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> tuple[T1, T2]: ...
@overload
def evaluate(
    future: tuple[TaskFuture[T1], TaskFuture[T2], TaskFuture[T3]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> tuple[T1, T2, T3]: ...
@overload
def evaluate(
    future: list[TaskFuture[T]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> list[T]: ...
@overload
def evaluate(
    future: dict[K, TaskFuture[T]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> dict[K, T]: ...
def evaluate(  # noqa: PLR0913 (one keyword per option)
    future: Any,
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> Any:
    """Run the DAG behind ``future`` and return its result.

    Args:
        future: A ``TaskFuture``, or a list, tuple or dict of them (same shape back).
        backend: A backend name, a ``Backend`` instance, or None for the default
            (``DAGLITE_BACKEND``, else ``"inline"``). A task's own ``backend=`` wins.
        plugins: Plugins for this evaluation only, on top of the global ones.
        progress: Show a live progress bar (needs the ``rich`` extra) on a terminal.
        report: Write a self-contained HTML report of the run to this file
            when it ends (see ``daglite.plugins.builtin.ReportPlugin``).
        trace: Write a Chrome trace file of the run to this file when it ends,
            also when it fails (``daglite.plugins.builtin.TracePlugin``; open it
            in Perfetto).
        on_error: ``"raise"`` fails fast; ``"continue"`` runs everything that does
            not depend on a failure, then raises ``EvaluationError`` with all of them.
        cache: Where to keep results across runs: a directory or an fsspec URL
            (every task is cached except those marked ``cache=False``), True for
            the default directory (``$DAGLITE_CACHE_DIR`` or the user's cache
            directory), None to cache only tasks marked ``cache=True`` (in the
            default directory), False for no cache. See docs/caching.md.
        cache_ttl: Seconds after which cached results are stale (None: never).
        memory_per_task: Memory limit of every task that sets no ``memory=``
            (``"2GB"``, or bytes); enforced on the processes backend.
        resources: Capacities of named resources (``{"gpu": 2}``): calls of
            tasks with ``resources=`` never hold more at once, on any backend.
        **backend_options: Constructor arguments of the named backend (``max_workers=``).

    Raises:
        TaskError: A task failed (``TaskTimeoutError``, ``TaskMemoryError``,
            ``WorkerLostError`` are subclasses).
        EvaluationError: With ``on_error="continue"``, when any task failed.
        BackendError: For an unknown or unavailable backend.
        GraphError: For a malformed graph.
        TypeError: If ``report`` or ``trace`` is not a ``str`` or ``os.PathLike``.
        ValueError: If ``report`` or ``trace`` is a directory or its directory is
            missing; ``cache_ttl`` is not a positive number; for a bad
            ``memory_per_task`` or ``resources``; or when a task asks for a
            resource the run does not have, or more than its capacity.
        PermissionError: If the cache directory can be written by other users.
    """
    run, rebuild = _prepare(
        future,
        backend,
        plugins,
        progress,
        report,
        trace,
        on_error,
        backend_options,
        False,
        (cache, cache_ttl),
        (memory_per_task, resources),
    )
    return rebuild(run.execute())


@overload
async def evaluate_async(
    future: TaskFuture[T],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> T: ...
@overload
async def evaluate_async(
    future: tuple[TaskFuture[T1], TaskFuture[T2]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> tuple[T1, T2]: ...
@overload
async def evaluate_async(
    future: tuple[TaskFuture[T1], TaskFuture[T2], TaskFuture[T3]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> tuple[T1, T2, T3]: ...
@overload
async def evaluate_async(
    future: list[TaskFuture[T]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> list[T]: ...
@overload
async def evaluate_async(
    future: dict[K, TaskFuture[T]],
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> dict[K, T]: ...
async def evaluate_async(  # noqa: PLR0913 (one keyword per option)
    future: Any,
    *,
    backend: str | Backend | None = None,
    plugins: Iterable[object] | None = None,
    progress: bool = False,
    report: str | os.PathLike[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    on_error: OnError = "raise",
    cache: bool | str | os.PathLike[str] | None = None,
    cache_ttl: float | None = None,
    memory_per_task: int | str | None = None,
    resources: Mapping[str, float] | None = None,
    **backend_options: Any,
) -> Any:
    """Like ``evaluate``, without blocking the running event loop.

    The scheduler loop runs in a helper thread (which is where hooks are then
    called, still one at a time, in a copy of the caller's context variables);
    cancelling the awaiting task stops the run.
    ``trace=`` writes a Chrome trace file, as for ``evaluate``.
    """
    run, rebuild = _prepare(
        future,
        backend,
        plugins,
        progress,
        report,
        trace,
        on_error,
        backend_options,
        True,
        (cache, cache_ttl),
        (memory_per_task, resources),
    )
    # The loop runs in the caller's context (as asyncio.to_thread does), so
    # hooks see the caller's context variables: its current span, say.
    context = contextvars.copy_context()
    task = asyncio.get_running_loop().run_in_executor(None, context.run, run.execute)
    try:
        return rebuild(await asyncio.shield(task))
    except asyncio.CancelledError:
        run.cancel()
        try:
            await task
        except BaseException:
            pass
        raise
