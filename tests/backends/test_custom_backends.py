"""Custom backends that implement only ``submit`` get every hook and event guarantee.

Three backends, each a few lines: a ``ThreadPoolExecutor``, a spawn-context
``ProcessPoolExecutor`` and loky's reusable executor. Each runs the checks of
``tests/plugins/test_hook_contract.py`` and ``tests/plugins/test_events.py``,
once registered by name and once passed as an instance.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest

from daglite import evaluate, task
from daglite.backends import Backend, get_backend, register_backend
from plugins.test_events import check_counts_and_order, check_mid_run_delivery, check_single_event
from plugins.test_hook_contract import (
    Recorder,
    check_diamond,
    check_duration,
    check_node_error_type,
    check_one_at_a_time_in_caller,
    check_start_fires_when_running,
    check_wide_fan_out,
)


class ThreadPoolBackend(Backend):
    """Runs jobs in threads of this process."""

    name = "custom-threads"

    def __init__(self, max_workers: int = 4) -> None:
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.max_workers)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def submit(self, fn, /, *args, **kwargs) -> Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)


class SpawnPoolBackend(Backend):
    """Runs jobs in spawned worker processes of its own."""

    name = "custom-spawn"

    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max_workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.max_workers, mp_context=ctx)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def submit(self, fn, /, *args, **kwargs) -> Future[Any]:
        return self._pool.submit(fn, *args, **kwargs)


class LokyBackend(Backend):
    """Runs jobs on loky's reusable executor."""

    name = "custom-loky"

    def __init__(self, max_workers: int = 2) -> None:
        self.max_workers = max_workers
        self._executor: Any = None

    def start(self) -> None:
        from loky import get_reusable_executor

        self._executor = get_reusable_executor(max_workers=self.max_workers)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, kill_workers=True)
            self._executor = None

    def submit(self, fn, /, *args, **kwargs) -> Future[Any]:
        return self._executor.submit(fn, *args, **kwargs)


KINDS = {"custom-threads": ThreadPoolBackend, "custom-spawn": SpawnPoolBackend}
KINDS["custom-loky"] = LokyBackend
PROCESS_KINDS = {"custom-spawn", "custom-loky"}


@pytest.fixture(params=sorted(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture(params=["by-name", "instance"])
def custom(request, kind):
    """A custom backend (name or instance) and its options; stopped after the test."""
    if request.param == "by-name":
        register_backend(kind, KINDS[kind])
        yield kind, {}
        get_backend(kind).shutdown()
    else:
        backend = KINDS[kind]()
        yield backend, {}
        backend.shutdown()


@pytest.fixture(scope="module")
def mp_manager():
    with multiprocessing.get_context("forkserver").Manager() as manager:
        yield manager


def test_diamond_hooks_in_caller_in_order(custom):
    backend, options = custom
    rec = check_diamond(backend, **options)
    name = backend if isinstance(backend, str) else type(backend).name
    assert {m.backend_name for m in rec.metadata.values()} == {name}


def test_wide_fan_out_order(custom):
    backend, options = custom
    check_wide_fan_out(backend, n=500, **options)


def test_duration_filled_in_caller(custom):
    backend, options = custom
    check_duration(backend, **options)


def test_node_error_gets_own_exception(custom):
    backend, options = custom
    check_node_error_type(backend, **options)


def test_events_delivered(custom):
    backend, options = custom
    check_single_event(backend, **options)
    check_counts_and_order(backend, tasks=20, per_task=100, **options)


def test_events_arrive_while_task_runs(custom, mp_manager):
    backend, options = custom
    check_mid_run_delivery(backend, mp_manager.Event(), **options)


def test_start_hook_fires_when_task_starts(kind, mp_manager):
    with KINDS[kind](max_workers=1) as backend:
        check_start_fires_when_running(backend, mp_manager.Event())


def test_lambdas_and_closures_defined_here_run(custom, kind):
    backend, options = custom
    offset = 10
    plus_offset = task(lambda x: x + offset, name="plus_offset")

    @task
    def where(x: int) -> tuple[int, int]:
        return os.getpid(), x * offset

    rec = Recorder()
    pid, value = evaluate(where(plus_offset(1)), backend=backend, plugins=[rec], **options)
    assert value == 110
    assert (pid != os.getpid()) == (kind in PROCESS_KINDS)
    check_one_at_a_time_in_caller(rec)
    assert set(rec.durations) == {"plus_offset", "where"}


def test_registered_name_is_the_metadata_backend_name(kind):
    # The same registered backend, chosen at evaluate level and at task level, must be
    # reported under the same name: the one it was registered with.
    alias = f"{kind}-alias"
    register_backend(alias, KINDS[kind])
    try:
        rec = Recorder()
        one = task(lambda: 1, name="one")
        two = task(lambda x: x + 1, name="two", backend=alias)
        evaluate(two(one()), backend=alias, plugins=[rec])
        assert rec.metadata["two"].backend_name == alias
        assert rec.metadata["one"].backend_name == alias
    finally:
        get_backend(alias).shutdown()
