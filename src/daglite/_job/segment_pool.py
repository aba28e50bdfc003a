"""Job arguments' segments kept for reuse: warm shared memory for the next job (gh-14).

Copying into fresh shared memory costs a page fault, or a page-cache lookup,
per 4 KiB page: about four times a copy into memory already mapped. A job's
argument segment is read by one worker, once. When the job comes home and its
worker says it has unmapped the segment (``shared.release_borrowed``), the
caller keeps the file, mapped on its side, for the next job's arguments, as an
allocator keeps freed memory: the next copy into it runs at memory speed.

A segment is *lent* (a job's arguments are in it, until the job is settled)
or *free* (kept for the next job). Free segments are capped at ``limit``
bytes (the oldest go first) and live in the pool's own directory inside the
caller's, which the janitor removes if the caller dies. They go when the pool
closes (``Backend.shutdown``). A run's lent segments go when the run ends,
whatever became of their jobs.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import shutil
import sys
import threading
from typing import Final, final

from daglite._job import shared

# Free segments kept by default: at most this, and at most an eighth of the
# shared-memory filesystem.
DEFAULT_LIMIT: Final = 1 << 30
# A free segment serves a need of at least this fraction of its size.
_LEAST_FILL: Final = 0.5
_pool_ids = itertools.count()


def default_limit() -> int:
    """``DEFAULT_LIMIT``, or an eighth of the shared-memory filesystem if that is less."""
    try:
        stat = os.statvfs(shared._base_directory())
    except OSError:
        return 0
    return min(DEFAULT_LIMIT, stat.f_blocks * stat.f_frsize // 8)


@final
class _Pooled:
    """One of the pool's files; mapped in the caller once it is reused."""

    __slots__ = ("mapping", "path", "run", "size")

    def __init__(self, path: str, size: int, run: str) -> None:
        self.path = path
        self.size = size
        self.run = run
        self.mapping: mmap.mmap | None = None

    def copy_in(self, buffers: list[memoryview], offsets: list[int]) -> None:
        """Copy ``buffers`` to ``offsets``, through the caller's mapping (made on first use).

        With numpy loaded, ``numpy.copyto`` copies without holding the GIL, so
        the engine's thread and the executor's get on meanwhile (a 50 MB copy
        takes 4-8 ms); a memoryview assignment would hold it throughout.
        """
        if self.mapping is None:
            fd = os.open(self.path, os.O_RDWR)
            try:
                self.mapping = mmap.mmap(fd, self.size)
            finally:
                os.close(fd)
            shared.populate(self.mapping, shared.MADV_POPULATE_WRITE)
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            whole = numpy.frombuffer(self.mapping, dtype=numpy.uint8)
            for buf, offset in zip(buffers, offsets):
                src = numpy.frombuffer(shared.as_bytes(buf), dtype=numpy.uint8)
                numpy.copyto(whole[offset : offset + src.nbytes], src)
            return
        whole = memoryview(self.mapping)
        try:
            for buf, offset in zip(buffers, offsets):
                flat = shared.as_bytes(buf)
                whole[offset : offset + flat.nbytes] = flat
        finally:
            whole.release()

    def remove(self, empty: bool = False) -> None:
        """Unlink the file and unmap it here (a worker's mapping outlives both).

        ``empty``: no value views the file any more (its worker let go of
        it): truncate it first, which frees its pages at once, though a
        worker may keep it mapped (``shared._WarmMappings``).
        """
        if empty:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.give_away()

    def give_away(self) -> None:
        """Unmap the file here: it is no longer the pool's."""
        if self.mapping is not None:
            with contextlib.suppress(BufferError):  # a copy into it is under way
                self.mapping.close()


