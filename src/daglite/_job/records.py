"""The records that cross between the caller and a worker, and their pickling.

``_Call`` is one attempt of one node as a worker runs it (a plain value: the
engine's own bookkeeping never travels). ``Outcome`` is what one call
produced; ``Outcomes`` what a job returns; ``SliceValues`` what a slice of a
fan-out returns. Each pickles itself so that one result that cannot be pickled
(or unpickled in the caller) fails only its own call, naming "result".
"""

from __future__ import annotations

import pickle
import traceback
from array import array
from collections.abc import Callable
from functools import partial
from typing import Any, Final, NamedTuple, final

from daglite._job import shared
from daglite._job.messages import picklable_events
from daglite.exceptions import ArgumentsNotPicklableError, ResultNotPicklableError

_PICKLE_PROTOCOL: Final = pickle.HIGHEST_PROTOCOL


class _Call(NamedTuple):
    """One attempt of one node: what to run, with which arguments.

    A plain value, made when the call is submitted and never changed: what the
    engine does with its own bookkeeping afterwards cannot reach a running job.
    """

    token: int
    name: str
    key: str
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    timeout: float | None
    # None: call func(**kwargs). Else (positional-only names, *args name, **kwargs name).
    style: tuple[tuple[str, ...], str | None, str | None] | None
    # None: one call. Else a slice of a fan-out: ``kwargs`` plus each element.
    elems: Elements | None = None
    # Parameters that take the result of the call before it in the job (a fused
    # chain); None for an independent call.
    follows: tuple[str, ...] | None = None
    # A fused call that is the only use of the result it is fed: the caller
    # does not need that result, so the worker need not send it (``KEPT``).
    owns_input: bool = False
    # Bytes the call's worker may hold (gh-15), or None: enforced where a pool
    # watches its workers (the processes backend).
    memory: int | None = None


# ``_Call(...)`` runs a Python-level ``__new__``; the engine builds the tuple
# directly (all ten fields: defaults do not apply).
_new_call: Final = partial(tuple.__new__, _Call)


class Elements(NamedTuple):
    """A slice of a fan-out's elements, run as one call (see ``_run_slice``).

    ``rows`` holds one value per element when ``names`` has one name, else one
    tuple per element; ``first`` is the index of the first element in the
    fan-out (keys are ``key[first + i]``); ``stop_on_error`` ends the slice at
    its first failure (the evaluation fails fast anyway); ``positional`` says
    the one name is the function's first parameter, so each element is passed
    positionally (no dict per element); ``timed`` asks for each element's run
    time (a plugin's ``after_node_execute`` gets it).
    """

    names: tuple[str, ...]
    rows: list[Any]
    first: int
    stop_on_error: bool
    positional: bool
    timed: bool = False


@final
class _Kept:
    """Stands for a result the worker did not send: only the next call of its job used it."""

    __slots__ = ()

    def __reduce__(self) -> str:
        return "KEPT"

    def __repr__(self) -> str:
        return "<kept on the worker>"


KEPT: Final = _Kept()


@final
class _Poisoned:
    """Stands for a call that cannot run, failing with ``error`` and ``message``.

    Its arguments could not be pickled (in the caller), or its function not
    unpickled (in the worker).
    """

    __slots__ = ("error", "message", "token")
    # What the job asks of the call after it: a poisoned call is never fed.
    owns_input: Final = False
    timeout: Final = None

    def __init__(
        self, token: int, message: str, error: type[Exception] = ArgumentsNotPicklableError
    ) -> None:
        self.token = token
        self.message = message
        self.error = error


