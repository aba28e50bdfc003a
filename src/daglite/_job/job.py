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

from daglite._job import channel, shared
from daglite._job.call import _run_call, worker_label
from daglite._job.channel import _Home
from daglite._job.messages import EarlyOutcome
from daglite._job.records import (
    _PICKLE_PROTOCOL,
    KEPT,
    Outcome,
    Outcomes,
    SliceValues,
    Snapshot,
    _Call,
    _new_call,
    _new_outcome,
    _Poisoned,
)
from daglite.exceptions import BackendError
from daglite.plugins import log_bridge
from daglite.plugins.reporters import FLUSH_INTERVAL


@final
class _Job:
    """A batch of calls for one backend ``submit``; returns a list of ``Outcome``.

    ``keep_remote`` holds the tokens of the calls whose results the caller
    does not need: a backend that keeps results on its workers may keep those
    there whatever their size (see ``Backend.materialize``).
    """

    __slots__ = ("calls", "home", "keep_remote", "lent", "resources")

    def __init__(
        self,
        home: _Home,
        calls: Sequence[_Call | _Poisoned],
        resources: dict[str, float] | None = None,
    ) -> None:
        self.home = home
        self.calls = calls
        # gh-15: the named resources the job's calls hold (the most any one of
        # them asks for: they run one after another). Read in the caller by a
        # backend that schedules resources itself (Dask); never pickled.
        self.resources = resources
        self.keep_remote: frozenset[int] = _NOTHING
        # The pool's segments this job's pickles were written to (caller side);
        # ``_SETTLED`` once the job is over.
        self.lent: list[str] | tuple[()] | None = None

    def __call__(self) -> Outcomes:
        """Run the calls; in a worker, then say which of the caller's segments it let go of.

        Returns:
            The outcomes (see ``_run``), with ``released`` listing the pool's
            segments this worker has unmapped, for the caller to reuse, and
            ``kept`` those still in use (a result may travel in one).
        """
        if self.home.local():  # not pickled: nothing borrowed (a nested run's job, say)
            return self._run(local=True)
        if shared.keeps_warm():  # mappings of the pool's segments, from earlier jobs
            shared.sweep_warm(drop_all=any(getattr(c, "memory", None) for c in self.calls))
        try:
            outcomes = self._run(local=False)
        except BaseException:
            shared.forget_borrowed()
            raise
        if shared.borrowing():
            self.calls = ()  # the arguments: nothing here may hold a mapping any more
            outcomes.released, outcomes.kept = shared.release_borrowed()
        shared.sweep_warm()
        return outcomes

    def settle(self, outcomes: Any) -> None:
        """In the caller, once the job is over: give its lent segments back to the pool.

        Args:
            outcomes: What the job returned, or None if it failed as a whole.
        """
        lent, self.lent = self.lent, _SETTLED
        pool = self.home.shared.pool if self.home.shared is not None else None
        if lent and pool is not None:
            released = frozenset(getattr(outcomes, "released", ()))
            pool.settle(lent, released, frozenset(getattr(outcomes, "handed", ())))

    def _run(self, local: bool) -> Outcomes:
        """Run the calls in order (``local``: in the caller's process).

        Returns:
            The outcomes. Once a job has run longer than ``FLUSH_INTERVAL``,
            its finished calls are sent home at once through the reporter
            channel (by the job itself between calls, and by the flusher thread
            while a call runs long), so a quick result or failure never waits
            for the rest of the job; those tokens are listed in ``.sent_early``.
        """
        home = self.home
        direct = local and threading.get_ident() == home.engine_thread
        if not local:
            log_bridge.forward_worker_logs(home.log_level)
            shared.set_active(home.shared)
        held = _HeldOutcomes(home)
        if not direct:
            channel._flusher.add(held)
        calls = self.calls
        last = len(calls) - 1
        where = worker_label(home)
        previous: Outcome | None = None
        # A fused call's start must not overtake the result it takes (someone
        # waits for starts), and a timeout ends this worker: that result must
        # be home first. Otherwise a call that owns its input keeps it here.
        starts_first = not direct and home.wants_start
        modes = (starts_first, direct)
        try:
            for i, call in enumerate(calls):
                if home.abort:  # the run gave up on this job (a remote backend may say so too)
                    break
                if isinstance(call, _Poisoned):
                    error = call.error(call.message)
                    outcome = Outcome(call.token, False, error, 0.0, [], 0)
                else:
                    if call.follows is not None:
                        if previous is None or not _whole(previous):
                            # Its input failed: the caller reschedules it. So
                            # do the calls fused after it (``previous`` stays);
                            # another chain of the job runs on.
                            continue
                        first = starts_first or (not direct and call.timeout is not None)
                        call = _feed(call, previous, held, local, first)
                    outcome = _run_call(home, call, direct, where)
                previous = outcome
                nxt = calls[i + 1] if i < last else None
                if nxt is not None and nxt.owns_input and _worth_keeping(outcome, nxt, *modes):
                    held.keep(outcome)
                else:
                    held.append(outcome)
                if i < last and not direct and time.monotonic() - held.started >= _FLUSH:
                    held.flush()
        finally:
            if not direct:
                channel._flusher.remove(held)
        return held.finish()

    def __reduce__(self) -> tuple[Any, ...]:
        # Not lent once settled: a broken pool's feeder may pickle a job that
        # has already failed, and nobody would give the segment back.
        lend = self.lent is not _SETTLED
        funcs, body = _dumps_calls(self.calls, self.home.shared, lend=lend)
        if isinstance(body, tuple) and body[1].pooled:
            self.lent = [*(self.lent or ()), body[1].path]
        return (_load_job, (self.home, funcs, body, self.keep_remote))


