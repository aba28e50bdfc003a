"""What a backend runs: a ``_Job`` of one or more task calls, and its outcomes.

A job is a plain picklable callable. In the caller's process (inline, threads)
nothing is pickled. When a backend ships it to another process, ``__reduce__``
serialises the task functions and arguments with cloudpickle (so lambdas,
closures and functions from ``__main__`` work) and carries the ``_Home`` with
it, so hooks and events find their way back whatever the backend.

A call whose arguments cannot be pickled is replaced by a ``_Poisoned`` call that
fails with an error naming the parameter; a result that cannot be pickled
becomes an error naming "result". Neither affects the other calls of the job.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from types import CoroutineType
from typing import Any, Final, NamedTuple, Protocol, final

from daglite._job import channel
from daglite._job.channel import _Home, _NodeContext
from daglite._job.messages import EarlyOutcome
from daglite.plugins import log_bridge, reporters
from daglite.plugins.reporters import FLUSH_INTERVAL, START_EVENT, _CallerContext

# Exit status of a process worker that ends itself because its task timed out.
TIMEOUT_EXIT_CODE: Final = 75
_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


@final
class _Call:
    """One attempt of one node: what to run, with which arguments."""

    __slots__ = ("elems", "follows", "func", "key", "kwargs", "name", "style", "timeout", "token")

    def __init__(
        self,
        token: int,
        name: str,
        key: str,
        func: Callable[..., Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        style: tuple[tuple[str, ...], str | None, str | None] | None,
        elems: Elements | None = None,
        follows: tuple[str, ...] | None = None,
    ) -> None:
        self.token = token
        self.name = name
        self.key = key
        self.func = func
        self.kwargs = kwargs
        self.timeout = timeout
        # None: call func(**kwargs). Else (positional-only names, *args name, **kwargs name).
        self.style = style
        # None: one call. Else a slice of a fan-out: ``kwargs`` plus each element.
        self.elems = elems
        # Parameters that take the result of the call before it in the job (a
        # fused chain); None for an independent call.
        self.follows = follows


class Elements(NamedTuple):
    """A slice of a fan-out's elements, run as one call (see ``_run_slice``).

    ``rows`` holds one value per element when ``names`` has one name, else one
    tuple per element; ``first`` is the index of the first element in the
    fan-out (keys are ``key[first + i]``); ``stop_on_error`` ends the slice at
    its first failure (the evaluation fails fast anyway); ``positional`` says
    the one name is the function's first parameter, so each element is passed
    positionally (no dict per element).
    """

    names: tuple[str, ...]
    rows: list[Any]
    first: int
    stop_on_error: bool
    positional: bool


class CallLike(Protocol):
    """What a job needs of a call: ``_Call`` in workers, the engine's units in the caller."""

    token: int
    name: str
    key: str
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    timeout: float | None
    style: tuple[tuple[str, ...], str | None, str | None] | None
    elems: Elements | None
    follows: tuple[str, ...] | None


@final
class _Poisoned:
    """Stands for a call whose arguments could not be pickled."""

    __slots__ = ("message", "token")

    def __init__(self, token: int, message: str) -> None:
        self.token = token
        self.message = message


class ArgumentsNotPicklableError(TypeError):
    """A task's input could not be pickled to send it to a worker process."""


class ResultNotPicklableError(TypeError):
    """A task's result could not be pickled to send it back from a worker process."""


