"""A large result gives its worker's pages to its segment as it is written (gh-14)."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest

from daglite import evaluate, task
from daglite._job import records, remap, shared
from daglite.backends import ProcessBackend

pytestmark = pytest.mark.skipif(
    not remap._uses_glibc_malloc(), reason="gives pages only where glibc's malloc runs (Linux)"
)

MIB = 1 << 20
# Above glibc's largest mmap threshold (32 MiB): malloc maps each such array alone.
BIG = 64 * MIB // 8


def _file_backed(address: int, nbytes: int, path: str | None = None) -> bool:
    """Whether every whole page of ``[address, address + nbytes)`` maps a file (``path``, if named).

    Read from this process's ``/proc/self/maps``.
    """
    first = -(-address // remap.PAGE) * remap.PAGE
    last = (address + nbytes) // remap.PAGE * remap.PAGE
    covered = first
    with open("/proc/self/maps") as maps:
        spans = []
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5].strip() if len(fields) > 5 else ""
            spans.append((start, end, fields[4] != "0", name))
    for start, end, has_inode, name in sorted(spans):
        if end <= covered or start >= last:
            continue
        if start > covered or not has_inode or (path is not None and not name.startswith(path)):
            return False
        covered = end
    return covered >= last


@pytest.fixture
def settings(tmp_path_factory):
    directory = tmp_path_factory.mktemp("segments", numbered=True)
    return shared.SharedMemory(str(directory), MIB)


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


def test_a_large_result_gives_its_pages_to_its_segment(settings):
    a = np.full(BIG, 1.5)
    halves = np.split(a, 2)
    data, segment = shared.dumps(halves, settings, release=True)
    assert all(_file_backed(_address(h), h.nbytes, segment.path) for h in halves)
    assert (a == 1.5).all()
    for offset, half in zip(segment.offsets, halves):  # placed so its pages could map
        assert offset % remap.PAGE == _address(half) % remap.PAGE

    a[:] = 9.0  # copy on write: the file, and whoever maps it, keep the result
    received = shared.loads(
        data, shared._views(shared._map(segment.path, 0, own=False), segment.offsets, segment.sizes)
    )
    assert all((part == 1.5).all() for part in received)
    with open(segment.path, "rb") as file:
        file.seek(segment.offsets[1])
        assert np.frombuffer(file.read(8 * 1024), dtype=float).tolist() == [1.5] * 1024


def test_the_array_outlives_its_segments_name(settings):
    a = np.full(BIG, 2.5)
    _, segment = shared.dumps(a, settings, release=True)
    os.unlink(segment.path)  # the run ended: the caller removed the segment
    assert float(a.sum()) == 2.5 * BIG


def test_only_a_result_gives_its_pages(settings):
    a = np.full(BIG, 1.5)
    _, segment = shared.dumps(a, settings)  # a job's arguments, a caller's shared value
    assert not _file_backed(_address(a), a.nbytes)


def test_a_read_only_view_is_only_copied(settings):
    a = np.full(BIG, 1.5)
    view = a.view()
    view.flags.writeable = False
    shared.dumps(view, settings, release=True)
    assert not _file_backed(_address(a), a.nbytes)


def test_memory_malloc_did_not_map_alone_is_only_copied(settings):
    over_bytes = np.frombuffer(bytearray(BIG * 8))  # not numpy's memory
    shared.dumps(over_bytes, settings, release=True)
    assert not _file_backed(_address(over_bytes), over_bytes.nbytes)


def test_another_malloc_gives_nothing(settings, monkeypatch):
    monkeypatch.setattr(remap, "_uses_glibc_malloc", lambda: False)
    a = np.full(BIG, 1.5)
    shared.dumps(a, settings, release=True)
    assert not _file_backed(_address(a), a.nbytes)


def test_a_failed_mapping_gives_nothing_more_and_the_segment_is_whole(settings, monkeypatch):
    calls = []

    def refuse(*args: int) -> bool:
        calls.append(args)
        return False

    monkeypatch.setattr(remap, "_remap", refuse)
    a = np.arange(BIG, dtype=float)
    data, segment = shared.dumps(a, settings, release=True)
    assert len(calls) == 1  # the first piece failed: no more were tried
    assert not _file_backed(_address(a), a.nbytes)
    received = shared.loads(
        data, shared._views(shared._map(segment.path, 0, own=False), segment.offsets, segment.sizes)
    )
    assert np.array_equal(received, a)


@task
def made_and_kept(n: int) -> np.ndarray:
    array = np.full(n, 1.5)
    sys.daglite_test_kept = array  # type: ignore[attr-defined]  # the worker holds on to it
    return array


@task
def write_to_kept() -> tuple[bool, float]:
    array = sys.daglite_test_kept  # type: ignore[attr-defined]
    start = int(array.__array_interface__["data"][0])
    gave = _file_backed(start, array.nbytes)
    array[:] = 9.0
    return gave, float(array.sum())


def test_a_result_the_worker_keeps_stays_its_own_and_the_callers(tmp_path):
    with ProcessBackend(max_workers=1) as backend:
        result = evaluate(made_and_kept(n=BIG), backend=backend)
        gave, total = evaluate(write_to_kept(), backend=backend)
        assert gave  # the worker's array read its segment's pages: its own were freed
        assert total == 9.0 * BIG
        assert (result == 1.5).all()  # the caller's result maps the same file: untouched
        result[:2] = 3.0  # an ordinary writable array
        assert result[:3].tolist() == [3.0, 3.0, 1.5]


def test_only_the_thread_that_runs_jobs_gives_pages(settings, monkeypatch):
    # The flusher thread pickles outcomes while the job's next call may write to them.
    monkeypatch.setattr(shared, "active", None)
    shared.set_active(settings)
    try:
        elsewhere = np.full(BIG, 1.5)
        thread = threading.Thread(target=records._dumps_result, args=(elsewhere,))
        thread.start()
        thread.join()
        here = np.full(BIG, 1.5)
        records._dumps_result(here)
    finally:
        shared.set_active(None)
    assert not _file_backed(_address(elsewhere), elsewhere.nbytes)
    assert _file_backed(_address(here[8:]), here.nbytes - 64)


def test_buffers_after_a_given_one_keep_their_alignment(settings):
    u8 = np.zeros(BIG * 8, dtype=np.uint8)
    odd = u8[1:]  # its memory starts one byte past a 16-byte boundary
    after = np.ones(1 << 18)
    after.flags.writeable = False  # not given: placed as usual
    _, segment = shared.dumps([odd, after], settings, release=True)
    assert segment.offsets[0] % remap.PAGE == _address(odd) % remap.PAGE
    assert segment.offsets[1] % 64 == 0
