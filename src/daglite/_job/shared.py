"""Large buffers between processes through shared memory (gh-14).

What a job pickles to cross a process boundary (its calls' arguments on the
way out, each call's result on the way back) is pickled with protocol 5: a
buffer of ``threshold`` bytes or more (a numpy array's data, a pandas block,
a pyarrow buffer, a large ``bytes``/``bytearray``/``memoryview``) goes
out-of-band into a file in shared memory (``/dev/shm``), the rest in-band as
usual. The receiver maps that file privately (``MAP_PRIVATE``: copy on write)
and unpickles over the mapping, so the data is never copied on the way in,
and a task that writes to an array it received changes its own pages only.

Lifetimes: a job's argument segment is read once, by the worker that runs the
job, which unlinks it as soon as it has mapped it, or, if it is one the
backend keeps for reuse (``segment_pool``), unmaps it when the job is over and
says so (``release_borrowed``). A result segment comes home
as a ``SharedValue``, a handle the caller passes on to other workers as it is
(they map the same file: the data travels once) and turns into the value only
when something in the caller needs it (``resolve``); the file is unlinked when
the last handle is dropped. Every segment of a run lives in the run's
directory, removed when the run ends; a janitor process removes the caller's
whole directory if the caller dies without doing so (even by SIGKILL).
"""

from __future__ import annotations

import contextlib
import gc
import io
import itertools
import logging
import mmap
import operator
import os
import pickle
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from daglite._job import remap
from daglite.graph.walk import CONTAINERS, find, replace

if TYPE_CHECKING:
    from daglite._job.segment_pool import SegmentPool

__all__ = [
    "DEFAULT_THRESHOLD",
    "SharedMemory",
    "SharedValue",
    "buffer_bytes",
    "dumps",
    "loads",
    "resolve",
    "share",
]

logger = logging.getLogger("daglite.shared")

_PROTOCOL: Final = 5
# Buffers of at least this many bytes go through shared memory by default.
DEFAULT_THRESHOLD: Final = 1 << 20
# Out-of-band buffers start at this alignment in a segment (SIMD-friendly).
_ALIGN: Final = 64
# A segment is not written when the filesystem would be left with less than this.
_SPARE_BYTES: Final = 16 << 20
_PREFIX: Final = "daglite-"


@final
class SharedMemory:
    """Where and from what size a run's large buffers go through shared memory.

    Travels with the job's ``_Home`` so that workers write results there too.

    Args:
        directory: The run's segment directory (inside the caller's directory).
        threshold: Buffers of this many bytes or more travel out-of-band.
        pool: The backend's pool of argument segments kept for reuse, if any.
    """

    __slots__ = ("directory", "pool", "threshold")

    def __init__(self, directory: str, threshold: int, pool: SegmentPool | None = None) -> None:
        self.directory = directory
        self.threshold = threshold
        # In the caller only (never pickled): where job arguments' segments
        # are kept for reuse, or None.
        self.pool = pool

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedMemory, (self.directory, self.threshold))


# -- the caller's directory, its janitor, and each run's directory ----------------------


def _base_directory() -> str:
    """``/dev/shm`` where it exists (memory-backed), else the temporary directory."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


@final
class _CallerDirectory:
    """This process's segment directory, and the janitor that outlives it.

    The janitor is a shell that waits for end-of-file on a pipe only this
    process holds (pipes are not inherited across ``exec``): when this process
    ends, however it ends, the pipe closes and the janitor removes the
    directory. It is started on first use, once per process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._janitor: int | None = None
        self._pid = 0

    def path(self) -> str:
        """The directory, created (mode 0700) with its janitor on first use."""
        with self._lock:
            if self._path is None or self._pid != os.getpid():
                self._path = self._create()
            return self._path

    def _create(self) -> str:
        base = _base_directory()
        _sweep_dead(base)
        pid = os.getpid()
        path = os.path.join(base, f"{_PREFIX}{pid}")
        os.makedirs(path, mode=0o700, exist_ok=True)
        self._pid = pid
        self._janitor = _start_janitor(path)
        return path