class RemoteTraceback(Exception):
    """Holds the formatted traceback of an exception raised in another process."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class Outcome(NamedTuple):
    """What one call produced: a value or an error, its run time and its events.

    A named tuple, so a batch of them crosses a process boundary as plain
    tuples and is rebuilt without a constructor call per element.
    """

    token: int
    ok: bool
    value: Any
    duration: float
    events: list[tuple[str, dict[str, Any]]]
    sent: int
    timed_out: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        value, ok, tb = self.value, self.ok, ""
        payload = b""
        if ok:
            try:
                payload = _dumps(value)
            except Exception as exc:
                ok = False
                value = ResultNotPicklableError(
                    f"the result ({type(value).__name__}) cannot be pickled to send it "
                    f"back from the worker process: {exc}"
                )
        if not ok:
            error, tb = _portable_error(value)
            payload = _dumps(error)
        events = channel.picklable_events(self.events) if self.events else self.events
        return (
            _load_outcome,
            (self.token, ok, payload, tb, self.duration, events, self.sent, self.timed_out),
        )


# ``Outcome(...)`` runs a Python-level ``__new__``; the per-call path builds the
# tuple directly.
_new_outcome: Final = partial(tuple.__new__, Outcome)


def _load_outcome(
    token: int,
    ok: bool,
    payload: bytes,
    tb: str,
    duration: float,
    events: Any,
    sent: int,
    timed_out: bool,
) -> Outcome:
    try:
        value = pickle.loads(payload)
    except Exception as exc:  # pickled in the worker, but does not unpickle here
        error = ResultNotPicklableError(f"the result could not be unpickled in the caller: {exc}")
        return Outcome(token, False, error, duration, events, sent, timed_out)
    if not ok and tb:
        value.__cause__ = RemoteTraceback(tb)
    return Outcome(token, ok, value, duration, events, sent, timed_out)


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)  # type: ignore[no-any-return]


@final
class SliceValues:
    """What a slice of a fan-out returns: a value per element run, and the errors.

    ``values[i]`` is None where element ``i`` failed (``errors[i]`` holds its
    exception and run time). Pickled on its own: an element whose result cannot be pickled
    becomes that element's error, naming "result", and spoils no other.
    """

    __slots__ = ("errors", "values")

    def __init__(self, values: list[Any], errors: dict[int, tuple[BaseException, float]]) -> None:
        self.values = values
        self.errors = errors

    def __reduce__(self) -> tuple[Any, ...]:
        values, errors = self.values, dict(self.errors)
        try:
            payload = pickle.dumps(values, protocol=_PICKLE_PROTOCOL)
        except Exception:
            values = list(values)
            for i, value in enumerate(values):
                try:
                    _dumps(value)
                except Exception as exc:
                    values[i] = None
                    error = ResultNotPicklableError(
                        f"the result ({type(value).__name__}) cannot be pickled to send it "
                        f"back from the worker process: {exc}"
                    )
                    errors[i] = (error, 0.0)
            payload = _dumps(values)
        portable = {i: (*_portable_error(e), d) for i, (e, d) in errors.items()}
        return (_load_slice_values, (payload, portable))


def _load_slice_values(
    payload: bytes, errors: dict[int, tuple[BaseException, str, float]]
) -> SliceValues:
    rebuilt = {}
    for i, (error, tb, duration) in errors.items():
        error.__cause__ = RemoteTraceback(tb)
        rebuilt[i] = (error, duration)
    return SliceValues(pickle.loads(payload), rebuilt)


class Outcomes(list[Outcome]):
    """What a job returns: its outcomes, plus the tokens already sent home early.

    Pickled in one go (one C-level ``pickle.dumps`` for the whole batch); if
    anything in it needs more than plain pickle, each outcome pickles itself
    (cloudpickle, unpicklable results and events handled one by one).
    """

    def __init__(self, items: list[Outcome] | None = None) -> None:
        super().__init__(items or ())
        self.sent_early: list[int] = []

    def __reduce__(self) -> tuple[Any, ...]:
        tokens = [o.token for o in self]
        try:
            rows = [_fast_row(o) for o in self]
            payload = pickle.dumps(rows, protocol=_PICKLE_PROTOCOL)
        except Exception:
            return (_load_outcomes, (tokens, None, list(self), self.sent_early))
        return (_load_outcomes, (tokens, payload, None, self.sent_early))


def _fast_row(o: Outcome) -> tuple[Any, ...]:
    if o.ok:
        return tuple(o)
    # A failure carries (error, traceback text) until it is rebuilt in the caller.
    return (o.token, False, _portable_error(o.value), o.duration, o.events, o.sent, o.timed_out)


def _portable_error(exc: BaseException) -> tuple[BaseException, str]:
    """The exception if it survives a pickle round trip (else a stand-in), and its traceback.

    An exception class whose ``__init__`` takes other arguments than it passes to
    ``Exception.__init__`` pickles but does not unpickle; caught here, in the
    worker, it cannot break the caller's result handling.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(_dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    return exc, f'\n"""\n{tb}"""'


