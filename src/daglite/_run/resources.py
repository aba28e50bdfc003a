"""Named resources of one run: capacities, who holds what, who waits (gh-15).

``evaluate(resources={"gpu": 2})`` gives capacities; ``@task(resources={"gpu":
1})`` says what each call of a task holds while it runs. The gate sits in the
caller's submission path (``_Submitting._queue_units``), before any backend,
so one run never has more calls holding a resource than its capacity, across
all its backends. A call holds its amounts from the moment it is queued for
submission until the engine has its outcome (``_Completing._forget``): longer
than it runs, never shorter. Calls that do not fit wait, in order; each
release admits the waiting calls that fit now.

Pure bookkeeping: no threads, queues or backends.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any, final

from daglite._run.unit import _Unit

__all__ = ["ResourceGate", "check_requests"]


def check_requests(tasks: Iterable[Any], capacities: Mapping[str, float] | None) -> None:
    """Fail before anything runs if a task asks for a resource the run cannot give.

    Raises:
        ValueError: Naming the task and the resource: an unknown name, or more
            than the run's capacity.
    """
    for task in sorted(tasks, key=lambda t: t.name):
        for name, amount in (task.resources or {}).items():
            if capacities is None or name not in capacities:
                known = ", ".join(sorted(capacities or ())) or "none"
                raise ValueError(
                    f"task {task.name!r}: resources asks for unknown resource {name!r}; "
                    f"give its capacity with evaluate(..., resources={{{name!r}: ...}}) "
                    f"(resources of this run: {known})"
                )
            if amount > capacities[name]:
                raise ValueError(
                    f"task {task.name!r}: resources asks for {amount!r} of {name!r}, more "
                    f"than this run's capacity of {capacities[name]!r}; it could never run"
                )


@final
class ResourceGate:
    """Capacities of one run, the amounts in use, and the calls waiting for them."""

    __slots__ = ("capacity", "held", "used", "waiting")

    def __init__(self, capacity: Mapping[str, float]) -> None:
        self.capacity = dict(capacity)
        self.used = dict.fromkeys(capacity, 0.0)
        # id(call) -> the amounts it holds (a call holds at most once).
        self.held: dict[int, Mapping[str, float]] = {}
        self.waiting: collections.deque[_Unit] = collections.deque()

    def admit(self, calls: list[_Unit]) -> list[_Unit]:
        """The calls of ``calls`` that may be submitted now; the others wait.

        Calls that ask for nothing always pass. A call that asks goes now only
        if nothing waits before it and its amounts fit.
        """
        out = []
        for call in calls:
            need = call.task.resources
            if not need or id(call) in self.held:
                out.append(call)
            elif not self.waiting and self._fits(need):
                self._take(call, need)
                out.append(call)
            else:
                self.waiting.append(call)
        return out

    def release(self, call: _Unit) -> list[_Unit]:
        """``call`` is over: give back what it holds; returns the waiting calls admitted now.

        Releasing a call that holds nothing does nothing (it may be forgotten twice).
        """
        need = self.held.pop(id(call), None)
        if need is None:
            return []
        for name, amount in need.items():
            self.used[name] -= amount
        admitted = []
        still: collections.deque[_Unit] = collections.deque()
        for waiting in self.waiting:
            asked = waiting.task.resources
            if asked and self._fits(asked):
                self._take(waiting, asked)
                admitted.append(waiting)
            else:
                still.append(waiting)
        self.waiting = still
        return admitted

    def clear(self) -> None:
        """The run is stopping: nothing waiting will be submitted."""
        self.waiting.clear()

    def _fits(self, need: Mapping[str, float]) -> bool:
        used, capacity = self.used, self.capacity
        return all(used[n] + a <= capacity[n] for n, a in need.items())

    def _take(self, call: _Unit, need: Mapping[str, float]) -> None:
        for name, amount in need.items():
            self.used[name] += amount
        self.held[id(call)] = need