@final
class SegmentPool:
    """A backend's job-argument segments, lent to jobs and kept for reuse.

    Thread-safe: jobs are pickled in the executor's feeder thread, settled
    on the engine's.

    Args:
        limit: Most bytes of free segments kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._free: list[_Pooled] = []  # oldest first
        self._free_bytes = 0
        self._lent: dict[str, _Pooled] = {}
        self._runs: set[str] = set()  # the runs under way, by directory
        # Files handed over to results' handles, by run: removed when it ends,
        # as result segments in the run's directory are.
        self._handed: dict[str, list[str]] = {}
        self._directory: str | None = None
        self._closed = False

    def write(self, run: str, buffers: list[memoryview], offsets: list[int], size: int) -> str:
        """Put ``buffers`` at ``offsets`` in a segment of ``size`` bytes or more, lent to ``run``.

        Returns:
            The segment's path.

        Raises:
            OSError: If no segment can be written (the job's arguments then
                travel through the pipe).
        """
        if self._closed:
            raise OSError("the backend's segment pool is closed")
        segment = self._take(size)
        if segment is not None:
            try:
                if not os.path.exists(segment.path):  # removed under us: a worker could not open it
                    raise FileNotFoundError(segment.path)
                segment.copy_in(buffers, offsets)
            except (OSError, ValueError, TypeError, AttributeError):  # numpy half-imported, say
                segment.remove(empty=True)
                segment = None
        if segment is None:
            segment = self._new(buffers, offsets, size)
        segment.run = run
        with self._lock:
            if run not in self._runs:  # it ended meanwhile, or the pool closed
                segment.remove(empty=True)
                raise OSError(f"the run's shared memory is gone ({run})")
            self._lent[segment.path] = segment
        return segment.path

    def settle(self, paths: list[str], released: frozenset[str], handed: frozenset[str]) -> None:
        """A job lent ``paths`` ended.

        Those ``released`` by its worker become free; those ``handed`` over
        now belong to the handles of results that travelled in them; the
        others are removed.
        """
        with self._lock:
            lent = [s for s in map(self._lent.pop, paths, itertools.repeat(None)) if s]
            for segment in lent:
                if segment.path in handed:
                    segment.give_away()
                    self._handed.setdefault(segment.run, []).append(segment.path)
                elif segment.path in released and not self._closed and segment.size <= self.limit:
                    self._free.append(segment)
                    self._free_bytes += segment.size
                else:  # a file its worker let go of holds no view: empty it
                    segment.remove(empty=segment.path in released)
            self._trim(self.limit)

    def begin_run(self, run: str) -> None:
        """Lend to run ``run`` (its directory) from now on."""
        with self._lock:
            if not self._closed:
                self._runs.add(run)

    def end_run(self, run: str) -> None:
        """Remove ``run``'s lent segments (its jobs ended, or will be ignored) and handed ones."""
        with self._lock:
            self._runs.discard(run)
            for path in [p for p, s in self._lent.items() if s.run == run]:
                self._lent.pop(path).remove()
            for path in self._handed.pop(run, ()):
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def close(self) -> None:
        """Remove every segment and the pool's directory; the pool lends no more."""
        with self._lock:
            self._closed = True
            self._runs.clear()
            self._trim(0)
            for segment in self._lent.values():
                segment.remove()
            self._lent.clear()
            directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def free_bytes(self) -> int:
        """Bytes of free segments kept."""
        return self._free_bytes

    def _take(self, size: int) -> _Pooled | None:
        """The smallest free segment ``size`` fills at least half of, taken out of the pool."""
        with self._lock:
            fits = [s for s in self._free if size <= s.size and size >= s.size * _LEAST_FILL]
            if not fits:
                return None
            best = min(fits, key=lambda s: s.size)
            self._free.remove(best)
            self._free_bytes -= best.size
            return best

    def _new(self, buffers: list[memoryview], offsets: list[int], size: int) -> _Pooled:
        """A new segment with ``buffers`` written in (not mapped here until it is reused)."""
        directory = self._directory_path()
        try:
            shared.check_space(directory, size)
        except OSError:
            with self._lock:
                self._trim(0)  # free segments take room: give it back, then look again
            shared.check_space(directory, size)
        path = os.path.join(directory, f"{os.getpid()}-{next(shared._counter)}")
        shared.write_file(path, buffers, offsets, size)
        return _Pooled(path, size, "")

    def _directory_path(self) -> str:
        with self._lock:
            if self._closed:
                raise OSError("the backend's segment pool is closed")
            if self._directory is None or not os.path.isdir(self._directory):
                path = os.path.join(shared.caller_directory(), f"pool-{next(_pool_ids)}")
                os.makedirs(path, mode=0o700, exist_ok=True)
                self._directory = path
            return self._directory

    def _trim(self, keep: int) -> None:
        """Remove the oldest free segments until at most ``keep`` bytes are left (lock held)."""
        while self._free and self._free_bytes > keep:
            segment = self._free.pop(0)
            self._free_bytes -= segment.size
            segment.remove(empty=True)