def _start_janitor(path: str) -> int | None:
    """A process that removes ``path`` once this process is gone; its pid.

    No ``Popen`` object is kept: nothing to warn about at interpreter exit,
    and the janitor is reaped by init once it outlives this process.
    """
    script = 'read -r _; rm -rf -- "$1"'  # ``read`` is built in: one process, no child
    argv = ["/bin/sh", "-c", script, "daglite-shm-janitor", path]
    read_end, write_end = os.pipe()  # both close-on-exec: the janitor gets a copy as stdin
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            actions = [
                (os.POSIX_SPAWN_DUP2, read_end, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
            ]
            # Its own session: Ctrl-C in a terminal must not end it before the caller.
            pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions, setsid=True)
        finally:
            os.close(devnull)
    except (OSError, AttributeError) as exc:  # dead callers' directories are swept on next use
        os.close(write_end)
        logger.debug("no shared-memory janitor: %s", exc)
        return None
    finally:
        os.close(read_end)
    _janitor_pipes.append(write_end)  # held open until this process ends
    return pid


_janitor_pipes: list[int] = []


def _sweep_dead(base: str) -> None:
    """Remove directories left by daglite processes that no longer exist."""
    import psutil

    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if not name.startswith(_PREFIX):
                continue
            pid = name[len(_PREFIX) :]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


_caller_directory: Final = _CallerDirectory()


def caller_directory() -> str:
    """This process's segment directory (made, with its janitor, on first use)."""
    return _caller_directory.path()


def for_run(run_id: str, threshold: int, pool: SegmentPool | None = None) -> SharedMemory:
    """The shared-memory settings of run ``run_id`` (its directory made now)."""
    directory = os.path.join(_caller_directory.path(), run_id)
    try:
        os.mkdir(directory, mode=0o700)
    except FileNotFoundError:  # the process's directory was removed under it
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass
    if pool is not None:
        pool.begin_run(directory)
    return SharedMemory(directory, threshold, pool)


def end_run(shared: SharedMemory) -> None:
    """Remove the run's directory and every segment still in it, lent ones included."""
    if shared.pool is not None:
        shared.pool.end_run(shared.directory)
    try:
        os.rmdir(shared.directory)  # the usual case: nothing is left in it
    except OSError:
        shutil.rmtree(shared.directory, ignore_errors=True)
    _warned_full.discard(shared.directory)


# -- writing and mapping segments -------------------------------------------------------

_counter = itertools.count()
_warned_full: set[str] = set()


def _write_segment(
    shared: SharedMemory, buffers: list[memoryview], lend: bool = False, release: bool = False
) -> tuple[str, list[int], int]:
    """Write ``buffers`` into a segment.

    ``lend``: they are a job's arguments; the segment is then the pool's, if
    the run has one (see ``SegmentPool``). ``release``: they are a result
    leaving this process: the pages of those that qualify are given to the
    segment as it is written (``remap.release``).

    Returns:
        The segment's path, each buffer's offset, and the pool's limit if it
        is the pool's (else 0).

    Raises:
        OSError: If the segment cannot be written (the caller falls back to
            sending the buffers in-band).
    """
    if lend and shared.pool is not None:
        offsets, end = layout(buffers)
        pool = shared.pool
        return pool.write(shared.directory, buffers, offsets, end), offsets, pool.limit
    addresses = [remap.releasable(b) for b in buffers] if release else None
    offsets, end = layout(buffers, addresses)
    check_space(shared.directory, end)
    path = os.path.join(shared.directory, f"{os.getpid()}-{next(_counter)}")
    write_file(path, buffers, offsets, end, addresses)
    return path, offsets, 0