_SETTLED: Final[tuple[()]] = ()
_FLUSH: Final = FLUSH_INTERVAL
# Results kept home anyway when the next call owns them: holding one back on
# the worker saves nothing, and costs an outcome more to make.
_NOT_WORTH_KEEPING: Final = frozenset({int, float, bool, complex, type(None)})
_NOTHING: Final[frozenset[int]] = frozenset()
# Values a call cannot write to: no snapshot needed before a fused call takes one.
_IMMUTABLE: Final = _NOT_WORTH_KEEPING | {str, bytes}


def _worth_keeping(
    outcome: Outcome, nxt: _Call | _Poisoned, starts_first: bool, direct: bool
) -> bool:
    """Whether to hold back on this worker the result of the call before ``nxt``.

    Only if ``nxt`` owns that result (its only use), the call succeeded and
    its value is not a number (nothing to save), and the value need not be
    home before ``nxt`` starts (see ``_Job.__call__``).
    """
    if not nxt.owns_input or not _whole(outcome) or type(outcome[2]) in _NOT_WORTH_KEEPING:
        return False
    return not (starts_first or (not direct and nxt.timeout is not None))


def _whole(outcome: Outcome) -> bool:
    """Whether a call succeeded in full: for a slice, every one of its elements."""
    if not outcome[1]:
        return False
    value = outcome[2]
    return type(value) is not SliceValues or not value.errors


def _feed(
    call: _Call, previous: Outcome, held: _HeldOutcomes, local: bool, send_first: bool
) -> _Call:
    """``call`` fed ``previous``'s result, which goes home as it is now if it goes at all.

    ``send_first``: it goes home before the call starts (the call's start
    must not overtake it, or a timeout of the call would end this worker).
    """
    if not local:
        held.snapshot(previous)
    if send_first:
        held.flush()
    return _fed(call, call.follows or (), previous.value)


def _fed(call: _Call, follows: tuple[str, ...], value: Any) -> _Call:
    """A fused call with the previous call's result in its ``follows`` parameters.

    A slice fused after a slice (element-wise) takes that slice's values as
    its rows: element ``e`` of the one is fed element ``e`` of the other.
    """
    if call.elems is not None:
        head = (call.token, call.name, call.key, call.func, call.kwargs, call.timeout)
        elems = call.elems._replace(rows=value.values)
        return _new_call((*head, call.style, elems, None, False, call.memory))
    kwargs = dict(call.kwargs)
    for name in follows:
        kwargs[name] = value
    fields = (call.token, call.name, call.key, call.func, kwargs, call.timeout, call.style)
    # A plain call now: no slice, fed already.
    return _new_call((*fields, None, None, False, call.memory))


