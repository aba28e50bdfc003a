"""A job run by hand, on this thread: the worker's side of a fused chain and a slice.

No backend and no engine: the calls are records (``_Call``) as submitted, the
way home a ``_Home`` that collects what would travel.
"""

from __future__ import annotations

from typing import Any

from daglite._job.channel import _Home
from daglite._job.job import _Job
from daglite._job.records import KEPT, Elements, _Call


def _home() -> tuple[_Home, list[Any]]:
    sent: list[Any] = []
    home = _Home("run", sent.append)
    home.wants_start = False
    return home, sent


def _call(token: int, func: Any, kwargs: dict[str, Any], follows: Any = None) -> _Call:
    return _Call(
        token, func.__name__, f"{func.__name__}-{token}", func, kwargs, None, None, None, follows
    )


def inc(x: int) -> int:
    return x + 1


def boom(x: int) -> int:
    raise RuntimeError("the head fails")


def test_a_chain_feeds_each_call_the_previous_result():
    home, _ = _home()
    job = _Job(home, [_call(1, inc, {"x": 1}), _call(2, inc, {"x": None}, ("x",))])
    outcomes = job()
    assert [(o.token, o.ok, o.value) for o in outcomes] == [(1, True, 2), (2, True, 3)]


def test_a_follower_after_a_failed_call_does_not_run():
    home, _ = _home()
    ran: list[int] = []

    def follower(y: int) -> int:
        ran.append(y)
        return y

    job = _Job(home, [_call(1, boom, {"x": 1}), _call(2, follower, {"y": None}, ("y",))])
    outcomes = job()
    assert [o.token for o in outcomes] == [1]  # the follower is left to the caller
    assert not outcomes[0].ok and ran == []


def test_a_failed_call_skips_only_its_own_chain_in_a_job_of_several():
    # Element-wise fusion packs one chain per element into a job (gh-14).
    home, _ = _home()
    ran: list[int] = []

    def follower(y: int) -> int:
        ran.append(y)
        return y

    job = _Job(
        home,
        [
            _call(1, boom, {"x": 1}),
            _call(2, follower, {"y": None}, ("y",)),
            _call(3, follower, {"y": None}, ("y",)),
            _call(4, inc, {"x": 10}),
            _call(5, follower, {"y": None}, ("y",)),
        ],
    )
    outcomes = job()
    assert [(o.token, o.ok) for o in outcomes] == [(1, False), (4, True), (5, True)]
    assert ran == [11]


def _slice(token: int, rows: list, follows: Any = None) -> _Call:
    elems = Elements(("x",), rows, 0, False, True, True)
    return _Call(token, "inc", f"inc-{token}", inc, {}, None, None, elems, follows, True)


def test_a_slice_fused_after_a_slice_takes_its_values_as_rows():
    # Element-wise fusion on the bulk path (gh-14); the values fed stay here.
    home, _ = _home()
    outcomes = _Job(home, [_slice(1, [1, 2, 3]), _slice(2, [None] * 3, ("x",))])()
    assert [o.token for o in outcomes] == [1, 2]
    head, follower = outcomes
    assert head.value.values == [KEPT] * 3  # held back: the follower owned them
    assert len(head.value.durations) == 3  # each element's run time is not
    assert follower.value.values == [3, 4, 5]


def test_a_slice_with_a_failed_element_skips_the_slice_fused_after_it():
    home, _ = _home()
    outcomes = _Job(home, [_slice(1, [1, "x", 3]), _slice(2, [None] * 3, ("x",))])()
    assert [o.token for o in outcomes] == [1]  # the follower is left to the caller
    assert outcomes[0].value.values[::2] == [2, 4]  # sent home: the caller feeds them on
    assert list(outcomes[0].value.errors) == [1]


def test_a_slice_whose_follower_has_a_failed_element_sends_its_values_home():
    home, _ = _home()
    failing = _slice(2, [None] * 3, ("x",))._replace(func=boom)
    head, follower = _Job(home, [_slice(1, [1, 2, 3]), failing])()
    assert head.value.values == [2, 3, 4]  # for the follower's retries
    assert sorted(follower.value.errors) == [0, 1, 2]


def test_the_records_a_job_runs_are_not_changed_by_running_it():
    home, _ = _home()
    head, follower = _call(1, inc, {"x": 1}), _call(2, inc, {"x": None}, ("x",))
    _Job(home, [head, follower])()
    assert follower.kwargs == {"x": None} and follower.follows == ("x",)


def test_a_timed_slice_reports_each_elements_value_and_run_time():
    home, _ = _home()
    elems = Elements(("x",), [1, 2, 3], 10, False, True, True)
    call = _Call(1, "inc", "inc", inc, {}, None, None, elems, None)
    (outcome,) = _Job(home, [call])()
    assert outcome.ok
    assert outcome.value.values == [2, 3, 4]
    assert len(outcome.value.durations) == 3
    assert all(d >= 0.0 for d in outcome.value.durations)


def test_an_untimed_slice_keeps_no_run_times_but_a_failures():
    home, _ = _home()
    elems = Elements(("x",), [1, 2], 0, False, True, False)

    def odd(x: int) -> int:
        if x == 2:
            raise ValueError("two")
        return x

    call = _Call(1, "odd", "odd", odd, {}, None, None, elems, None)
    (outcome,) = _Job(home, [call])()
    assert list(outcome.value.durations) == []
    assert outcome.value.values == [1, None]
    error, duration = outcome.value.errors[1]
    assert isinstance(error, ValueError) and duration >= 0.0