def _load_outcomes(
    tokens: list[int],
    payload: bytes | None,
    fallback: list[Outcome] | None,
    sent_early: list[int],
) -> Outcomes:
    out = Outcomes()
    out.sent_early = sent_early
    if payload is None:
        out.extend(fallback or ())
        return out
    try:
        rows = pickle.loads(payload)
    except Exception as exc:  # results that pickle but do not unpickle here
        error = ResultNotPicklableError(f"the result could not be unpickled in the caller: {exc}")
        out.extend(Outcome(t, False, error, 0.0, [], 0) for t in tokens)
        return out
    out.extend(map(Outcome._make, rows))
    for i, outcome in enumerate(out):
        if not outcome.ok:
            error, tb = outcome.value
            error.__cause__ = RemoteTraceback(tb)
            out[i] = outcome._replace(value=error)
    return out


@final
class _Job:
    """A batch of calls for one backend ``submit``; returns a list of ``Outcome``."""

    __slots__ = ("calls", "feeds", "home")

    def __init__(self, home: _Home, calls: Sequence[CallLike]) -> None:
        self.home = home
        self.calls = calls
        # Which calls take the previous call's result, as submitted: in the
        # caller's process the calls are the engine's own units, which it may
        # detach from their chain while this job runs.
        self.feeds = [getattr(c, "follows", None) for c in calls]

    def __call__(self) -> Outcomes:
        """Run the calls in order.

        Returns:
            The outcomes. Once a job has run longer than ``FLUSH_INTERVAL``,
            its finished calls are sent home at once through the reporter
            channel (by the job itself between calls, and by the flusher thread
            while a call runs long), so a quick result or failure never waits
            for the rest of the job; those tokens are listed in ``.sent_early``.
        """
        home = self.home
        direct = home.on_engine_thread()
        local = home.local()
        if not local:
            log_bridge.forward_worker_logs(home.log_level)
        held = _HeldOutcomes(home)
        if not direct:
            channel._flusher.add(held)
        last = len(self.calls) - 1
        previous: Outcome | None = None
        feeds = self.feeds
        try:
            for i, call in enumerate(self.calls):
                if local and home.abort:
                    break
                if isinstance(call, _Poisoned):
                    error = ArgumentsNotPicklableError(call.message)
                    outcome = Outcome(call.token, False, error, 0.0, [], 0)
                else:
                    follows = feeds[i]
                    if follows is not None:
                        if previous is None or not previous.ok:
                            break  # its input failed: the caller reschedules it
                        call = _fed(call, follows, previous.value)
                        if not direct and (home.wants_start or call.timeout is not None):
                            # Its start must not overtake the result it takes, and a
                            # timeout ends this worker: that result must be home first.
                            held.flush()
                    outcome = _run_call(home, call, direct)
                previous = outcome
                held.append(outcome)
                if i < last and not direct and time.monotonic() - held.started >= _FLUSH:
                    held.flush()
        finally:
            if not direct:
                channel._flusher.remove(held)
        return held.finish()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_job, (self.home, *_dumps_calls(self.calls)))


_FLUSH: Final = FLUSH_INTERVAL


def _fed(call: CallLike, follows: tuple[str, ...], value: Any) -> _Call:
    """A fused call with the previous call's result in its ``follows`` parameters."""
    kwargs = dict(call.kwargs)
    for name in follows:
        kwargs[name] = value
    return _Call(call.token, call.name, call.key, call.func, kwargs, call.timeout, call.style)


@final
class _HeldOutcomes:
    """Outcomes of a running job that have not gone home yet.

    The job appends each finished call; ``flush`` (from the job, or from the
    process's flusher thread while a call runs long) sends what is held through
    the reporter channel; ``finish`` hands the rest back as the job's result.
    The lock makes each outcome go exactly one way.
    """

    __slots__ = ("_held", "_lock", "home", "outcomes", "started")

    def __init__(self, home: _Home) -> None:
        self.home = home
        self.outcomes = Outcomes()
        self.started = time.monotonic()
        self._held: list[Outcome] = []
        self._lock = threading.Lock()

    def append(self, outcome: Outcome) -> None:
        self._held.append(outcome)  # atomic under the GIL; drained under the lock

    def flush(self) -> None:
        early = self.home.early
        with self._lock:
            held = self._held
            sent = 0
            for outcome in held:
                if early is not None and not early(outcome):
                    break  # this one goes with the job's result, and so do the rest
                try:
                    self.home.send(EarlyOutcome(outcome))
                except Exception:  # the channel is gone: the rest go with the result
                    break
                sent += 1
            if sent:
                self.outcomes.sent_early.extend(o.token for o in held[:sent])
                del held[:sent]

    def finish(self) -> Outcomes:
        with self._lock:
            self.outcomes.extend(self._held)
            self._held.clear()
        return self.outcomes


