"""The engine's inbox: its message types, and the rules that order what comes home.

The run's loop blocks on one queue. What arrives there:

* ``JobDone``: a backend's future for a job is done (its outcomes, or its error);
* ``Events`` and ``EarlyOutcome`` (``daglite._job.messages``): what a running
  job sends ahead through the channel, from any worker;
* ``Cancel``: the caller cancelled ``evaluate_async``.

The same call's messages may take different paths (the job's result, the
channel), so they can arrive out of order. ``Inbox`` restores the order per
call, and nothing else: it runs no hook and schedules nothing, it hands each
call's events and its outcome, in order, to the two functions it was given.

Rules, for each tracked call (by token):

1. Events are delivered in the order sent. An outcome says how many of its
   call's events went ahead (``sent``); it is *parked* until that many were
   delivered, so no event arrives after its call is finished.
2. A job's result lists the calls whose outcomes went ahead
   (``sent_early``): each is *awaited* until its outcome arrives.
3. A call handed out ahead of its inputs (a fused follower, or a call sent to
   a backend that takes pending inputs) has its messages *stashed* until
   every call it takes a result from is done in the caller (those results
   may come home after its own, on another path); the engine then clears
   its ``upstreams``, ``upstream_done`` queues it, and ``replay`` hands its
   stash on in order.
4. A message for a call no longer tracked (finished, or retried under a new
   token) is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, final

from daglite._job.messages import EarlyOutcome, Event, Events

__all__ = ["Cancel", "Inbox", "JobDone", "Message"]


class JobDone(NamedTuple):
    """The backend's future of ``job`` is done; ``tokens`` are its calls as submitted."""

    job: Any
    future: Future[Any]
    tokens: list[int]


class Cancel(NamedTuple):
    """``evaluate_async`` was cancelled: the loop stops."""


Message = JobDone | Events | EarlyOutcome | Cancel


class _Outcome(Protocol):
    """What the inbox reads of an outcome."""

    @property
    def token(self) -> int: ...

    @property
    def sent(self) -> int: ...


class _Call(Protocol):
    """What the inbox keeps on each call it tracks (the engine's ``_Unit``)."""

    token: int
    delivered: int
    parked: Any
    awaited: bool
    stash: list[Events | EarlyOutcome] | None
    # The calls it takes results from that are not done in the caller yet
    # (None or empty: none).
    upstreams: list[Any] | None


@final
class Inbox:
    """Orders each call's events and outcome (see the module's rules).

    Args:
        deliver: Called with a call and a list of its events, in order.
        finish: Called with a call and its outcome once every event it sent
            ahead was delivered. It must ``forget`` the call (or track it again
            under a new token).

    Attributes:
        calls: The tracked calls, by token.
        parked: How many outcomes wait for their events.
        awaited: How many outcomes that went ahead have not arrived yet.
        ready: Followers whose stashed messages may now be replayed.
    """

    __slots__ = ("_deliver", "_finish", "awaited", "calls", "parked", "ready")

    def __init__(
        self,
        deliver: Callable[[Any, list[Event]], None],
        finish: Callable[[Any, Any], None],
    ) -> None:
        self._deliver = deliver
        self._finish = finish
        self.calls: dict[int, Any] = {}
        self.parked = 0
        self.awaited = 0
        self.ready: deque[Any] = deque()

    def waiting(self) -> bool:
        """Whether something announced has not arrived yet."""
        return bool(self.parked or self.awaited)

    def track(self, call: _Call) -> None:
        """Messages for ``call.token`` belong to ``call`` from now on."""
        call.delivered = 0
        self.calls[call.token] = call

    def forget(self, call: _Call) -> None:
        """Stop tracking ``call``; late messages for it are dropped."""
        self.calls.pop(call.token, None)
        if call.parked is not None:
            call.parked = None
            self.parked -= 1
        if call.awaited:
            call.awaited = False
            self.awaited -= 1

    def events(self, message: Events) -> None:
        """Events a running call sent ahead."""
        call = self.calls.get(message.token)
        if call is None or self._stashed(call, message):
            return
        # Counted first: a handler that raises (strict mode) must not leave the
        # call waiting for events that did arrive.
        call.delivered += len(message.events)
        self._deliver(call, message.events)
        parked = call.parked
        if parked is not None and call.delivered >= parked.sent:
            call.parked = None
            self.parked -= 1
            self._finish(call, parked)

    def outcome(self, outcome: _Outcome) -> None:
        """A call finished (reported with its job, or ahead on the channel)."""
        call = self.calls.get(outcome.token)
        if call is None or call.parked is not None:
            return
        if call.awaited:
            call.awaited = False
            self.awaited -= 1
        if (call.stash is not None or call.upstreams) and self._stashed(
            call, EarlyOutcome(outcome)
        ):
            return
        if outcome.sent > call.delivered:
            call.parked = outcome  # its events are still on the way
            self.parked += 1
        else:
            self._finish(call, outcome)

    def sent_early(self, tokens: Iterable[int]) -> None:
        """A job's result says these calls' outcomes went ahead on the channel."""
        for token in tokens:
            call = self.calls.get(token)
            if call is not None and not call.awaited and call.parked is None:
                call.awaited = True
                self.awaited += 1

    def upstream_done(self, follower: _Call) -> None:
        """The calls ``follower`` takes results from are done here: its held messages may go on."""
        if follower.stash is not None:
            self.ready.append(follower)

    def replay(self) -> None:
        """Hand on the held messages of followers whose input is done, in order."""
        while self.ready:
            call = self.ready.popleft()
            stash, call.stash = call.stash, None
            for message in stash or ():
                if type(message) is Events:
                    self.events(message)
                else:
                    self.outcome(message.outcome)

    def _stashed(self, call: _Call, message: Events | EarlyOutcome) -> bool:
        """Hold a message of a call handed out ahead until its inputs are done here.

        Once messages are held, later ones join them until ``replay`` hands
        them on, even if the call's links upstream are gone by then.
        """
        if call.stash is None:
            if not call.upstreams:
                return False
            call.stash = []
        call.stash.append(message)
        return True
