"""This process's pages replaced, in place, by a private mapping of a segment (Linux, gh-14).

``mmap(MAP_PRIVATE | MAP_FIXED)`` over a range whose bytes a segment file
already holds: the memory reads the same, its old pages are freed, and a
later write to it copies the page it lands on (it never reaches the file).
Two uses:

- A borrowed argument segment handed over as a result
  (``shared._Borrowed.make_private``): what the worker still holds of the
  argument can no longer change the caller's result.
- A large numpy result, once written into its segment (``release``): the
  worker's array now reads the segment's pages, and its own are freed as the
  write goes, so the data exists once in the process tree while it travels,
  not twice. Only an array whose memory is a whole ``malloc`` chunk of its
  own (glibc maps those, and unmaps them when they are freed) qualifies:
  memory ``malloc`` keeps for reuse would keep the segment's pages alive
  after the array is gone.

The segment's file is never written again after it is written whole, and
never truncated (unlinking it is fine: the mapping keeps its pages).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections.abc import Callable
from typing import Any, Final

PAGE: Final = mmap.PAGESIZE
_MAP_FIXED: Final = 0x10  # Linux; the mmap module does not export it
# glibc's malloc chunk header (64-bit): the size field's flags.
_IS_MMAPPED: Final = 0x2
_NON_MAIN_ARENA: Final = 0x4
_HEADER: Final = 2 * ctypes.sizeof(ctypes.c_size_t)


def _native_mmap() -> Callable[[int, int, int, int], bool] | None:
    """``remap(address, size, fd, offset)``, or None where it cannot work (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        native = ctypes.CDLL(None, use_errno=True).mmap
    except (OSError, AttributeError):
        return None
    native.restype = ctypes.c_void_p
    native.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    protection, flags = mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED

    def remap(address: int, size: int, fd: int, offset: int) -> bool:
        return bool(native(address, size, protection, flags, fd, offset) == address)

    return remap


_remap = _native_mmap()


def address_of(buf: Any) -> int | None:
    """Where writable buffer ``buf`` starts in memory (None if read-only or empty)."""
    try:
        view = ctypes.c_char.from_buffer(buf)
    except (TypeError, ValueError):
        return None
    address = ctypes.addressof(view)
    del view  # lets the buffer go (a mapping with a view on it cannot be closed)
    return address


def remap_private(address: int, size: int, fd: int, offset: int = 0) -> bool:
    """Map ``size`` bytes of ``fd`` from ``offset`` copy-on-write at ``address``; whether it worked.

    ``address``, ``size`` and ``offset`` are multiples of ``PAGE``.
    """
    return _remap is not None and _remap(address, size, fd, offset)


@functools.cache
def _uses_glibc_malloc() -> bool:
    """Whether ``malloc`` here is glibc's own (not another allocator preloaded)."""
    if _remap is None:
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        ours = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        glibc = ctypes.cast(ctypes.CDLL("libc.so.6").malloc, ctypes.c_void_p).value
    except (OSError, ValueError, AttributeError):
        return False
    return ours is not None and ours == glibc


def releasable(view: memoryview) -> int | None:
    """Where ``view`` starts, if its pages may be given to the segment it is written to.

    It must be a numpy array's memory, that array's own (or a view of it),
    from numpy's default allocator, in a chunk glibc's ``malloc`` mapped for
    it alone, and writable. None otherwise (it is then only copied).
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or view.readonly or not isinstance(view.obj, numpy.ndarray):
        return None
    if not _uses_glibc_malloc():
        return None
    owner = _owner(view.obj)
    if owner is None or not _default_allocator(numpy, owner):
        return None
    start = owner.__array_interface__["data"][0]
    if not _own_mapped_chunk(start, owner.nbytes):
        return None
    address = address_of(view)
    if address is None or not start <= address <= start + owner.nbytes - view.nbytes:
        return None
    return address


def _owner(array: Any) -> Any:
    """The array whose memory ``array`` views (itself if it owns it), or None."""
    for _ in range(64):  # numpy keeps base chains short; this only bounds a loop
        if array.flags.owndata:
            return array if array.flags.writeable else None
        base = array.base
        if base is None or type(base) is not type(array):
            return None
        array = base
    return None


def _default_allocator(numpy: Any, array: Any) -> bool:
    """Whether numpy's default allocator (``malloc``) made ``array``'s memory."""
    core = getattr(numpy, "_core", None) or getattr(numpy, "core", None)
    get_name = getattr(getattr(core, "multiarray", None), "get_handler_name", None)
    return get_name is not None and get_name(array) == "default_allocator"


def _own_mapped_chunk(start: int, nbytes: int) -> bool:
    """Whether ``malloc`` returned ``start`` from a chunk it mapped alone, big enough.

    Such a chunk starts a page (its header is the 16 bytes before ``start``,
    in the same page, so reading it is safe) and is unmapped when freed.
    """
    if start % PAGE != _HEADER:
        return False
    prev_size = ctypes.c_size_t.from_address(start - _HEADER).value
    size = ctypes.c_size_t.from_address(start - _HEADER // 2).value
    if prev_size or not size & _IS_MMAPPED or size & _NON_MAIN_ARENA:
        return False
    return (size & ~0x7) - _HEADER >= nbytes


def release(fd: int, start: int, end: int, offset: int) -> int | None:
    """Give the whole pages of memory ``[start, end)`` to ``fd``, which holds them from ``offset``.

    ``offset`` and ``start`` are the same distance past a page boundary.

    Returns:
        Where the pages given end (``start`` if there was no whole page), or
        None if the mapping failed (give no more).
    """
    first = -(-start // PAGE) * PAGE
    last = end // PAGE * PAGE
    if last <= first:
        return start
    return last if remap_private(first, last - first, fd, offset + first - start) else None
