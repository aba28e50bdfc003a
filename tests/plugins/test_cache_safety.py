"""Cache safety (issue 16): private directories, sealed entries, whole writes, degraded runs."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import threading
from pathlib import Path

import pytest

from daglite import evaluate, task
from daglite.plugins.builtin import CachePlugin
from daglite.plugins.builtin import _cache_store as store_module
from daglite.plugins.builtin._cache_store import _LocalStore, _Sealer, _secret_key

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def note(path: Path) -> None:
    with open(path, "a") as f:
        f.write(".")


@task
def square(log: str, x: int) -> int:
    note(Path(log))
    return x * x


def calls(log: Path) -> int:
    return len(log.read_text()) if log.exists() else 0


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.entry"))


def warnings_of(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "daglite.plugins.cache" and r.levelno == logging.WARNING
    ]


# -- private directory and key ------------------------------------------------------------


@posix_only
def test_new_cache_directory_and_key_are_private(tmp_path, monkeypatch):
    key_file = tmp_path / "config" / "daglite" / "cache-key"
    monkeypatch.setenv("DAGLITE_CACHE_KEY_FILE", str(key_file))
    os.umask(old := os.umask(0o022))
    try:
        CachePlugin(tmp_path / "a" / "cache")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "cache").stat().st_mode & 0o777 == 0o700
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_bytes()) == 32
    assert _secret_key() == key_file.read_bytes()  # made once, then reused


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o722])
def test_directory_writable_by_others_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(PermissionError, match="writable by other users.*chmod 700"):
        CachePlugin(shared)
    with pytest.raises(PermissionError, match="writable by other users"):
        evaluate(square(str(tmp_path / "log"), 2), cache=shared)
    assert not (tmp_path / "log").exists()  # refused before anything ran


@posix_only
def test_key_file_readable_by_others_is_refused(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o644)
    monkeypatch.setenv("DAGLITE_CACHE_KEY_FILE", str(key_file))
    with pytest.raises(PermissionError, match="accessible to other users.*chmod 600"):
        CachePlugin(tmp_path / "cache")


# -- sealed entries -----------------------------------------------------------------------


def corrupt_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


def corrupt_replace_payload(path: Path) -> None:
    # A valid pickle that runs code when loaded, in place of the payload.
    data = path.read_bytes()
    path.write_bytes(data[:45] + pickle.dumps(Boom()))


class Boom:
    def __reduce__(self):
        return (os._exit, (17,))


def corrupt_other_key(path: Path) -> None:
    rel_key = bytes.fromhex(path.stem)
    other = _Sealer(os.urandom(32))
    path.write_bytes(b"".join(other.seal(rel_key, pickle.dumps(999), 0.0)))


@pytest.mark.parametrize(
    "corrupt", [corrupt_flip, corrupt_truncate, corrupt_replace_payload, corrupt_other_key]
)
def test_unsound_entry_is_ignored_with_a_warning_and_recomputed(tmp_path, caplog, corrupt):
    log, root = tmp_path / "log", tmp_path / "cache"
    assert evaluate(square(str(log), 3), cache=root) == 9
    (entry,) = entries(root)
    corrupt(entry)
    caplog.clear()
    assert evaluate(square(str(log), 3), cache=root) == 9
    assert calls(log) == 2
    (message,) = warnings_of(caplog)
    assert "integrity check" in message and "'square'" in message
    assert evaluate(square(str(log), 3), cache=root) == 9  # rewritten, sound again
    assert calls(log) == 2


def test_an_entry_moved_to_another_key_is_not_served(tmp_path, caplog):
    log, root = tmp_path / "log", tmp_path / "cache"
    evaluate([square(str(log), 2), square(str(log), 3)], cache=root)
    first, second = entries(root)
    second.write_bytes(first.read_bytes())  # sound bytes, wrong place
    caplog.clear()
    assert evaluate([square(str(log), 2), square(str(log), 3)], cache=root) == [4, 9]
    assert calls(log) == 3
    assert len(warnings_of(caplog)) == 1


def test_entries_of_another_users_key_are_recomputed(tmp_path, monkeypatch, caplog):
    log, root = tmp_path / "log", tmp_path / "cache"
    evaluate(square(str(log), 4), cache=root)
    monkeypatch.setenv("DAGLITE_CACHE_KEY_FILE", str(tmp_path / "other-key"))
    caplog.clear()
    assert evaluate(square(str(log), 4), cache=root) == 16
    assert calls(log) == 2
    assert len(warnings_of(caplog)) == 1


# -- whole writes ---------------------------------------------------------------------------


def test_concurrent_writers_and_readers_never_see_part_of_an_entry(tmp_path):
    store = _LocalStore(tmp_path / "cache")
    sealer = _Sealer(os.urandom(32))
    key = bytes(32)
    rel = f"t-0/{key.hex()}.entry"
    payloads = [bytes([i]) * 4_000_000 for i in range(2)]  # written in several syscalls
    sealed = [sealer.seal(key, p, 0.0) for p in payloads]
    store.write(rel, sealed[0])
    start = threading.Barrier(3)
    bad: list[int] = []

    def writer(n: int) -> None:
        start.wait()
        for i in range(20):
            store.write(rel, sealed[(i + n) % 2])

    def reader() -> None:
        start.wait()
        for _ in range(40):
            opened = sealer.open(key, store.read(rel))
            if opened is None or bytes(opened[1]) not in payloads:
                bad.append(1)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not bad
    assert [p.name for p in (tmp_path / "cache" / "t-0").iterdir()] == [f"{key.hex()}.entry"]


# -- degraded runs --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_cache_runs_uncached_with_one_warning(tmp_path, monkeypatch, caplog, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.tempfile, "mkstemp", refuse)
    log = tmp_path / "log"
    dag = square.product(log=[str(log)], x=[1, 2, 3])
    assert evaluate(dag, cache=tmp_path / "cache") == [1, 4, 9]
    (message,) = warnings_of(caplog)
    assert "cannot write to the cache" in message
    assert entries(tmp_path / "cache") == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_directory_runs_uncached_with_one_warning(tmp_path, caplog):
    root = tmp_path / "cache"
    CachePlugin(root)
    root.chmod(0o500)
    try:
        dag = square.product(log=[str(tmp_path / "log")], x=[1, 2])
        assert evaluate(dag, cache=root) == [1, 4]
    finally:
        root.chmod(0o700)
    assert len(warnings_of(caplog)) == 1


def test_cache_location_that_cannot_be_made_runs_uncached(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", refuse)
    log = tmp_path / "log"
    for _ in range(2):
        assert evaluate(square(str(log), 5), cache=tmp_path / "new" / "cache") == 25
    assert calls(log) == 2
    assert len(warnings_of(caplog)) == 2  # one per run
    assert "running without a cache" in warnings_of(caplog)[0]
