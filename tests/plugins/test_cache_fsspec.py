"""Remote cache stores (issue 16): fsspec URLs, tested with the in-memory and local filesystems."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest

from daglite import evaluate, task
from daglite.cli import main
from daglite.plugins.builtin import CachePlugin
from daglite.plugins.builtin._cache_store import _FsspecStore, _LocalStore, open_store

fsspec = pytest.importorskip("fsspec")


@task
def cube(log: str, x: int) -> int:
    with open(log, "a") as f:
        f.write(".")
    return x**3


def calls(log) -> int:
    return len(log.read_text()) if log.exists() else 0


@pytest.fixture
def memory_url():
    url = f"memory://daglite-test-{uuid.uuid4().hex}"
    yield url
    fs = fsspec.filesystem("memory")
    root = url[len("memory://") :]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_store_serves_the_second_run(memory_url, tmp_path, backend):
    log = tmp_path / "log"
    dag = cube.product(log=[str(log)], x=[1, 2, 3])
    assert evaluate(dag, cache=memory_url, backend=backend) == [1, 8, 27]
    cache = CachePlugin(memory_url)
    assert evaluate(dag, plugins=[cache], backend=backend) == [1, 8, 27]
    assert calls(log) == 3
    assert (cache.hits, cache.misses) == (3, 0)
    assert isinstance(open_store(memory_url), _FsspecStore)
    assert len(list(open_store(memory_url).entries())) == 3


def test_memory_store_entries_are_sealed(memory_url, tmp_path, caplog):
    log = tmp_path / "log"
    evaluate(cube(str(log), 2), cache=memory_url)
    fs = fsspec.filesystem("memory")
    (path,) = [p for p in fs.find(memory_url[len("memory://") :]) if p.endswith(".entry")]
    fs.pipe_file(path, fs.cat_file(path)[:-4])  # truncated
    assert evaluate(cube(str(log), 2), cache=memory_url) == 8
    assert calls(log) == 2
    assert any("integrity check" in r.getMessage() for r in caplog.records)


def test_secret_key_never_goes_to_the_remote_store(memory_url, tmp_path):
    evaluate(cube(str(tmp_path / "log"), 2), cache=memory_url)
    fs = fsspec.filesystem("memory")
    with open(os.environ["DAGLITE_CACHE_KEY_FILE"], "rb") as f:
        key = f.read()
    for path in fs.find(memory_url[len("memory://") :]):
        assert key not in fs.cat_file(path)


def test_file_url_is_a_private_local_directory(tmp_path):
    url = f"file://{tmp_path / 'cache'}"
    store = open_store(url)
    assert isinstance(store, _LocalStore)
    log = tmp_path / "log"
    for _ in range(2):
        assert evaluate(cube(str(log), 3), cache=url) == 27
    assert calls(log) == 1
    if os.name == "posix":
        assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_local_filesystem_through_fsspec_is_the_local_store(tmp_path):
    fs_url = f"local://{tmp_path / 'viafsspec'}"
    assert isinstance(open_store(fs_url), _LocalStore)


def test_cli_info_and_clear_on_a_memory_url(memory_url, tmp_path, capsys):
    evaluate(cube.product(log=[str(tmp_path / "log")], x=[1, 2]), cache=memory_url)
    assert main(["cache", "info", memory_url]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert main(["cache", "clear", memory_url]) == 0
    assert "deleted 2 entries" in capsys.readouterr().out
    assert list(open_store(memory_url).entries()) == []


def test_url_without_fsspec_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['fsspec'] = None\n"
        "from daglite.plugins.builtin import CachePlugin\n"
        "try:\n    CachePlugin('s3://bucket/cache')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert "pip install daglite[cache]" in done.stdout, done.stderr


def test_unreachable_remote_store_runs_uncached(tmp_path, caplog, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(fsspec.implementations.memory.MemoryFileSystem, "makedirs", refuse)
    caplog.set_level(logging.WARNING, logger="daglite.plugins.cache")
    log = tmp_path / "log"
    assert evaluate(cube(str(log), 4), cache="memory://unreachable") == 64
    assert any("running without a cache" in r.getMessage() for r in caplog.records)
