"""CachePlugin: an on-disk result cache built on ``lookup_node_result``."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from daglite import TaskError, evaluate, task
from daglite.plugins.builtin import CachePlugin
from daglite.plugins.builtin.cache import CachePlugin as DirectCachePlugin
from daglite.plugins.hooks import hook_impl


def count_call(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)


def calls(path: str) -> int:
    return Path(path).stat().st_size if Path(path).exists() else 0


@task
def expensive(counter: str, x: int, options: dict | None = None) -> dict:
    count_call(counter)
    return {"x": x, "squared": x * x, "options": options}


@task
def nothing(counter: str, x: int) -> None:
    count_call(counter)
    return None


@task
def failing(counter: str) -> int:
    count_call(counter)
    raise ValueError("no result to cache")


class Starts:
    def __init__(self) -> None:
        self.after: dict[str, float] = {}

    @hook_impl
    def after_node_execute(self, key, duration):
        self.after[key] = duration


@pytest.fixture
def counter(tmp_path):
    return str(tmp_path / "calls")


def test_exported_from_builtin_package():
    assert CachePlugin is DirectCachePlugin


def test_second_run_skips_execution(backend, tmp_path, counter):
    cache_dir = tmp_path / "cache"
    dag = expensive.product(counter=[counter], x=[1, 2, 3])
    first = evaluate(dag, backend=backend, plugins=[CachePlugin(cache_dir)])
    assert calls(counter) == 3
    starts, cache = Starts(), CachePlugin(cache_dir)  # a new instance: the cache is on disk
    second = evaluate(dag, backend=backend, plugins=[cache, starts])
    assert second == first
    assert calls(counter) == 3
    assert (cache.hits, cache.misses) == (3, 0)
    assert starts.after == {f"expensive[{i}]": 0.0 for i in range(3)}


def test_changed_inputs_miss(backend, tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache")
    evaluate(expensive(counter, 1, {"a": 1}), backend=backend, plugins=[cache])
    evaluate(expensive(counter, 2, {"a": 1}), backend=backend, plugins=[cache])
    evaluate(expensive(counter, 1, {"a": 2}), backend=backend, plugins=[cache])
    assert calls(counter) == 3
    evaluate(expensive(counter, 1, {"a": 1}), backend=backend, plugins=[cache])
    assert calls(counter) == 3


def test_cached_none_is_served(backend, tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache")
    assert evaluate(nothing(counter, 1), backend=backend, plugins=[cache]) is None
    assert evaluate(nothing(counter, 1), backend=backend, plugins=[cache]) is None
    assert calls(counter) == 1
    assert cache.hits == 1


def test_dict_order_does_not_change_the_key(tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache")
    evaluate(expensive(counter, 1, {"a": 1, "b": {2, 3}}), plugins=[cache])
    evaluate(expensive(counter, 1, {"b": {3, 2}, "a": 1}), plugins=[cache])
    assert calls(counter) == 1


def test_upstream_results_are_part_of_the_key(backend, tmp_path, counter):
    @task
    def source(x: int) -> int:
        return x

    cache = CachePlugin(tmp_path / "cache", tasks=["expensive"])
    evaluate(expensive(counter, source(1)), backend=backend, plugins=[cache])
    evaluate(expensive(counter, source(1)), backend=backend, plugins=[cache])
    evaluate(expensive(counter, source(2)), backend=backend, plugins=[cache])
    assert calls(counter) == 2


def test_only_listed_tasks_are_cached(tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache", tasks=[expensive])
    for _ in range(2):
        evaluate([expensive(counter, 1), nothing(counter, 1)], plugins=[cache])
    assert calls(counter) == 3  # expensive once, nothing twice


def test_edited_function_misses_when_given_as_task(tmp_path, counter):
    def make(offset: int):
        if offset == 0:

            def expensive(counter: str, x: int) -> int:
                count_call(counter)
                return x
        else:

            def expensive(counter: str, x: int) -> int:
                count_call(counter)
                return x + 100

        return task(expensive)

    v1, v2 = make(0), make(1)
    assert v1.name == v2.name == "expensive"
    assert evaluate(v1(counter, 1), plugins=[CachePlugin(tmp_path, tasks=[v1])]) == 1
    assert evaluate(v2(counter, 1), plugins=[CachePlugin(tmp_path, tasks=[v2])]) == 101
    assert evaluate(v1(counter, 1), plugins=[CachePlugin(tmp_path, tasks=[v1])]) == 1
    assert calls(counter) == 2


def test_unhashable_input_is_not_cached(tmp_path, counter, caplog):
    caplog.set_level(logging.DEBUG, logger="daglite.plugins.cache")
    cache = CachePlugin(tmp_path / "cache")
    lock = threading.Lock()

    @task
    def locked(counter: str, guard) -> int:
        count_call(counter)
        return 1

    for _ in range(2):
        assert evaluate(locked(counter, lock), backend="threads", plugins=[cache]) == 1
    assert calls(counter) == 2
    assert any("locked" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert not list((tmp_path / "cache").rglob("*.entry"))


def test_failed_task_is_not_cached(backend, tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache")
    for _ in range(2):
        with pytest.raises(TaskError):
            evaluate(failing(counter), backend=backend, plugins=[cache])
    assert calls(counter) == 2
    assert not list((tmp_path / "cache").rglob("*.entry"))


def test_writes_leave_no_temporary_files(backend, tmp_path, counter):
    cache_dir = tmp_path / "cache"
    evaluate(
        expensive.product(counter=[counter], x=list(range(20))),
        backend=backend,
        plugins=[CachePlugin(cache_dir)],
    )
    files = [p for p in cache_dir.rglob("*") if p.is_file() and p.name != "CACHEDIR.TAG"]
    assert len(files) == 20
    assert all(p.suffix == ".entry" and not p.name.startswith(".") for p in files)


def test_unreadable_entry_runs_the_task_and_is_rewritten(tmp_path, counter, caplog):
    cache_dir = tmp_path / "cache"
    evaluate(expensive(counter, 1), plugins=[CachePlugin(cache_dir)])
    (entry,) = cache_dir.rglob("*.entry")
    entry.write_bytes(b"not a pickle")
    assert evaluate(expensive(counter, 1), plugins=[CachePlugin(cache_dir)])["squared"] == 1
    assert calls(counter) == 2
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    evaluate(expensive(counter, 1), plugins=[CachePlugin(cache_dir)])
    assert calls(counter) == 2


def test_clear_removes_entries(tmp_path, counter):
    cache = CachePlugin(tmp_path / "cache")
    evaluate(expensive(counter, 1), plugins=[cache])
    cache.clear()
    evaluate(expensive(counter, 1), plugins=[cache])
    assert calls(counter) == 2


def test_bad_tasks_argument_raises(tmp_path):
    with pytest.raises(TypeError, match="Task objects or task names"):
        CachePlugin(tmp_path / "cache", tasks=[42])
    assert not (tmp_path / "cache").exists()
