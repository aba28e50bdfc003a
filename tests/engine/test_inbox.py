"""The inbox's ordering rules, fed message sequences by hand (no threads, no backends).

Each test plays what a backend and the channel could deliver, in an order
they really can arrive in, and checks what the engine is handed: events in
order, then the outcome, exactly once.
"""

from __future__ import annotations

from typing import Any

from daglite._job.messages import Events
from daglite._run.inbox import Inbox


class Call:
    """Stands in for the engine's unit: the fields the inbox keeps on a call."""

    def __init__(self, token: int, *upstreams: Call) -> None:
        self.token = token
        self.delivered = 0
        self.parked: Any = None
        self.awaited = False
        self.stash: list[Any] | None = None
        self.done = False
        self.upstreams: list[Call] | None = list(upstreams) or None


class Outcome:
    def __init__(self, token: int, sent: int = 0) -> None:
        self.token = token
        self.sent = sent

    def __repr__(self) -> str:
        return f"Outcome({self.token})"


class Recorder:
    """The engine's side: what it was handed, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, Any]] = []
        self.inbox = Inbox(self.deliver, self.finish)

    def deliver(self, call: Call, events: list[Any]) -> None:
        self.seen.extend(("event", call.token, e) for e in events)

    def finish(self, call: Call, outcome: Outcome) -> None:
        self.inbox.forget(call)
        call.done = True
        self.seen.append(("outcome", call.token, outcome))
        for follower in followers.get(call.token, ()):
            # What the engine does: a call's inputs done, its links are dropped.
            follower.upstreams = [u for u in follower.upstreams or () if not u.done] or None
            if follower.upstreams is None:
                self.inbox.upstream_done(follower)


followers: dict[int, list[Call]] = {}


def _track(rec: Recorder, *calls: Call) -> None:
    for call in calls:
        rec.inbox.track(call)


def _event(n: int) -> tuple[str, dict[str, Any]]:
    return ("progress", {"i": n})


def test_events_then_outcome_are_handed_on_as_they_come():
    rec = Recorder()
    _track(rec, Call(1))
    rec.inbox.events(Events(1, [_event(0), _event(1)]))
    outcome = Outcome(1, sent=2)
    rec.inbox.outcome(outcome)
    assert [k for k, *_ in rec.seen] == ["event", "event", "outcome"]
    assert not rec.inbox.waiting()


def test_an_outcome_before_the_events_it_sent_ahead_waits_for_them():
    rec = Recorder()
    _track(rec, Call(1))
    outcome = Outcome(1, sent=2)
    rec.inbox.outcome(outcome)  # came home with its job; its events are still on the channel
    assert rec.seen == [] and rec.inbox.parked == 1 and rec.inbox.waiting()
    rec.inbox.events(Events(1, [_event(0)]))
    assert rec.seen == [("event", 1, _event(0))]
    rec.inbox.events(Events(1, [_event(1)]))
    assert rec.seen[-1] == ("outcome", 1, outcome)
    assert rec.inbox.parked == 0


def test_an_early_outcome_then_its_jobs_completion_finishes_once():
    rec = Recorder()
    _track(rec, Call(1))
    outcome = Outcome(1)
    rec.inbox.outcome(outcome)  # EarlyOutcome on the channel
    rec.inbox.sent_early([1])  # the job's result lists it: already finished, nothing awaited
    assert rec.seen == [("outcome", 1, outcome)]
    assert not rec.inbox.waiting()


def test_a_jobs_completion_before_its_early_outcome_awaits_it():
    rec = Recorder()
    _track(rec, Call(1))
    rec.inbox.sent_early([1])
    assert rec.inbox.awaited == 1 and rec.inbox.waiting()
    rec.inbox.outcome(Outcome(1))
    assert rec.inbox.awaited == 0
    assert [k for k, *_ in rec.seen] == ["outcome"]


def test_a_followers_messages_wait_until_its_upstream_is_done():
    rec = Recorder()
    head = Call(1)
    follower = Call(2, head)
    followers[1] = [follower]
    try:
        _track(rec, head, follower)
        rec.inbox.events(Events(2, [_event(0)]))
        rec.inbox.outcome(Outcome(2, sent=1))  # the follower's, home first
        assert rec.seen == []
        rec.inbox.outcome(Outcome(1))  # now its upstream's
        rec.inbox.replay()
        assert [(k, t) for k, t, _ in rec.seen] == [
            ("outcome", 1),
            ("event", 2),
            ("outcome", 2),
        ]
    finally:
        followers.clear()


def test_a_call_sent_ahead_of_two_inputs_waits_for_both():
    # A call sent to a backend that takes pending inputs: its start and its
    # outcome may come home before either of its inputs' outcomes.
    rec = Recorder()
    left, right = Call(1), Call(2)
    join = Call(3, left, right)
    followers[1] = followers[2] = [join]
    try:
        _track(rec, left, right, join)
        rec.inbox.events(Events(3, [_event(0)]))
        rec.inbox.outcome(Outcome(3, sent=1))
        rec.inbox.outcome(Outcome(2))
        rec.inbox.replay()
        assert [(k, t) for k, t, _ in rec.seen] == [("outcome", 2)]  # still one to go
        rec.inbox.outcome(Outcome(1))
        rec.inbox.replay()
        assert [(k, t) for k, t, _ in rec.seen] == [
            ("outcome", 2),
            ("outcome", 1),
            ("event", 3),
            ("outcome", 3),
        ]
    finally:
        followers.clear()


def test_messages_for_a_forgotten_call_are_dropped():
    rec = Recorder()
    call = Call(1)
    _track(rec, call)
    rec.inbox.forget(call)  # retried under a new token, or the run stopped
    rec.inbox.events(Events(1, [_event(0)]))
    rec.inbox.outcome(Outcome(1))
    assert rec.seen == []


def test_forgetting_a_held_call_keeps_the_counters_right():
    rec = Recorder()
    parked, awaited = Call(1), Call(2)
    _track(rec, parked, awaited)
    rec.inbox.outcome(Outcome(1, sent=3))
    rec.inbox.sent_early([2])
    assert rec.inbox.parked == 1 and rec.inbox.awaited == 1
    rec.inbox.forget(parked)  # cancelled while held
    rec.inbox.forget(awaited)
    assert not rec.inbox.waiting()
    rec.inbox.events(Events(1, [_event(0), _event(1), _event(2)]))
    assert rec.seen == []


def test_a_second_outcome_for_a_parked_call_is_ignored():
    rec = Recorder()
    _track(rec, Call(1))
    first = Outcome(1, sent=1)
    rec.inbox.outcome(first)
    rec.inbox.outcome(Outcome(1, sent=1))
    rec.inbox.events(Events(1, [_event(0)]))
    assert [(k, o) for k, _, o in rec.seen if k == "outcome"] == [("outcome", first)]


def test_held_messages_keep_their_order_after_the_link_upstream_is_dropped():
    # The engine drops spent links (follower.upstreams = None) when the call
    # before it is done; messages already held must still go first.
    rec = Recorder()
    head = Call(1)
    follower = Call(2, head)
    _track(rec, head, follower)
    rec.inbox.events(Events(2, [_event(0)]))  # held: the head is not done
    head.done = True
    follower.upstreams = None
    rec.inbox.upstream_done(follower)
    rec.inbox.events(Events(2, [_event(1)]))  # arrives before the replay
    assert rec.seen == []
    rec.inbox.replay()
    assert rec.seen == [("event", 2, _event(0)), ("event", 2, _event(1))]