@final
class _HeldOutcomes:
    """Outcomes of a running job that have not gone home yet.

    The job appends each finished call; ``flush`` (from the job, or from the
    process's flusher thread while a call runs long) sends what is held through
    the reporter channel; ``finish`` hands the rest back as the job's result.
    The lock makes each outcome go exactly one way.
    """

    __slots__ = ("_held", "_kept", "_lock", "home", "outcomes", "started")

    def __init__(self, home: _Home) -> None:
        self.home = home
        self.outcomes = Outcomes()
        self.started = time.monotonic()
        self._held: list[Outcome] = []
        self._lock = threading.Lock()
        # The outcome whose value the next call owns, as it was, until that call ends.
        self._kept: Outcome | None = None

    def append(self, outcome: Outcome) -> None:
        """Hold ``outcome`` until the next flush."""
        if self._kept is not None:
            self._fed_call_ended(_whole(outcome))
        self._held.append(outcome)  # atomic under the GIL; drained under the lock

    def keep(self, outcome: Outcome) -> None:
        """Hold ``outcome`` (a success) with its value held back on this worker (gh-14).

        The next call is the only use of this result: the outcome waits
        (``flush`` stops at it) with ``KEPT`` for a value until the next call's
        outcome is in. If that call fails, the value goes home after all, so
        that a retry can be fed; if it succeeds, it never does.
        """
        if self._kept is not None:
            self._fed_call_ended(_whole(outcome))
        # ``_kept`` is set first: a flush that sees the ``KEPT`` outcome waits.
        self._kept = o = outcome
        held = o[2]
        if type(held) is SliceValues:  # each element's value held back, its run time not
            held = SliceValues([KEPT] * len(held.values), {}, held.durations)
        else:
            held = KEPT
        self._held.append(_new_outcome((o[0], True, held, o[3], o[4], o[5], o[6], o[7], o[8])))

    def snapshot(self, outcome: Outcome) -> None:
        """The next call takes ``outcome``'s value as it is, and may write to it: pickle it now.

        Only if the value goes home (it is not kept for that call alone) and
        has not gone yet, and only where outcomes go home pickled as they are
        (not on Dask or Ray, which set ``home.early`` and keep some results on
        the cluster as objects, for later jobs). A value that cannot be
        pickled stays: the job's result reports it, as before.
        """
        if outcome is self._kept or self.home.early is not None:
            return
        if type(outcome[2]) in _IMMUTABLE:
            return
        with self._lock:  # the flusher sends it either before this, or as pickled here
            held = self._held
            for i in range(len(held) - 1, -1, -1):
                if held[i] is outcome:
                    try:
                        frozen = Snapshot(outcome[2])
                    except Exception:
                        return
                    held[i] = _new_outcome((*outcome[:2], frozen, *outcome[3:]))
                    return

    def _fed_call_ended(self, ok: bool) -> None:
        """The call fed the kept value ended: drop that value, or send it if the call failed."""
        if ok:
            self._kept = None  # the call it fed has its own result now
        else:
            self._restore_kept()

    def _restore_kept(self) -> None:
        """The call fed a kept value failed: that value goes home after all."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        with self._lock:
            for i, outcome in enumerate(self._held):
                if outcome.token == kept.token:
                    self._held[i] = kept

    def flush(self) -> None:
        early = self.home.early
        with self._lock:
            held = self._held
            sent = 0
            for outcome in held:
                kept = self._kept
                if kept is not None and outcome.token == kept.token:
                    break  # waits for the call it feeds (``keep``)
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
        if self._kept is not None:  # the call it fed never ended: the value goes home
            self._restore_kept()
        with self._lock:
            self.outcomes.extend(self._held)
            self._held.clear()
        return self.outcomes


def _load_job(
    home: _Home, funcs: dict[int, bytes], body: _Body, keep_remote: frozenset[int] = _NOTHING
) -> _Job | _Unloadable:
    try:
        job = _Job(home, _loads_calls(funcs, body))
    except OSError as exc:  # a segment is gone: its run ended while this job was queued
        return _Unloadable(f"the job's arguments are gone from shared memory ({exc})")
    except Exception as exc:  # raised here, it would end the worker process
        return _Unloadable(
            f"the job's calls could not be unpickled in the worker process: "
            f"{type(exc).__name__}: {exc}"
        )
    job.keep_remote = keep_remote
    return job


@final
class _Unloadable:
    """A job whose arguments could not be read: running it fails the whole job.

    Raised from the call, not from unpickling, where it would end the worker.
    """

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __call__(self) -> Outcomes:
        raise BackendError(self.message)


# The call rows' pickle, with the segment holding their large buffers if any.
_Body = bytes | tuple[bytes, Any]


def _dumps_calls(
    calls: Sequence[_Call | _Poisoned],
    settings: shared.SharedMemory | None = None,
    *,
    lend: bool = False,
) -> tuple[dict[int, bytes], _Body]:
    """Serialise calls: the functions (each once) and the call rows.

    A call that cannot be pickled becomes ``_Poisoned``. The two parts are
    handed to the executor's pickler as they are, not pickled once more, so a
    large argument is copied as few times as possible: with ``settings``,
    large buffers go into a shared-memory segment the worker maps (one of
    the pool's, if ``lend`` and the run has one: see ``_Job.settle``).
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
        rows.append(
            (
                call.token,
                call.name,
                call.key,
                fid,
                call.kwargs,
                call.timeout,
                call.style,
                call.elems,
                call.follows,
                call.owns_input,
                call.memory,
            )
        )
    try:
        body = shared.dumps(rows, settings, lend=lend)
    except Exception:
        rows = [_poison_if_unpicklable(row) for row in rows]
        body = shared.dumps(rows, settings, cloudpickle.CloudPickler, lend=lend)
    return funcs, body


def _poison_if_unpicklable(row: Any) -> Any:
    import cloudpickle

    if isinstance(row, _Poisoned):
        return row
    token, name, _key, _fid, kwargs, _timeout, _style, elems, _follows, _owns, _memory = row
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


def _loads_calls(funcs_bytes: dict[int, bytes], body: _Body) -> list[_Call]:
    funcs: dict[int, Callable[..., Any] | Exception] = {}
    for fid, data in funcs_bytes.items():
        loaded = _loaded_functions.get(data)
        if loaded is None:
            try:
                loaded = pickle.loads(data)
            except Exception as exc:  # its calls fail, naming the task; the others run
                funcs[fid] = exc
                continue
            if len(_loaded_functions) > 256:
                _loaded_functions.clear()
            _loaded_functions[data] = loaded
        funcs[fid] = loaded
    calls: list[Any] = []
    # A segment is read once, by this worker: it is unlinked once mapped, or
    # borrowed from the caller's pool until the job ends.
    rows = shared.load_segment(*body, own=True) if isinstance(body, tuple) else pickle.loads(body)
    for row in rows:
        if isinstance(row, _Poisoned):
            calls.append(row)
        else:
            token, name, key, fid, kwargs, timeout, style, elems, follows, owns, memory = row
            func = funcs[fid]
            if isinstance(func, Exception):
                calls.append(_Poisoned(token, _unloadable(name, func), BackendError))
                continue
            fields = (token, name, key, func, kwargs, timeout, style, elems, follows, owns, memory)
            calls.append(_new_call(fields))
    return calls


def _unloadable(name: str, exc: Exception) -> str:
    return (
        f"task {name!r} could not be unpickled in the worker process: "
        f"{type(exc).__name__}: {exc}. Every global it uses must be importable there or "
        "pickled by value: plain functions and classes from __main__ are, but decorated "
        "objects (a functools.lru_cache wrapper, say) are looked up by name"
    )
