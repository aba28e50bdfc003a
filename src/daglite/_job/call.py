"""Running one call where it landed: its context, its timeout, its outcome.

``invoke`` is the one place a task function is called with its arguments;
``_run_call`` wraps it with the call's reporter context, a start event when a
plugin waits for one, a timeout when the task has one, and returns the
``Outcome``. A process-pool worker tells this module what to do around calls
(``worker``): mark which call it runs, and end itself when a call times out.
"""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
import threading
import time
from array import array
from collections.abc import Callable
from types import CoroutineType
from typing import Any, NoReturn, Protocol

from daglite._job import channel
from daglite._job.channel import _Home, _NodeContext
from daglite._job.records import Outcome, SliceValues, _Call, _new_outcome
from daglite.plugins import reporters
from daglite.plugins.reporters import START_EVENT, _CallerContext


class _PoolWorker(Protocol):
    """What a process-pool worker does around the calls it runs."""

    def running(self, token: int, memory: int = 0) -> None:
        """Call ``token`` runs now (0: none), with a limit of ``memory`` bytes (0: none)."""

    def timed_out(self, token: int) -> NoReturn:
        """Call ``token`` ran past its timeout: record it and end the process."""
        ...


# Set by a process-pool worker's initializer (``backends._process_worker``);
# None everywhere else.
worker: _PoolWorker | None = None
# How this process is named in worker labels when calls run in it for another
# process: ``pid N`` unless a backend gives its workers names (Dask: the
# worker's address).
process_label = ""
# The worker label of calls the engine runs on its own thread (inline).
CALLER_LABEL = "caller"


def in_worker_process() -> bool:
    """True in a process that runs calls for a caller elsewhere (a pool or Dask worker).

    A run started by a task here is nested in that caller's budget (gh-15).
    A Dask worker names itself (``process_label``); one in the caller's own
    process (a cluster with ``processes=False``, a job run locally) is not a
    worker process: those run in the process that started them.
    """
    if worker is not None:
        return True
    return bool(process_label) and multiprocessing.parent_process() is not None


def _pool_worker(home: _Home) -> _PoolWorker | None:
    """This process's pool worker, for a call that came from the caller.

    None for a call of a run nested in a task here (its home is local): the
    worker's slot names the caller's call, and the nested call's timeout must
    not end the worker under it.
    """
    return worker if home.sink is None else None


def worker_label(home: _Home) -> str:
    """Where the running call runs: a thread of the caller's process, or a process.

    In the caller's process: ``caller`` on the engine's own thread, else the
    thread's name (``daglite-thread_0``); elsewhere the process
    (``process_label``, or ``pid N``).
    """
    if home.local():
        if threading.get_ident() == home.engine_thread:
            return CALLER_LABEL
        return threading.current_thread().name
    return process_label or f"pid {os.getpid()}"


def invoke(
    func: Callable[..., Any],
    style: tuple[tuple[str, ...], str | None, str | None] | None,
    given: dict[str, Any],
) -> Any:
    """Call a task's function with its arguments by name (the one place that does).

    ``style`` (``Task``'s ``call_style``) is None for a function that takes
    every parameter by name; else it names the positional-only, ``*args`` and
    ``**kwargs`` parameters, which are unpacked. An ``async def`` function's
    coroutine is returned as it is: the caller runs it.
    """
    if style is None:
        return func(**given)
    positional_only, var_positional, var_keyword = style
    kwargs = dict(given)
    args = [kwargs.pop(n) for n in positional_only]
    if var_positional is not None:
        args.extend(kwargs.pop(var_positional, ()))
    extra = kwargs.pop(var_keyword, {}) if var_keyword is not None else {}
    return func(*args, **kwargs, **extra)


def _run_call(home: _Home, call: _Call, direct: bool, where: str = "") -> Outcome:
    """Run one call (or a slice of elements) here and return its outcome.

    ``where`` is this worker's label (``worker_label``); a job works it out once
    for all its calls.
    """
    if call.elems is not None:
        return _run_slice(home, call, direct, where)
    ctx, reset = _enter(home, call, direct)
    if home.wants_start:
        try:
            ctx.send_event(START_EVENT, {})  # inline: runs before_node_execute, may raise
        except BaseException:
            _leave(ctx, reset, direct)
            raise
    timed_out = False
    started = time.time()
    start = time.perf_counter()
    try:
        if call.timeout is None:
            # ``invoke`` unpacks special signatures; the common case is called here.
            func, style, kwargs = call.func, call.style, call.kwargs
            value = func(**kwargs) if style is None else invoke(func, style, kwargs)
            if type(value) is CoroutineType:
                value = asyncio.run(value)
        else:
            value = _execute_with_timeout(call, ctx, call.timeout)
        ok = True
    except _TimedOut as exc:
        ok, value, timed_out = False, exc.error, True
    except Exception as exc:
        ok, value = False, exc
    finally:
        duration = time.perf_counter() - start
        _leave(ctx, reset, direct)
    events, sent = ctx.finish()
    where = where or worker_label(home)
    return _new_outcome((call.token, ok, value, duration, events, sent, timed_out, started, where))