def _load_job(home: _Home, funcs: dict[int, bytes], body: bytes) -> _Job:
    return _Job(home, _loads_calls(funcs, body))


def _dumps_calls(calls: Sequence[CallLike]) -> tuple[dict[int, bytes], bytes]:
    """Serialise calls: the functions (each once) and the call rows.

    A call that cannot be pickled becomes ``_Poisoned``. The two parts are
    handed to the executor's pickler as they are, not pickled once more, so a
    large argument is copied as few times as possible.
    """
    import cloudpickle

    funcs: dict[int, bytes] = {}
    rows: list[Any] = []
    for call in calls:
        if isinstance(call, _Poisoned):
            rows.append(call)
            continue
        fid = id(call.func)
        if fid not in funcs:
            try:
                funcs[fid] = _cached_function_pickle(call.func)
            except Exception as exc:
                rows.append(_Poisoned(call.token, f"task {call.name!r} cannot be pickled: {exc}"))
                continue
        row = (call.token, call.name, call.key, fid, call.kwargs, call.timeout, call.style)
        rows.append((*row, call.elems, call.follows))
    try:
        body = pickle.dumps(rows, protocol=_PICKLE_PROTOCOL)
    except Exception:
        rows = [_poison_if_unpicklable(row) for row in rows]
        body = cloudpickle.dumps(rows, protocol=_PICKLE_PROTOCOL)
    return funcs, body


