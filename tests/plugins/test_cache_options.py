"""Ways to turn the cache on (issue 16): @task(cache=...), evaluate(cache=...), expiry, CLI."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from daglite import CachePolicy, evaluate, task
from daglite.cli import main
from daglite.plugins.builtin import CachePlugin
from daglite.plugins.builtin import cache as cache_module
from daglite.plugins.hooks import hook_impl
from daglite.plugins.manager import register_plugins


def note(call: str) -> None:
    # A file, not a module-level list: a global the task mutates would change its key.
    with open(os.environ["CACHE_TEST_RUNS"], "a") as f:
        f.write(call + "\n")


def runs() -> list[str]:
    path = Path(os.environ["CACHE_TEST_RUNS"])
    return path.read_text().split() if path.exists() else []


@task(cache=True)
def marked(x: int) -> int:
    note(f"marked({x})")
    return x + 1


@task
def unmarked(x: int) -> int:
    note(f"unmarked({x})")
    return x * 10


@task(cache=False)
def never(x: int) -> int:
    note(f"never({x})")
    return -x


@task(cache=CachePolicy(ignore=("verbose",)))
def quiet(x: int, verbose: bool = False) -> int:
    note(f"quiet({x})")
    return x


@pytest.fixture(autouse=True)
def _fresh_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CACHE_TEST_RUNS", str(tmp_path / "runs.log"))


def default_dir() -> Path:
    return Path(os.environ["DAGLITE_CACHE_DIR"])


def test_marked_task_is_cached_in_the_default_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGLITE_CACHE_DIR", str(tmp_path / "default"))
    for _ in range(2):
        assert evaluate([marked(1), unmarked(1)]) == [2, 10]
    assert runs() == ["marked(1)", "unmarked(1)", "unmarked(1)"]
    assert len(list((tmp_path / "default").rglob("*.entry"))) == 1
    assert (tmp_path / "default").stat().st_mode & 0o777 == 0o700


def test_evaluate_cache_path_caches_every_task_but_those_marked_false(tmp_path):
    dag = [marked(2), unmarked(2), never(2)]
    for _ in range(2):
        assert evaluate(dag, cache=tmp_path / "c") == [3, 20, -2]
    assert runs() == ["marked(2)", "unmarked(2)", "never(2)", "never(2)"]
    assert len(list((tmp_path / "c").rglob("*.entry"))) == 2


def test_evaluate_cache_true_uses_the_default_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGLITE_CACHE_DIR", str(tmp_path / "default"))
    for _ in range(2):
        assert evaluate(unmarked(3), cache=True) == 30
    assert runs() == ["unmarked(3)"]


def test_evaluate_cache_false_turns_marked_tasks_off(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGLITE_CACHE_DIR", str(tmp_path / "default"))
    for _ in range(2):
        assert evaluate(marked(4), cache=False) == 5
    assert runs() == ["marked(4)", "marked(4)"]
    assert not (tmp_path / "default").exists()


def test_with_options_turns_caching_on_and_off(tmp_path):
    on, off = unmarked.with_options(cache=True), marked.with_options(cache=False)
    assert (on.cache, off.cache, marked.cache, unmarked.cache) == (True, False, True, None)
    for _ in range(2):
        evaluate([on(5), off(5)], plugins=[CachePlugin(tmp_path / "c")])
    assert runs() == ["unmarked(5)", "marked(5)", "marked(5)"]


def test_policy_ignores_parameters(tmp_path):
    assert evaluate(quiet(1, verbose=True), cache=tmp_path) == 1
    assert evaluate(quiet(1, verbose=False), cache=tmp_path) == 1
    assert evaluate(quiet(2), cache=tmp_path) == 2
    assert runs() == ["quiet(1)", "quiet(2)"]


class Clock:
    def __init__(self, monkeypatch):
        self.now = 1_000_000.0
        monkeypatch.setattr(cache_module.time, "time", lambda: self.now)


def test_cache_ttl_expires_entries(tmp_path, monkeypatch):
    clock = Clock(monkeypatch)
    evaluate(unmarked(6), cache=tmp_path, cache_ttl=60)
    clock.now += 59
    evaluate(unmarked(6), cache=tmp_path, cache_ttl=60)
    assert runs() == ["unmarked(6)"]
    clock.now += 2
    evaluate(unmarked(6), cache=tmp_path, cache_ttl=60)
    assert runs() == ["unmarked(6)", "unmarked(6)"]  # stale: ran again, stored anew
    evaluate(unmarked(6), cache=tmp_path)  # no ttl: any age is fine
    assert len(runs()) == 2


def test_policy_ttl_wins_over_the_run_ttl(tmp_path, monkeypatch):
    clock = Clock(monkeypatch)
    short = unmarked.with_options(cache=CachePolicy(ttl=10))
    evaluate(short(7), cache=tmp_path, cache_ttl=1000)
    clock.now += 11
    evaluate(short(7), cache=tmp_path, cache_ttl=1000)
    assert runs() == ["unmarked(7)", "unmarked(7)"]


def test_an_explicit_cache_plugin_is_not_doubled(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGLITE_CACHE_DIR", str(tmp_path / "default"))
    evaluate(marked(8), plugins=[CachePlugin(tmp_path / "mine")])
    register_plugins(CachePlugin(tmp_path / "global"))
    evaluate(marked(9))
    assert not (tmp_path / "default").exists()
    assert len(list((tmp_path / "mine").rglob("*.entry"))) == 1
    assert len(list((tmp_path / "global").rglob("*.entry"))) == 1


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: task(cache="yes")(lambda x: x), TypeError, "cache must be True, False, None"),
        (
            lambda: task(cache=CachePolicy(ignore=("nope",)))(lambda x: x),
            ValueError,
            "'<lambda>'.*'nope'",
        ),
        (lambda: unmarked.with_options(cache=1), TypeError, "task 'unmarked'"),
        (lambda: CachePolicy(ttl=0), ValueError, "ttl must be a positive number"),
        (lambda: CachePolicy(ttl="1"), TypeError, "ttl must be a number"),
        (lambda: CachePolicy(ignore=(1,)), TypeError, "parameter names"),
    ],
)
def test_bad_cache_options_name_the_task_and_parameter(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_cache_ttl_raises_before_running(tmp_path):
    with pytest.raises(ValueError, match="ttl"):
        evaluate(unmarked(1), cache=tmp_path, cache_ttl=-5)
    assert runs() == []


def test_lookup_hook_receives_the_task(tmp_path):
    seen = []

    class Looks:
        @hook_impl
        def lookup_node_result(self, key, task):
            seen.append((key, task))

    evaluate(unmarked(1), plugins=[Looks()])
    assert seen == [("unmarked", unmarked)]


# -- the command line -------------------------------------------------------------------


def test_cli_cache_info_and_clear(tmp_path, capsys):
    location = tmp_path / "c"
    evaluate([unmarked.product(x=[1, 2, 3]), marked(1)], cache=location)
    assert main(["cache", "info", str(location)]) == 0
    out = capsys.readouterr().out
    assert f"{location}: 4 entries" in out
    assert "unmarked" in out and "marked" in out
    assert main(["cache", "clear", str(location), "--task", "marked"]) == 0
    assert "deleted 1 entry" in capsys.readouterr().out
    assert main(["cache", "clear", str(location)]) == 0
    assert "deleted 3 entries" in capsys.readouterr().out
    assert main(["cache", "info", str(location)]) == 0
    assert "0 entries" in capsys.readouterr().out
    assert (location / "CACHEDIR.TAG").exists()  # only entries are deleted


def test_cli_cache_info_of_a_missing_cache_fails(tmp_path, capsys):
    assert main(["cache", "info", str(tmp_path / "nope")]) == 1
    assert "no cache at" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()


def test_cli_run_with_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cli_cache_dag.py").write_text(
        "from daglite import task\n\n"
        "@task\ndef double(x: int) -> int:\n"
        "    with open('runs.txt', 'a') as f:\n        f.write('.')\n"
        "    return 2 * x\n"
    )
    for _ in range(2):
        assert main(["run", "cli_cache_dag:double", "-p", "x=4", "--cache", "c"]) == 0
        assert capsys.readouterr().out.strip() == "8"
    assert (tmp_path / "runs.txt").read_text() == "."


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="needs distributed")
def test_results_kept_on_a_dask_cluster_are_not_stored(tmp_path):
    from daglite.backends.dask import DaskBackend

    @task
    def big(n: int) -> bytes:
        return b"x" * n

    @task
    def size(data: bytes) -> int:
        return len(data)

    with DaskBackend(max_workers=1, remote_threshold=1000) as backend:
        for _ in range(2):
            ran = Recorder()
            dag = [size(big(5000)), size(big(10))]
            assert evaluate(dag, backend=backend, cache=tmp_path, plugins=[ran]) == [5000, 10]
    # big(5000) stays on the cluster: neither it nor its consumer is ever served
    assert sorted(ran.ran) == ["big", "size"]
    assert sorted(ran.cached) == ["big-2", "size-2"]


class Recorder:
    def __init__(self):
        self.ran, self.cached = [], []

    @hook_impl
    def after_node_execute(self, key, worker):
        (self.cached if worker == "cache" else self.ran).append(key)


def test_evaluate_async_takes_the_cache_options(tmp_path):
    import asyncio

    from daglite import evaluate_async

    for _ in range(2):
        assert asyncio.run(evaluate_async(unmarked(11), cache=tmp_path, cache_ttl=60)) == 110
    assert runs() == ["unmarked(11)"]