def _call_in(
    ctx: _CallerContext,
    func: Callable[..., Any],
    style: tuple[tuple[str, ...], str | None, str | None] | None,
    kwargs: dict[str, Any],
) -> tuple[bool, Any, float]:
    """Call ``func`` here with ``ctx`` as the running task's context (inline lane).

    Returns:
        ``(True, result, duration)``, or ``(False, exception, duration)``.
    """
    current = reporters._current
    reset = None
    start = time.perf_counter()
    try:
        reset = current.set(ctx)
        # ``invoke`` unpacks special signatures; the common case is called here.
        value = func(**kwargs) if style is None else invoke(func, style, kwargs)
        if type(value) is CoroutineType:
            value = asyncio.run(value)
        return True, value, time.perf_counter() - start
    except Exception as exc:
        return False, exc, time.perf_counter() - start
    finally:
        if reset is not None:
            current.reset(reset)


def _enter(home: _Home, call: _Call, direct: bool) -> tuple[_NodeContext, Any]:
    """Make ``call`` the running task of this thread: its context, reporter, slot."""
    ctx = _NodeContext(home, call.token, direct, call.name, call.key)
    if not direct:
        channel._flusher.add(ctx)
    reset = reporters._current.set(ctx)
    if worker is not None and home.sink is None:
        worker.running(call.token, call.memory or 0)
    return ctx, reset


def _leave(ctx: _NodeContext, reset: Any, direct: bool) -> None:
    """Undo ``_enter`` once the call has returned or raised."""
    if worker is not None and ctx.home.sink is None:
        worker.running(0)
    reporters._current.reset(reset)
    if direct:
        ctx.close()
    else:
        channel._flusher.remove(ctx)


def _run_slice(home: _Home, call: _Call, direct: bool, where: str = "") -> Outcome:
    """Run the task once per element of a slice, under one node context.

    The context's key follows the element, so log records name it. Only the
    engine's bulk path sends slices: nobody waits for single elements to start
    then (no ``before_node_execute``, no event handlers), so elements get no
    start event of their own. Each element's run time is kept when the slice
    is timed, and always for a failed element.
    """
    ctx, reset = _enter(home, call, direct)
    started = time.time()
    start = time.perf_counter()
    try:
        value = _run_elements(home, call, ctx)
    finally:
        duration = time.perf_counter() - start
        _leave(ctx, reset, direct)
    ctx.elem = -1
    events, sent = ctx.finish()
    where = where or worker_label(home)
    return _new_outcome((call.token, True, value, duration, events, sent, False, started, where))


def _run_elements(home: _Home, call: _Call, ctx: _NodeContext) -> SliceValues:
    """The loop of ``_run_slice``: each element's value, or its error and run time."""
    elems = call.elems
    assert elems is not None
    names, rows, first, stop_on_error, positional, timed = elems
    func, base, style = call.func, call.kwargs, call.style
    single = names[0] if len(names) == 1 else None
    local = home.local()
    values: list[Any] = []
    errors: dict[int, tuple[BaseException, float]] = {}
    durations = array("d")
    last = time.perf_counter()
    for i, row in enumerate(rows):
        if local and home.abort:
            break
        ctx.elem = first + i
        try:
            if positional:
                value = func(row, **base) if base else func(row)
            elif single is not None:
                value = invoke(func, style, {**base, single: row})
            else:
                kwargs = dict(base)
                kwargs.update(zip(names, row))
                value = invoke(func, style, kwargs)
            if type(value) is CoroutineType:
                value = asyncio.run(value)
        except Exception as exc:
            now = time.perf_counter()
            values.append(None)
            errors[i] = (exc, now - last)
            if timed:
                durations.append(now - last)
            last = now
            if stop_on_error:
                break
            continue
        values.append(value)
        if timed:
            now = time.perf_counter()
            durations.append(now - last)
            last = now
        else:
            last = time.perf_counter()
    return SliceValues(values, errors, durations)


class _TimedOut(Exception):
    def __init__(self, error: TimeoutError) -> None:
        self.error = error


def _execute_with_timeout(call: _Call, ctx: _NodeContext, timeout: float) -> Any:
    """Run with a deadline in a helper thread, whether the task is sync or async.

    ``async def`` tasks are also wrapped in ``asyncio.wait_for``, so a
    cooperative one is cancelled cleanly; one that blocks is handled like a
    blocking sync task.
    """
    if asyncio.iscoroutinefunction(call.func):

        def run_async() -> Any:
            try:
                coroutine = invoke(call.func, call.style, call.kwargs)
                return asyncio.run(asyncio.wait_for(coroutine, timeout))
            except asyncio.TimeoutError:
                raise _TimedOut(timeout_error(call.name, call.timeout)) from None

        return _run_sync_with_timeout(call, ctx, timeout, run_async)
    return _run_sync_with_timeout(
        call, ctx, timeout, lambda: invoke(call.func, call.style, call.kwargs)
    )


def timeout_error(name: str, timeout: float | None) -> TimeoutError:
    """The error of a task that ran past its ``timeout`` (the one wording for it)."""
    return TimeoutError(f"task {name!r} did not finish within its timeout of {timeout}s")


def _run_sync_with_timeout(
    call: _Call, ctx: _NodeContext, timeout: float, run: Callable[[], Any]
) -> Any:
    """Run in a helper thread; on expiry a process worker ends itself, others abandon it."""
    box: list[Any] = []
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box.append((True, context.run(run)))
        except BaseException as exc:
            box.append((False, exc))
        done.set()

    threading.Thread(target=target, name=f"daglite-task-{call.name}", daemon=True).start()
    if not done.wait(timeout):
        pool_worker = _pool_worker(ctx.home)
        if pool_worker is not None:
            # The runaway cannot be stopped in-process: report, then end this worker.
            ctx.flush()
            pool_worker.timed_out(call.token)
        raise _TimedOut(timeout_error(call.name, call.timeout))
    ok, value = box[0]
    if not ok:
        raise value
    return value