def _poison_if_unpicklable(row: Any) -> Any:
    import cloudpickle

    if isinstance(row, _Poisoned):
        return row
    token, name, _key, _fid, kwargs, _timeout, _style, elems, _follows = row
    if elems is not None:
        try:
            cloudpickle.dumps(elems, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            return _Poisoned(token, f"task {name!r}: an element cannot be pickled: {exc}")
    for param, value in kwargs.items():
        try:
            cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            return _Poisoned(
                token,
                f"task {name!r}: parameter {param!r} ({type(value).__name__}) cannot be "
                f"pickled to send it to a worker process: {exc}",
            )
    return row


_function_pickles: dict[int, tuple[Callable[..., Any], bytes]] = {}


def _cached_function_pickle(func: Callable[..., Any]) -> bytes:
    """cloudpickle ``func`` once; the cache keeps ``func`` alive so ids stay valid."""
    import cloudpickle

    entry = _function_pickles.get(id(func))
    if entry is not None and entry[0] is func:
        return entry[1]
    data: bytes = cloudpickle.dumps(func, protocol=_PICKLE_PROTOCOL)
    if len(_function_pickles) > 1024:
        _function_pickles.clear()
    _function_pickles[id(func)] = (func, data)
    return data


_loaded_functions: dict[bytes, Callable[..., Any]] = {}


def _loads_calls(funcs_bytes: dict[int, bytes], body: bytes) -> list[_Call]:
    funcs: dict[int, Callable[..., Any]] = {}
    for fid, data in funcs_bytes.items():
        func = _loaded_functions.get(data)
        if func is None:
            func = pickle.loads(data)
            if len(_loaded_functions) > 256:
                _loaded_functions.clear()
            _loaded_functions[data] = func
        funcs[fid] = func
    calls: list[Any] = []
    for row in pickle.loads(body):
        if isinstance(row, _Poisoned):
            calls.append(row)
        else:
            token, name, key, fid, kwargs, timeout, style, elems, follows = row
            func = funcs[fid]
            calls.append(_Call(token, name, key, func, kwargs, timeout, style, elems, follows))
    return calls


# -- running one call ---------------------------------------------------------------


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


def _run_call(home: _Home, call: CallLike, direct: bool) -> Outcome:
    if call.elems is not None:
        return _run_slice(home, call, direct)
    ctx, reset = _enter(home, call, direct)
    if home.wants_start:
        try:
            ctx.send_event(START_EVENT, {})  # inline: runs before_node_execute, may raise
        except BaseException:
            _leave(ctx, reset, direct)
            raise
    timed_out = False
    start = time.perf_counter()
    try:
        if call.timeout is None:
            value = invoke(call.func, call.style, call.kwargs)
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
    return _new_outcome((call.token, ok, value, duration, events, sent, timed_out))


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
        value = invoke(func, style, kwargs)
        if type(value) is CoroutineType:
            value = asyncio.run(value)
        return True, value, time.perf_counter() - start
    except Exception as exc:
        return False, exc, time.perf_counter() - start
    finally:
        if reset is not None:
            current.reset(reset)


def _enter(home: _Home, call: CallLike, direct: bool) -> tuple[_NodeContext, Any]:
    """Make ``call`` the running task of this thread: its context, reporter, slot."""
    ctx = _NodeContext(home, call.token, direct, call.name, call.key)
    if not direct:
        channel._flusher.add(ctx)
    reset = reporters._current.set(ctx)
    if _worker_state.slot >= 0:
        _worker_state.running(call.token)
    return ctx, reset


def _leave(ctx: _NodeContext, reset: Any, direct: bool) -> None:
    """Undo ``_enter`` once the call has returned or raised."""
    if _worker_state.slot >= 0:
        _worker_state.running(0)
    reporters._current.reset(reset)
    if direct:
        ctx.close()
    else:
        channel._flusher.remove(ctx)


def _run_slice(home: _Home, call: CallLike, direct: bool) -> Outcome:
    """Run the task once per element of a slice, under one node context.

    The context's key follows the element, so log records name it. Only the
    engine's bulk path sends slices: nobody watches single elements then (no
    node hooks, no event handlers), so elements get no start event of their
    own, and a failed element's duration is its own run time.
    """
    elems = call.elems
    assert elems is not None
    names, rows, first, stop_on_error, positional = elems
    ctx, reset = _enter(home, call, direct)
    func, base, style = call.func, call.kwargs, call.style
    single = names[0] if len(names) == 1 else None
    local = home.local()
    values: list[Any] = []
    errors: dict[int, tuple[BaseException, float]] = {}
    start = last = time.perf_counter()
    try:
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
                last = now
                if stop_on_error:
                    break
                continue
            values.append(value)
            last = time.perf_counter()
    finally:
        duration = time.perf_counter() - start
        _leave(ctx, reset, direct)
    ctx.elem = -1
    events, sent = ctx.finish()
    return _new_outcome(
        (call.token, True, SliceValues(values, errors), duration, events, sent, False)
    )


class _TimedOut(Exception):
    def __init__(self, error: TimeoutError) -> None:
        self.error = error


def _execute_with_timeout(call: CallLike, ctx: _NodeContext, timeout: float) -> Any:
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
    call: CallLike, ctx: _NodeContext, timeout: float, run: Callable[[], Any]
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
        if _worker_state.is_pool_worker:
            # The runaway cannot be stopped in-process: report, then end this worker.
            ctx.flush()
            _worker_state.timed_out(call.token)
            os._exit(TIMEOUT_EXIT_CODE)
        raise _TimedOut(timeout_error(call.name, call.timeout))
    ok, value = box[0]
    if not ok:
        raise value
    return value


# -- process-pool worker state ------------------------------------------------------


@final
class _WorkerState:
    """Per worker process: which call it runs, in a slot of an array shared with the
    caller, so the caller can tell which task a dead worker took with it."""

    __slots__ = ("is_pool_worker", "slot", "slots")

    def __init__(self) -> None:
        self.is_pool_worker = False
        self.slots: Any = None
        self.slot = -1

    def attach(self, slots: Any, lock: Any) -> None:
        with lock:
            n = len(slots) // 3
            for i in range(n):
                pid = slots[3 * i]
                if pid == 0 or not _pid_alive(pid):
                    slots[3 * i : 3 * i + 3] = [os.getpid(), 0, 0]
                    self.slot = i
                    break
        self.slots = slots
        self.is_pool_worker = True

    def running(self, token: int) -> None:
        if self.slot >= 0:
            self.slots[3 * self.slot + 1] = token

    def timed_out(self, token: int) -> None:
        if self.slot >= 0:
            self.slots[3 * self.slot + 2] = token


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_worker_state: Final = _WorkerState()


def init_pool_worker(slots: Any, lock: Any, parent_pid: int) -> None:
    """``initializer`` of process-pool workers: claim a slot, watch the parent."""
    _worker_state.attach(slots, lock)
    threading.Thread(
        target=_exit_when_parent_dies, args=(parent_pid,), name="daglite-watchdog", daemon=True
    ).start()


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Block until the caller is gone, then end this worker (no orphans)."""
    import select

    try:
        fd = os.pidfd_open(parent_pid)  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    while _pid_alive(parent_pid) and os.getppid() != 1:
        time.sleep(1.0)
    os._exit(1)
