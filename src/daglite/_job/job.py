"""``_Job``: what a backend runs, a batch of calls, and how it travels.

A job is a plain picklable callable. In the caller's process (inline, threads)
nothing is pickled. When a backend ships it to another process, ``__reduce__``
serialises the task functions and arguments with cloudpickle (so lambdas,
closures and functions from ``__main__`` work) and carries the ``_Home`` with
it, so hooks and events find their way back whatever the backend.

A call whose arguments cannot be pickled is replaced by a ``_Poisoned`` call
that fails with an error naming the parameter. Neither affects the other calls
of the job.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, final

from daglite._job import channel
from daglite._job.call import _run_call, worker_label
from daglite._job.channel import _Home
from daglite._job.messages import EarlyOutcome
from daglite._job.records import (
    _PICKLE_PROTOCOL,
    Outcome,
    Outcomes,
    _Call,
    _new_call,
    _Poisoned,
)
from daglite.exceptions import ArgumentsNotPicklableError
from daglite.plugins import log_bridge
from daglite.plugins.reporters import FLUSH_INTERVAL


@final
class _Job:
    """A batch of calls for one backend ``submit``; returns a list of ``Outcome``.

    ``keep_remote`` holds the tokens of the calls whose results the caller
    does not need: a backend that keeps results on its workers may keep those
    there whatever their size (see ``Backend.materialize``).
    """

    __slots__ = ("calls", "home", "keep_remote")

    def __init__(self, home: _Home, calls: Sequence[_Call | _Poisoned]) -> None:
        self.home = home
        self.calls = calls
        self.keep_remote: frozenset[int] = _NOTHING

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
        where = worker_label(home)
        previous: Outcome | None = None
        try:
            for i, call in enumerate(self.calls):
                if home.abort:  # the run gave up on this job (a remote backend may say so too)
                    break
                if isinstance(call, _Poisoned):
                    error = ArgumentsNotPicklableError(call.message)
                    outcome = Outcome(call.token, False, error, 0.0, [], 0)
                else:
                    follows = call.follows
                    if follows is not None:
                        if previous is None or not previous.ok:
                            break  # its input failed: the caller reschedules it
                        call = _fed(call, follows, previous.value)
                        if not direct and (home.wants_start or call.timeout is not None):
                            # Its start must not overtake the result it takes, and a
                            # timeout ends this worker: that result must be home first.
                            held.flush()
                    outcome = _run_call(home, call, direct, where)
                previous = outcome
                held.append(outcome)
                if i < last and not direct and time.monotonic() - held.started >= _FLUSH:
                    held.flush()
        finally:
            if not direct:
                channel._flusher.remove(held)
        return held.finish()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_load_job, (self.home, *_dumps_calls(self.calls), self.keep_remote))


_FLUSH: Final = FLUSH_INTERVAL
_NOTHING: Final[frozenset[int]] = frozenset()


def _fed(call: _Call, follows: tuple[str, ...], value: Any) -> _Call:
    """A fused call with the previous call's result in its ``follows`` parameters."""
    kwargs = dict(call.kwargs)
    for name in follows:
        kwargs[name] = value
    fields = (call.token, call.name, call.key, call.func, kwargs, call.timeout, call.style)
    return _new_call((*fields, None, None))  # a plain call now: no slice, fed already


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


def _load_job(
    home: _Home, funcs: dict[int, bytes], body: bytes, keep_remote: frozenset[int] = _NOTHING
) -> _Job:
    job = _Job(home, _loads_calls(funcs, body))
    job.keep_remote = keep_remote
    return job


def _dumps_calls(calls: Sequence[_Call | _Poisoned]) -> tuple[dict[int, bytes], bytes]:
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
    """Cloudpickle ``func`` once; the cache keeps ``func`` alive so ids stay valid."""
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
            calls.append(
                _new_call((token, name, key, func, kwargs, timeout, style, elems, follows))
            )
    return calls
