"""How the engine runs in-caller (inline) calls: order, fail fast, late events,
cancellation, and nothing left behind."""

from __future__ import annotations

import asyncio
import threading

import pytest

from daglite import BackendError, TaskError, evaluate, evaluate_async, task
from daglite._job import channel
from daglite.plugins import reporters
from daglite.plugins.hooks import hook_impl
from daglite.plugins.reporters import get_reporter

WAIT = 30.0  # deadlock detector only


class Log:
    """Records node hooks and ``tick`` events, in the order they arrive."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def register_event_handlers(self, registry):
        registry.on("tick", lambda event: self.seen.append(("tick", event["key"])))

    @hook_impl
    def before_node_execute(self, key):
        self.seen.append(("before", key))

    @hook_impl
    def on_node_error(self, key):
        self.seen.append(("error", key))


def _flush_now() -> None:
    """Send the running task's buffered events home now (as the flusher would)."""
    flush = getattr(get_reporter(), "flush", None)
    if flush is not None:
        flush()


def test_a_failure_whose_events_went_ahead_still_stops_the_run_at_once():
    # The failed call's events were flushed from its timeout helper thread, so
    # its outcome waits for them: the engine must take them before running the
    # next inline call, or fail-fast would let later calls run (and fail).
    ran: list[int] = []

    @task(timeout=WAIT)
    def first() -> int:
        get_reporter().report("tick")
        _flush_now()
        raise ValueError("first failed")

    @task
    def later(i: int) -> int:
        ran.append(i)
        raise RuntimeError(f"later {i} failed")

    log = Log()
    with pytest.raises(TaskError, match="first failed") as info:
        evaluate([first(), later(1), later(2)], plugins=[log])
    assert info.value.key == "first"
    assert ran == []
    assert log.seen == [("before", "first"), ("tick", "first"), ("error", "first")]


def test_a_helper_thread_left_behind_by_a_timeout_is_not_watched_afterwards():
    release, reported = threading.Event(), threading.Event()

    @task(timeout=0.2)
    def stuck() -> int:
        release.wait(WAIT)  # overruns; the helper thread is abandoned
        get_reporter().report("tick")  # its first report comes after the end
        reported.set()
        return 1

    with pytest.raises(TaskError, match="timed out"):
        evaluate(stuck(), plugins=[Log()])
    release.set()
    assert reported.wait(WAIT)
    assert not channel._flusher._running  # noqa: SLF001 - nothing keeps the run alive


@pytest.mark.parametrize("backend", ["inline", "threads"])
def test_a_reporter_kept_past_the_run_reaches_no_handler(backend):
    @task
    def leak() -> object:
        return get_reporter()

    log = Log()
    kept = evaluate(leak(), backend=backend, plugins=[log])
    kept.report("tick")  # type: ignore[attr-defined]
    assert log.seen == [("before", "leak")]


def test_an_unknown_task_backend_fails_before_anything_runs():
    ran: list[str] = []

    @task
    def upstream() -> int:
        ran.append("upstream")
        return 1

    @task(backend="no-such-backend")
    def downstream(x: int) -> int:
        return x

    class GraphLog:  # no node hook: nothing asks for node metadata early
        @hook_impl
        def before_graph_execute(self):
            ran.append("before_graph_execute")

    with pytest.raises(BackendError, match="no-such-backend"):
        evaluate(downstream(upstream()), plugins=[GraphLog()])
    assert ran == []


def test_a_strict_hook_error_leaves_no_task_context_behind(monkeypatch):
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")

    class Boom:
        @hook_impl
        def before_node_execute(self):
            raise RuntimeError("hook bug")

    @task(timeout=WAIT)
    def timed() -> int:
        return 1

    @task
    def plain() -> int:
        return 1

    for t in (timed, plain):
        with pytest.raises(RuntimeError, match="hook bug"):
            evaluate(t(), plugins=[Boom()])
        assert reporters._current.get() is None  # noqa: SLF001


@pytest.mark.parametrize("watched", [False, True], ids=["slice", "per-element"])
def test_cancelling_evaluate_async_stops_an_inline_fan_out_after_the_call_at_hand(watched):
    # Unwatched, the fan-out runs as one slice; watched, as one lane call per
    # element. Either way nothing runs after the call that was running.
    started, cancel_sent = threading.Event(), threading.Event()
    ran: list[int] = []

    @task
    def step(i: int) -> int:
        ran.append(i)
        if i == 0:
            started.set()
            assert cancel_sent.wait(WAIT)
        return i

    async def main() -> None:
        plugins = [Log()] if watched else []
        run = asyncio.ensure_future(evaluate_async(step.product(i=range(20)), plugins=plugins))
        assert await asyncio.to_thread(started.wait, WAIT)
        run.cancel()
        for _ in range(3):  # let evaluate_async handle its cancellation (one step)
            await asyncio.sleep(0)
        cancel_sent.set()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(main())
    assert ran == [0]


def test_a_strict_event_handler_error_fails_the_task_instead_of_hanging(monkeypatch):
    # With retries the inline call goes as a unit; the handler raised after the
    # event was counted as sent, and the engine must not wait for it forever.
    monkeypatch.setenv("DAGLITE_STRICT_PLUGINS", "1")

    class Raising:
        def register_event_handlers(self, registry):
            registry.on("tick", self.boom)

        def boom(self, event):
            raise RuntimeError("handler boom")

    @task(retries=1)
    def noisy() -> int:
        get_reporter().report("tick")
        return 1

    with pytest.raises(TaskError, match="handler boom"):
        evaluate(noisy(), plugins=[Raising()])


def test_cancel_queues_its_message_before_local_jobs_can_see_abort():
    # A local job that sees ``abort`` stops early and reports done; the engine
    # must already hold the cancel message then, or it would forget the calls
    # the job skipped and finish the run as a success.
    from daglite.engine import _prepare

    @task
    def one() -> int:
        return 1

    run, _ = _prepare(one(), None, None, False, None, None, "raise", {}, True)
    queued_when_aborted: list[int] = []

    class Home:
        def __setattr__(self, name, value):
            if name == "abort":
                queued_when_aborted.append(run.queue.qsize())

    run.homes[0] = Home()  # type: ignore[assignment]
    run.cancel()
    assert queued_when_aborted == [1]