@final
class PendingResult:
    """Stands, in a call's arguments, for the result of a call still out on the backend.

    The engine hands a call to a backend that takes pending inputs
    (``Backend.accepts_pending_inputs``) as soon as the calls it takes results
    from were submitted there. ``token`` names the call whose result goes
    here; ``future`` is the future the backend returned for that call's job
    (only in the caller's process: a pickled copy carries the token alone).
    The backend replaces the marker with the result where the call runs.
    """

    __slots__ = ("future", "token")

    def __init__(self, token: int, future: Any = None) -> None:
        self.token = token
        self.future = future

    def __reduce__(self) -> tuple[Any, ...]:
        return (PendingResult, (self.token,))

    def __repr__(self) -> str:
        return f"<PendingResult of call {self.token}>"


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
    tuples and is rebuilt without a constructor call per element. ``started``
    is the wall-clock time (``time.time()``) the call started where it ran,
    ``worker`` names where that was (``worker_label``).
    """

    token: int
    ok: bool
    value: Any
    duration: float
    events: list[tuple[str, dict[str, Any]]]
    sent: int
    timed_out: bool = False
    started: float = 0.0
    worker: str = ""

    def __reduce__(self) -> tuple[Any, ...]:
        value, ok, tb = self.value, self.ok, ""
        payload: bytes | tuple[bytes, Any] = b""
        if ok:
            try:
                payload = _dumps_result(value)
            except Exception as exc:
                ok = False
                value = ResultNotPicklableError(
                    f"the result ({type(value).__name__}) cannot be pickled to send it "
                    f"back from the worker process: {exc}"
                )
        if not ok:
            error, tb = _portable_error(value)
            payload = _dumps(error)
        events = picklable_events(self.events) if self.events else self.events
        where = (self.started, self.worker)
        return (
            _load_outcome,
            (self.token, ok, payload, tb, self.duration, events, self.sent, self.timed_out, where),
        )


# ``Outcome(...)`` runs a Python-level ``__new__``; the per-call path builds the
# tuple directly.
_new_outcome: Final = partial(tuple.__new__, Outcome)


def _load_outcome(  # noqa: PLR0913, PLR0917 - one argument per field of a record
    token: int,
    ok: bool,
    payload: bytes | tuple[bytes, Any],
    tb: str,
    duration: float,
    events: Any,
    sent: int,
    timed_out: bool,
    where: tuple[float, str] = (0.0, ""),
) -> Outcome:
    try:
        if isinstance(payload, tuple):
            value: Any = shared.SharedValue(*payload)
        else:
            value = pickle.loads(payload)
    except Exception as exc:  # pickled in the worker, but does not unpickle here
        error = ResultNotPicklableError(f"the result could not be unpickled in the caller: {exc}")
        return Outcome(token, False, error, duration, events, sent, timed_out, *where)
    if not ok and tb:
        value.__cause__ = RemoteTraceback(tb)
    return Outcome(token, ok, value, duration, events, sent, timed_out, *where)


def _dumps_result(value: Any) -> bytes | tuple[bytes, Any]:
    """A result's pickle; its large buffers in shared memory if this job's run says so."""
    if shared.active is None:
        return _dumps(value)
    try:
        return shared.dumps(value, shared.active, release=shared.releasing())
    except Exception:
        import cloudpickle

        return shared.dumps(
            value, shared.active, cloudpickle.CloudPickler, release=shared.releasing()
        )


class _Shipped:
    """A result in shared memory, in a job's outcomes: a ``SharedValue`` in the caller."""

    __slots__ = ("data", "length", "segment")

    def __init__(self, value: Any, data: bytes, segment: Any) -> None:
        self.data = data
        self.segment = segment
        self.length = len(value) if type(value) in (list, tuple) else None

    def __reduce__(self) -> tuple[Any, ...]:
        return (shared.SharedValue, (self.data, self.segment, self.length))


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
    exception and run time). ``durations[i]`` is element ``i``'s run time when
    the slice was timed (``Elements.timed``), else ``durations`` is empty.
    Pickled on its own: an element whose result cannot be pickled becomes that
    element's error, naming "result", and spoils no other.
    """

    __slots__ = ("durations", "errors", "values")

    def __init__(
        self,
        values: list[Any],
        errors: dict[int, tuple[BaseException, float]],
        durations: array[float] | None = None,
    ) -> None:
        self.values = values
        self.errors = errors
        self.durations = array("d") if durations is None else durations

    def __reduce__(self) -> tuple[Any, ...]:
        values, errors = self.values, dict(self.errors)
        try:
            payload = _dumps_values(values)
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
        return (_load_slice_values, (payload, portable, self.durations))


def _load_slice_values(
    payload: bytes, errors: dict[int, tuple[BaseException, str, float]], durations: array[float]
) -> SliceValues:
    rebuilt = {}
    for i, (error, tb, duration) in errors.items():
        error.__cause__ = RemoteTraceback(tb)
        rebuilt[i] = (error, duration)
    return SliceValues(pickle.loads(payload), rebuilt, durations)


@final
class Snapshot:
    """A result pickled as it was when the next call of its job took it.

    A fused call takes the previous call's result itself, not a copy, and may
    write to it. When that result goes home too (the caller or a hook needs
    it), it is pickled before the call runs (``_HeldOutcomes.snapshot``), so
    the call's writes stay its own. It unpickles as the value would have.
    """

    __slots__ = ("_reduced",)

    def __init__(self, value: Any) -> None:
        if type(value) is SliceValues:
            self._reduced: tuple[Any, ...] = value.__reduce__()
            return
        payload = _dumps_result(value)
        if type(payload) is tuple:
            self._reduced = _Shipped(value, *payload).__reduce__()
        else:
            self._reduced = (pickle.loads, (payload,))

    def __reduce__(self) -> tuple[Any, ...]:
        return self._reduced


class Outcomes(list[Outcome]):
    """What a job returns: its outcomes, plus the tokens already sent home early.

    Pickled in one go (one C-level ``pickle.dumps`` for the whole batch); if
    anything in it needs more than plain pickle, each outcome pickles itself
    (cloudpickle, unpicklable results and events handled one by one).
    """

    def __init__(self, items: list[Outcome] | None = None) -> None:
        super().__init__(items or ())
        self.sent_early: list[int] = []
        # Segments of the caller's pool the worker unmapped, and those it still
        # uses, which a result may be handed over in (``_Job.settle``).
        self.released: list[str] = []
        self.kept: list[Any] = []
        self.handed: list[str] = []

    def __reduce__(self) -> tuple[Any, ...]:
        tokens = [o.token for o in self]
        try:
            rows = [_fast_row(o) for o in self]
            if self.kept:
                with shared.handing_over(self.kept) as handed:
                    payload = _dumps_rows(rows)
                self.handed = handed
            else:
                payload = _dumps_rows(rows)
        except Exception:  # each outcome pickles itself: nothing is handed over
            self.handed = []
            return (_load_outcomes, (tokens, None, list(self), *self._tail()))
        return (_load_outcomes, (tokens, payload, None, *self._tail()))

    def _tail(self) -> tuple[list[int], list[str], list[str]]:
        return self.sent_early, self.released, self.handed


def _dumps_rows(rows: list[tuple[Any, ...]]) -> bytes:
    """The outcome rows in one pickle; large results into shared memory when active.

    One C-level pickle finds out whether any result is large: only then is
    each result pickled on its own, into a segment it owns in the caller.
    """
    payload = _pickle_spotting_large(rows)
    if payload is not None:
        return payload
    settings, release = shared.active, shared.releasing()
    for i, row in enumerate(rows):
        if row[1]:
            found = shared.dumps(row[2], settings, release=release)
            if type(found) is tuple:
                rows[i] = (row[0], True, _Shipped(row[2], *found), *row[3:])
    return pickle.dumps(rows, protocol=_PICKLE_PROTOCOL)


def _dumps_values(values: list[Any]) -> bytes:
    """A slice's element results in one pickle; large ones into shared memory when active."""
    payload = _pickle_spotting_large(values)
    if payload is not None:
        return payload
    shipped, release = [], shared.releasing()
    for value in values:
        found = shared.dumps(value, shared.active, release=release)
        shipped.append(_Shipped(value, *found) if type(found) is tuple else value)
    return pickle.dumps(shipped, protocol=_PICKLE_PROTOCOL)


def _pickle_spotting_large(obj: Any) -> bytes | None:
    """``obj``'s pickle, or None if shared memory is active and it holds large buffers."""
    settings = shared.active
    if settings is None:
        return pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)
    threshold, large = settings.threshold, False

    def spot(buf: pickle.PickleBuffer) -> bool:
        # A large buffer is left out (False): this pickle is thrown away then,
        # and copying the buffer into it would cost as much as sending it.
        nonlocal large
        if buf.raw().nbytes >= threshold:
            large = True
            return False
        return True

    payload = pickle.dumps(obj, protocol=_PICKLE_PROTOCOL, buffer_callback=spot)
    return None if large or len(payload) >= threshold else payload


def _fast_row(o: Outcome) -> tuple[Any, ...]:
    if o.ok:
        return tuple(o)
    # A failure carries (error, traceback text) until it is rebuilt in the caller.
    error = _portable_error(o.value)
    return (o.token, False, error, o.duration, o.events, o.sent, o.timed_out, o.started, o.worker)


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
    released: list[str] | None = None,
    handed: list[str] | None = None,
) -> Outcomes:
    out = Outcomes()
    out.sent_early = sent_early
    out.released = released or []
    out.handed = handed or []
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