def layout(
    buffers: list[memoryview], addresses: list[int | None] | None = None
) -> tuple[list[int], int]:
    """Where each buffer starts in a segment (aligned), and the segment's size.

    A buffer with an address in ``addresses`` starts as far past a page
    boundary as its memory does, so that its pages can be mapped from there.
    """
    offsets, end = [], 0
    for i, buf in enumerate(buffers):
        address = addresses[i] if addresses else None
        if address is not None:
            end = -(-end // remap.PAGE) * remap.PAGE + address % remap.PAGE
        offsets.append(end)
        end = -(-(end + buf.nbytes) // _ALIGN) * _ALIGN
    return offsets, end


def write_file(
    path: str,
    buffers: list[memoryview],
    offsets: list[int],
    size: int,
    addresses: list[int | None] | None = None,
) -> None:
    """Create ``path`` (``size`` bytes) with ``buffers`` at ``offsets``; nothing left on error.

    Each buffer with an address in ``addresses`` gives its pages to the file
    as they are written (``remap.release``).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        for i, (buf, offset) in enumerate(zip(buffers, offsets)):
            _pwrite_all(fd, buf, offset, addresses[i] if addresses else None)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


# Bytes per write; a buffer giving its pages to the file gives them after each.
_PIECE: Final = 256 << 20
_RELEASED_PIECE: Final = 32 << 20


def _pwrite_all(fd: int, buf: memoryview, offset: int, address: int | None = None) -> None:
    # pwrite, not a mapping: the kernel fills fresh pages without a fault per page.
    view = as_bytes(buf)
    done, size = 0, view.nbytes
    step = _PIECE if address is None else _RELEASED_PIECE
    given = address
    while done < size:
        done += os.pwrite(fd, view[done : done + step], offset + done)
        if address is not None and given is not None:
            given = remap.release(fd, given, address + done, offset + given - address)


def as_bytes(buf: memoryview) -> memoryview:
    """``buf`` as a flat view of unsigned bytes."""
    return buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf


def check_space(directory: str, size: int) -> None:
    """Raise ``OSError`` if writing ``size`` bytes would leave too little free in ``directory``."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    if free - size < _SPARE_BYTES:
        raise OSError(28, f"{free} bytes free in {directory}, {size} needed")


def _map(path: str, size: int, own: bool) -> mmap.mmap:
    """Map ``size`` bytes of a segment (0: all): shared if this reader ``own``s it, else privately.

    A job's argument segment has one reader, which may write to its pages
    in place. A result segment may have several (the caller's handle passes
    it on): each maps it copy-on-write, so its writes stay its own. Pages
    are mapped as they are touched: a task may read a slice of a large
    argument only (mapping them all up front saves a third of the faults'
    cost when every page is read, and costs 0.12 ms per MB when none is).
    """
    fd = os.open(path, os.O_RDWR if own else os.O_RDONLY)
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE if own else mmap.ACCESS_COPY)
    finally:
        os.close(fd)


# Linux 5.14+: map every page of a range in one call, for writing, no fault per page.
MADV_POPULATE_WRITE: Final = 23


def populate(mapping: mmap.mmap, advice: int) -> None:
    """Map ``mapping``'s pages now, if this system can (an optimisation only)."""
    if size := len(mapping):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            mapping.madvise(advice, 0, size)


def _views(mapping: mmap.mmap, offsets: list[int], sizes: list[int]) -> list[memoryview]:
    whole = memoryview(mapping)
    return [whole[o : o + n] for o, n in zip(offsets, sizes)]


# -- pickling with out-of-band buffers --------------------------------------------------


@final
class _Segment:
    """Out-of-band buffers of one pickle: where they are and how big."""

    __slots__ = ("offsets", "path", "pooled", "size", "sizes")

    def __init__(self, path: str, offsets: list[int], sizes: list[int], pooled: int = 0) -> None:
        self.path = path
        self.offsets = offsets
        self.sizes = sizes
        # The caller keeps the file for reuse (``SegmentPool``; its limit in
        # bytes, 0 if not): the reader does not unlink it, says when it has
        # let go of it, and keeps at most that many bytes of such mappings.
        self.pooled = pooled
        self.size = max(map(operator.add, offsets, sizes), default=0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Segment, (self.path, self.offsets, self.sizes, self.pooled))


def dumps(
    value: Any,
    shared: SharedMemory | None,
    pickler: Callable[..., Any] | None = None,
    *,
    lend: bool = False,
    release: bool = False,
) -> bytes | tuple[bytes, _Segment]:
    """Pickle ``value``; its large buffers into a segment when ``shared`` is set.

    Args:
        value: What to pickle.
        shared: The run's settings, or None (everything in-band).
        pickler: A ``Pickler`` class to use (cloudpickle's, for functions);
            the standard one by default.
        lend: A job's arguments, read once by its worker: the segment may
            be one of the pool's, lent to the job.
        release: A result leaving this worker: its arrays' own pages may be
            given to the segment (``remap``), so the data is not held twice.

    Returns:
        The pickle, or the pickle and the segment holding its large buffers.
    """
    if shared is None:
        return _plain_dumps(value, pickler)
    threshold = shared.threshold
    found: list[pickle.PickleBuffer] = []

    def take(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes >= threshold:
            found.append(buf)
            return False
        return True

    try:
        data = _dumps_with(value, pickler, take, None)
    except TypeError:
        data = b""  # a memoryview, say: the persistent pickler below takes it
    if not data or len(data) >= threshold:
        found.clear()  # large in-band parts (bytes, strided arrays): move them out too
        data = _dumps_with(value, pickler, take, _OutOfBand(threshold))
    if not found:
        return data
    views = [b.raw() for b in found]
    inside = _hand_over(views)
    if inside is not None:
        return data, _Segment(*inside, [v.nbytes for v in views])
    try:
        path, offsets, pooled = _write_segment(shared, views, lend, release)
    except OSError as exc:
        _warn_full(shared, sum(v.nbytes for v in views), exc)
        return _plain_dumps(value, pickler)
    return data, _Segment(path, offsets, [v.nbytes for v in views], pooled)


def share(value: Any, shared: SharedMemory) -> Any:
    """``value`` written once into a segment of its own, as a handle, if it is large.

    For a value of the caller that many jobs take (the same array in every
    element of a fan-out): each worker process that runs one of them maps
    the one segment (copy on write), where otherwise every job would carry
    its own copy. Returns ``value`` itself when it holds no buffer of
    ``shared.threshold`` bytes or more, or cannot be written.
    """
    if buffer_bytes(value) < shared.threshold:
        return value
    try:
        made = dumps(value, shared)
    except Exception:  # pickled with the job instead, which reports it
        return value
    return SharedValue(*made) if isinstance(made, tuple) else value


def buffer_bytes(value: Any) -> int:
    """About how many bytes of buffers ``value`` holds, for the types ``share`` takes.

    bytes, bytearray, numpy arrays, pandas frames and series, pyarrow arrays
    and tables; 0 for anything else.
    """
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if not kind.__module__.startswith(("numpy", "pandas", "pyarrow")):
        return 0
    try:
        if kind.__name__ == "DataFrame":
            return int(value.memory_usage(index=False, deep=False).sum())
        return int(getattr(value, "nbytes", 0) or 0)
    except Exception:
        return 0


def _plain_dumps(value: Any, pickler: Callable[..., Any] | None) -> bytes:
    if pickler is None:
        return pickle.dumps(value, protocol=_PROTOCOL)
    return _dumps_with(value, pickler, None, None)


def _dumps_with(
    value: Any,
    pickler: Callable[..., Any] | None,
    take: Callable[[pickle.PickleBuffer], bool] | None,
    persistent: _OutOfBand | None,
) -> bytes:
    if pickler is None and persistent is None:
        return pickle.dumps(value, protocol=_PROTOCOL, buffer_callback=take)
    out = io.BytesIO()
    base = pickler or pickle.Pickler
    if persistent is None:
        base(out, protocol=_PROTOCOL, buffer_callback=take).dump(value)
    else:
        p = _with_out_of_band(base)(out, protocol=_PROTOCOL, buffer_callback=take)
        p.out_of_band = persistent
        p.dump(value)
    return out.getvalue()


_oob_picklers: dict[type, type] = {}


def _with_out_of_band(base: Callable[..., Any]) -> Any:
    """``base`` (a ``Pickler`` class) with ``_OutOfBand`` as its ``persistent_id``.

    A subclass, not an attribute set on an instance: Python 3.13's C pickler
    makes ``persistent_id`` read-only on instances.
    """
    found = _oob_picklers.get(base)  # type: ignore[call-overload]
    if found is None:

        class _Pickler(base):  # type: ignore[valid-type,misc]
            out_of_band: _OutOfBand

            def persistent_id(self, obj: Any) -> Any:
                return self.out_of_band(obj)

        found = _oob_picklers[base] = _Pickler  # type: ignore[index]
    return found


@final
class _OutOfBand:
    """``persistent_id`` that moves large buffers pickle keeps in-band out of it.

    ``bytes`` and ``str`` are written in-band by pickle whatever the
    protocol, a ``memoryview`` cannot be pickled at all, and numpy pickles a
    strided array in-band: each large one is replaced by a reference whose
    buffer goes out-of-band (``_load_persistent`` turns it back).
    """

    __slots__ = ("threshold",)

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def __call__(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytes or kind is bytearray:
            if len(obj) >= self.threshold:
                return ("b" if kind is bytes else "a", pickle.PickleBuffer(obj))
        elif kind is memoryview:
            view = obj if obj.contiguous else memoryview(obj.tobytes())
            return ("m", pickle.PickleBuffer(view), obj.format, obj.shape, obj.readonly)
        elif kind.__name__ == "ndarray" and kind.__module__ == "numpy" and self._strided(obj):
            import numpy as np

            return ("n", np.ascontiguousarray(obj), obj.flags.f_contiguous)
        return None

    def _strided(self, array: Any) -> bool:
        """A large array numpy would pickle in-band (not C-contiguous, not objects)."""
        flags = array.flags
        return bool(
            array.nbytes >= self.threshold and not flags.c_contiguous and array.dtype != object
        )


def _load_persistent(pid: Any) -> Any:
    tag = pid[0]
    if tag == "b":
        return bytes(pid[1])
    if tag == "a":
        return bytearray(pid[1])
    if tag == "m":
        _, buf, fmt, shape, readonly = pid
        view = memoryview(buf).cast("B").cast(fmt, shape) if shape else memoryview(buf)
        return view.toreadonly() if readonly else view
    if tag == "n":
        _, array, fortran = pid
        return array.copy(order="F") if fortran else array
    raise pickle.UnpicklingError(f"unknown out-of-band reference {tag!r}")


def loads(data: bytes, buffers: list[memoryview] | None = None) -> Any:
    """Unpickle what ``dumps`` made, over ``buffers`` if it has a segment."""
    if buffers is None:
        return pickle.loads(data)
    return _Unpickler(io.BytesIO(data), buffers=buffers).load()


class _Unpickler(pickle.Unpickler):
    """Turns ``_OutOfBand``'s references back into values."""

    def persistent_load(self, pid: Any) -> Any:
        return _load_persistent(pid)


def load_segment(data: bytes, segment: _Segment, *, own: bool) -> Any:
    """Map ``segment`` and unpickle ``data`` over it.

    ``own``: this reader is the segment's only one (a job's arguments): it
    maps it shared, and unlinks it, or, if it is the caller's pool's,
    borrows it until the job ends (``release_borrowed``).
    """
    if own and segment.pooled:  # the whole file: a later job may need more of it
        _warm.limit = segment.pooled
        mapping = _warm.take(segment.path, segment.size)
        if mapping is None:
            mapping = _map(segment.path, 0, own=True)
        _borrowed.append(_Borrowed(segment.path, mapping, len(mapping)))
    else:
        mapping = _map(segment.path, segment.size, own=own)
        if own:
            with contextlib.suppress(OSError):
                os.unlink(segment.path)
    return loads(data, _views(mapping, segment.offsets, segment.sizes))


@final
class _Borrowed:
    """A segment of the caller's pool the job running in this worker mapped."""

    __slots__ = ("handed", "mapping", "path", "size", "start")

    def __init__(self, path: str, mapping: mmap.mmap, size: int) -> None:
        self.path = path
        self.mapping = mapping
        self.size = size
        self.start = remap.address_of(mapping)
        self.handed = False

    def holds(self, address: int, size: int) -> bool:
        """Whether ``size`` bytes at ``address`` lie in this mapping."""
        return self.start is not None and self.start <= address <= self.start + self.size - size

    def make_private(self) -> bool:
        """Map the file copy-on-write in place, at the same address; whether that worked.

        Once the file is handed over, it is the caller's result: whatever in
        this worker still holds the argument (a global, a cache) may write to
        it, and those writes must stay here, as they did when results were
        copied. The pages keep their contents (the file's).
        """
        if self.start is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            return remap.remap_private(self.start, self.size, fd)
        finally:
            os.close(fd)


# The pool's segments the job running in this worker process mapped (one job
# at a time per process).
_borrowed: list[_Borrowed] = []


def borrowing() -> bool:
    """Whether the job running in this process mapped segments of the caller's pool."""
    return bool(_borrowed)


def release_borrowed() -> tuple[list[str], list[_Borrowed]]:
    """Unmap the pool's segments nothing uses any more.

    Called when the job has ended and dropped its calls: a mapping still
    exported (a value kept in a global, a result that is a view of an
    argument) stays. One collection of the young generations frees what
    only a reference cycle made during the job still holds (a full one
    costs about 10 ms with pandas loaded: too much per job).

    Returns:
        The paths of the segments unmapped (the caller may reuse them), and
        the segments still in use (a result in one may be handed over in it:
        ``handing_over``).
    """
    released: list[str] = []
    kept: list[_Borrowed] = []
    collected = False
    for borrowed in _borrowed:
        while True:
            try:
                _let_go(borrowed)
            except BufferError:
                if not collected:
                    collected = True
                    gc.collect(1)
                    continue
                kept.append(borrowed)
            else:
                released.append(borrowed.path)
            break
    _borrowed.clear()
    return released, kept


def keeps_warm() -> bool:
    """Whether this worker keeps mappings of the pool's segments (``_WarmMappings``)."""
    return _warm.any()


def sweep_warm(drop_all: bool = False) -> None:
    """Unmap the mappings kept warm whose files the caller removed (as each job starts and ends).

    ``drop_all``: unmap them all. A job with a memory limit is watched by its
    worker's resident memory, which counts the pages of kept mappings.
    """
    if _warm.any():
        _warm.sweep(drop_all)


def _let_go(borrowed: _Borrowed) -> None:
    """Stop using ``borrowed``: keep its mapping warm, or unmap it.

    Raises:
        BufferError: If a view of it is left (nothing changes then).
    """
    mapping = borrowed.mapping
    try:
        # To the file's own size (it maps the whole file): nothing changes,
        # but it fails while a view exists, as ``close`` does, and leaves the
        # mapping (and its page tables) up.
        mapping.resize(borrowed.size)  # BufferError (a view is left) goes to the caller
    except (OSError, SystemError, TypeError, ValueError):  # no mremap here
        mapping.close()
        return
    _warm.keep(borrowed.path, mapping)


@final
class _WarmMappings:
    """This worker's mappings of the caller's pool segments it let go of, kept for reuse.

    When a job is lent a segment this worker mapped for an earlier job, it
    reads it through the same mapping: its pages are mapped already, and
    reading them costs half as much as through a new mapping (no fault per
    page). A released mapping has no view left (``_let_go`` checks), so no
    value here can see what the caller writes into the file next. Each goes
    when its file is gone (checked as each job starts and ends, about 1 us a
    mapping; the pool empties a file a worker let go of before unlinking it,
    so that costs no memory meanwhile), and the oldest go beyond ``limit``
    bytes (the pool's own) or ``most`` mappings. They all go before a job
    with a memory limit runs: the worker's resident memory counts them.
    """

    __slots__ = ("_bytes", "_maps", "limit", "most")

    def __init__(self, limit: int, most: int = 64) -> None:
        self.limit = limit
        self.most = most
        self._maps: dict[str, mmap.mmap] = {}  # oldest first
        self._bytes = 0

    def take(self, path: str, need: int) -> mmap.mmap | None:
        """The mapping of ``path`` kept here, if any, and at least ``need`` bytes long."""
        mapping = self._maps.pop(path, None)
        if mapping is not None:
            self._bytes -= len(mapping)
            if len(mapping) < need:
                mapping.close()
                return None
        return mapping

    def keep(self, path: str, mapping: mmap.mmap) -> None:
        """Keep ``mapping`` (of ``path``, with no view left) for a later job."""
        self._maps[path] = mapping
        self._bytes += len(mapping)
        while self._bytes > self.limit or len(self._maps) > self.most:
            self._drop(next(iter(self._maps)))

    def any(self) -> bool:
        """Whether any mapping is kept."""
        return bool(self._maps)

    def sweep(self, drop_all: bool = False) -> None:
        """Unmap those whose file the caller removed (``drop_all``: all)."""
        for path in [p for p in self._maps if drop_all or not os.path.exists(p)]:
            self._drop(path)

    def _drop(self, path: str) -> None:
        mapping = self._maps.pop(path)
        self._bytes -= len(mapping)
        mapping.close()


# At most the pool's size (set from each segment lent), in 64 mappings: mostly
# the pages of the pool's free segments, which exist anyway.
_warm = _WarmMappings(1 << 30)


_handover = threading.local()


@contextlib.contextmanager
def handing_over(kept: list[_Borrowed]) -> Iterator[list[str]]:
    """While a job's last outcomes are pickled: results may travel in its arguments' segments.

    A result whose large buffers all lie in one segment the job borrowed and
    still uses (a task that wrote to its argument in place and returned it)
    is sent as that segment, not copied into a new one: the caller's handles
    take the file over (``_File``: several results may share one, the
    elements of a slice). The paths handed over are collected in the list
    this yields. Only the last outcomes: the job's later calls could still
    write to what early ones sent.
    """
    handed: list[str] = []
    _handover.kept, _handover.handed = kept, handed
    try:
        yield handed
    finally:
        _handover.kept = _handover.handed = None


def _hand_over(views: list[memoryview]) -> tuple[str, list[int]] | None:
    """The borrowed segment all of ``views`` lie in, and their offsets in it, if any."""
    kept: list[_Borrowed] | None = getattr(_handover, "kept", None)
    if not kept:
        return None
    addresses = [remap.address_of(v) for v in views]
    for borrowed in kept:
        if all(a is not None and borrowed.holds(a, v.nbytes) for a, v in zip(addresses, views)):
            if not borrowed.handed:
                if not borrowed.make_private():
                    return None
                borrowed.handed = True
                _handover.handed.append(borrowed.path)
            start = borrowed.start
            assert start is not None
            return borrowed.path, [a - start for a in addresses if a is not None]
    return None


def forget_borrowed() -> None:
    """Let go of the job's borrowed segments without releasing any (the job failed)."""
    _borrowed.clear()


def _warn_full(shared: SharedMemory, size: int, exc: OSError) -> None:
    """Warn once per run that a value goes through the pipe instead."""
    if shared.directory in _warned_full:
        return
    _warned_full.add(shared.directory)
    # A log record, not ``warnings``: this runs in the pool's feeder thread or a
    # worker, where a warning turned into an error would fail the whole job.
    logger.warning(
        "%s bytes could not go through shared memory (%s); sending them through the "
        "pipe instead (make /dev/shm larger, e.g. docker run --shm-size, or send less "
        "data per task)",
        f"{size:,}",
        exc,
    )


# -- results that stay in shared memory until needed ------------------------------------


class _Handle:
    """Something the caller holds in place of a value kept in shared memory."""

    __slots__ = ()

    def value(self) -> Any:  # pragma: no cover - overridden
        """The value itself."""
        raise NotImplementedError


@final
class SharedValue(_Handle):
    """A task's result whose large buffers are in a shared-memory segment.

    The caller holds this handle instead of the value. Pickled into a job for
    another worker process it travels as a reference to the segment (the
    worker maps the same pages); ``resolve`` turns it into the value where
    the caller needs one. The segment is unlinked when the handle is dropped.
    ``length`` is the length of a list or tuple result (None for others): a
    fan-out over it needs no more than that in the caller (``items``).
    """

    __slots__ = ("__weakref__", "_file", "data", "length", "segment")

    def __init__(self, data: bytes, segment: _Segment, length: int | None = None) -> None:
        self.data = data
        self.segment = segment
        self.length = length
        self._file = _File.of(segment.path)

    @property
    def nbytes(self) -> int:
        """Bytes of the out-of-band buffers."""
        return sum(self.segment.sizes)

    def value(self) -> Any:
        """The value itself: a private (copy-on-write) mapping of the segment."""
        return load_segment(self.data, self.segment, own=False)

    def items(self) -> list[SharedItem]:
        """A handle per element of a list or tuple result."""
        assert self.length is not None
        return [SharedItem(self, i) for i in range(self.length)]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_value_in_worker, (self.data, self.segment))

    def __repr__(self) -> str:
        return f"<SharedValue {self.nbytes:,} bytes at {self.segment.path}>"


@final
class SharedItem(_Handle):
    """Element ``index`` of a list result kept in shared memory: one row of a fan-out.

    The worker that runs the element maps the whole segment but touches the
    pages of its own element only; the caller never reads any.
    """

    __slots__ = ("handle", "index")

    def __init__(self, handle: SharedValue, index: int) -> None:
        self.handle = handle
        self.index = index

    def value(self) -> Any:
        """The element itself."""
        return self.handle.value()[self.index]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_item_in_worker, (self.handle.data, self.handle.segment, self.index))


@final
class _File:
    """A result segment's file, unlinked when the last handle holding it is dropped.

    Several results handed over in one job's argument segment
    (``handing_over``) share it.
    """

    __slots__ = ("__weakref__", "_finalizer")

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _live: ClassVar[weakref.WeakValueDictionary[str, _File]] = weakref.WeakValueDictionary()

    def __init__(self, path: str) -> None:
        self._finalizer = weakref.finalize(self, _unlink_quietly, path)

    @classmethod
    def of(cls, path: str) -> _File:
        """The file at ``path``, shared with the handles that already hold it."""
        with cls._lock:
            found = cls._live.get(path)
            if found is None:
                found = cls._live[path] = cls(path)
            return found


def _item_in_worker(data: bytes, segment: _Segment, index: int) -> Any:
    return load_segment(data, segment, own=False)[index]


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _value_in_worker(data: bytes, segment: _Segment) -> Any:
    # The caller's handle owns the file: a worker only maps it.
    return load_segment(data, segment, own=False)


def resolve(value: Any) -> Any:
    """``value``, with the values handles in it stand for (containers walked)."""
    if isinstance(value, _Handle):
        return value.value()
    if not isinstance(value, CONTAINERS) or next(find(value, _Handle), None) is None:
        return value
    return replace(value, _Handle, _value_of)


def resolve_all(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (arguments by name) with every handle in them resolved."""
    if not any_handle(values.values()):
        return values
    return {k: replace(v, _Handle, _value_of) for k, v in values.items()}


def any_handle(values: Iterable[Any]) -> bool:
    """Whether any of ``values`` is or holds a handle (containers walked).

    One pass at C speed over the values' types decides when none is a handle
    or a container, as with the elements of a fan-out over plain values.
    """
    values = values if isinstance(values, (list, tuple)) else list(values)
    scanned = (_Handle, *CONTAINERS)
    if not any(issubclass(t, scanned) for t in set(map(type, values))):
        return False
    return any(next(find(v, _Handle), None) is not None for v in values)


# A worker process writes the results of the job it runs with the settings
# the job brought (one job at a time per process; the flusher thread pickles
# that job's early outcomes).
active: SharedMemory | None = None
# The thread that runs jobs here (the one that set ``active``).
_job_thread: int | None = None


def set_active(shared: SharedMemory | None) -> None:
    """Use ``shared`` for the results pickled in this process from now on (on the job's thread)."""
    global active, _job_thread
    active = shared
    _job_thread = threading.get_ident()


def releasing() -> bool:
    """Whether a result pickled now may give its pages to its segment (``remap.release``).

    Only on the thread that runs jobs: the flusher thread pickles finished
    outcomes while the job's next call runs, and that call may be writing
    to one of them (a fused call takes its input as it is). Pages given
    under a write would undo it.
    """
    return threading.get_ident() == _job_thread


def _value_of(handle: _Handle) -> Any:
    return handle.value()
