"""Stable digests of values: the inputs half of a cache key.

A value is fed to a SHA-256 hasher as a canonical, typed encoding, the same in
every process, on every run and under any ``PYTHONHASHSEED``:

- ``None``, bools, ints, floats, complex numbers, strings and bytes by value,
  tagged with their type (``1``, ``1.0`` and ``True`` differ);
- lists and tuples item by item; dicts and sets whatever their order;
- numpy arrays by dtype, shape and their raw bytes, hashed straight from the
  buffer (a 100 MB array is never pickled just to hash it); ``bytearray``,
  ``memoryview``, ``mmap`` and ``array.array`` by their buffer too, and so is
  any other object that only offers the buffer protocol;
- anything else by what pickling would save (``__reduce_ex__``), walked with
  the same rules, plus its class (see ``_reference``).

An object that cannot be reduced (an open file, a lock, a generator) raises
``_Unhashable``: its node is not cached rather than risk a wrong hit.
"""

from __future__ import annotations

import array
import copyreg
import hashlib
import marshal
import mmap
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any, Final, final

__all__ = ["STAND_INS", "_Unhashable", "_ValueHasher"]

_PROTOCOL: Final = 4  # what __reduce_ex__ is asked for; fixed so digests do not drift
# Lists and tuples longer than this made of plain scalars only are hashed in one
# marshal call (version 0: no interning references, so the bytes depend on the
# values alone), not item by item.
_MARSHAL_AFTER: Final = 8
_MARSHAL_VERSION: Final = 0
_SCALARS: Final = frozenset({int, float, str, bytes, bool, type(None)})
# Nesting deeper than this is taken for a runaway reduction, not a value.
_MAX_DEPTH: Final = 400
# Stand-ins for values that live elsewhere (a result kept on a Dask cluster):
# what they point to is not known here, so they have no digest. By name, so the
# cache never imports a backend.
STAND_INS: Final = frozenset({"daglite.backends.dask.RemoteResult"})


class _Unhashable(Exception):
    """A value has no stable digest; its node is not cached."""


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)


class _ValueHasher:
    """Feeds values into one SHA-256 hasher (``h``); ``digest()`` ends it.

    Subclasses decide what functions, classes and modules add (``_reference``):
    here they go in by their qualified name.
    """

    __slots__ = ("_active", "_depth", "h")

    def __init__(self, prefix: bytes = b"", base: Any = None) -> None:
        # ``base``: a hasher fed already, copied (cheaper than feeding ``prefix`` again).
        self.h = base.copy() if base is not None else hashlib.sha256(prefix)
        self._active: set[int] = set()  # ids of objects being walked (cycles)
        self._depth = 0

    def digest(self) -> bytes:
        """The digest of everything fed so far."""
        return self.h.digest()

    def child(self) -> _ValueHasher:
        """A fresh hasher with the same rules (for order-free containers)."""
        return type(self)()

    def feed(self, value: Any) -> None:
        """Feed ``value``'s canonical encoding.

        Raises:
            _Unhashable: When ``value`` (or something inside it) has no stable digest.
        """
        feeder = _FEEDERS.get(type(value))
        if feeder is not None:
            feeder(self, value)
        else:
            self._feed_other(value)

    # -- containers ----------------------------------------------------------------

    def _sequence(self, value: list[Any] | tuple[Any, ...]) -> None:
        h = self.h
        h.update(b"l" if type(value) is list else b"t")
        if len(value) > _MARSHAL_AFTER and all(type(v) in _SCALARS for v in value):
            h.update(b"m" + marshal.dumps(value, _MARSHAL_VERSION))
            return
        h.update(_int_bytes(len(value)))
        with self._walking(value):
            for item in value:
                self.feed(item)

    def _dict(self, value: dict[Any, Any]) -> None:
        h = self.h
        h.update(b"d" + _int_bytes(len(value)))
        with self._walking(value):
            if all(type(k) is str for k in value):
                for k in sorted(value):
                    _str(self, k)
                    self.feed(value[k])
            else:
                for pair in sorted(self._part(k, v) for k, v in value.items()):
                    h.update(pair)

    def _set(self, value: set[Any] | frozenset[Any]) -> None:
        self.h.update((b"S" if type(value) is set else b"F") + _int_bytes(len(value)))
        with self._walking(value):
            for item in sorted(self._part(v) for v in value):
                self.h.update(item)

    def _part(self, *values: Any) -> bytes:
        sub = self.child()
        sub._depth = self._depth
        for v in values:
            sub.feed(v)
        return sub.digest()

    def _walking(self, value: Any) -> _Walk:
        return _Walk(self, id(value))

    # -- everything else -------------------------------------------------------------

    def _feed_other(self, value: Any) -> None:
        kind = type(value)
        if _is_plain_array(kind):
            _array(self, value)
            return
        if f"{kind.__module__}.{kind.__qualname__}" in STAND_INS:
            raise _Unhashable(f"{kind.__qualname__} stands for a value kept elsewhere")
        ref = self._reference(value)
        if ref is not None:
            self.h.update(b"r" + ref)
            return
        self._reduced(value)

    def _reference(self, value: Any) -> bytes | None:
        """What a function, class or module adds; None for other values."""
        if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
            module = getattr(value, "__module__", None) or ""
            return f"{module}:{getattr(value, '__qualname__', '')}".encode()
        return None

    def _reduced(self, value: Any) -> None:
        """Feed what pickling ``value`` would save (its reduction), or its buffer."""
        kind = type(value)
        try:
            reducer = copyreg.dispatch_table.get(kind)
            parts = reducer(value) if reducer is not None else value.__reduce_ex__(_PROTOCOL)
        except Exception as exc:
            if _buffer(self, value):
                return
            raise _Unhashable(f"{kind.__qualname__} cannot be pickled: {exc}") from None
        self.h.update(b"o")
        self._feed_class(kind)
        if isinstance(parts, str):  # a module-level singleton, saved by name
            _str(self, parts)
            return
        with self._walking(value):
            self._feed_class(parts[0])
            for part in parts[1:]:
                self.feed(_listed(part))

    def _feed_class(self, obj: Any) -> None:
        ref = self._reference(obj)
        if ref is None:
            self.feed(obj)
        else:
            self.h.update(b"r" + ref)


@final
class _Walk:
    """Guards one container walk: cycles and runaway depth are not values."""

    __slots__ = ("hasher", "ident")

    def __init__(self, hasher: _ValueHasher, ident: int) -> None:
        self.hasher = hasher
        self.ident = ident

    def __enter__(self) -> None:
        hasher = self.hasher
        if self.ident in hasher._active:
            raise _Unhashable("a value contains itself")
        hasher._depth += 1
        if hasher._depth > _MAX_DEPTH:
            raise _Unhashable(f"values nested deeper than {_MAX_DEPTH} levels")
        hasher._active.add(self.ident)

    def __exit__(self, *exc: object) -> None:
        self.hasher._depth -= 1
        self.hasher._active.discard(self.ident)


def _listed(part: Any) -> Any:
    """A reduction's list or dict items (iterators) as a list; anything else as is."""
    if hasattr(part, "__next__") and not isinstance(part, (str, bytes, tuple, list, dict)):
        return list(part)
    return part


# -- scalars -------------------------------------------------------------------------


def _none(hasher: _ValueHasher, value: None) -> None:
    hasher.h.update(b"N")


def _bool(hasher: _ValueHasher, value: bool) -> None:
    hasher.h.update(b"T" if value else b"X")


def _int(hasher: _ValueHasher, value: int) -> None:
    hasher.h.update(b"i" + _int_bytes(value) + b";")


def _float(hasher: _ValueHasher, value: float) -> None:
    hasher.h.update(b"f" + struct.pack("<d", value))


def _complex(hasher: _ValueHasher, value: complex) -> None:
    hasher.h.update(b"c" + struct.pack("<dd", value.real, value.imag))


def _str(hasher: _ValueHasher, value: str) -> None:
    data = value.encode("utf-8", "surrogatepass")
    hasher.h.update(b"s" + _int_bytes(len(data)) + b":")
    hasher.h.update(data)


def _bytes(hasher: _ValueHasher, value: bytes) -> None:
    hasher.h.update(b"b" + _int_bytes(len(value)) + b":")
    hasher.h.update(value)


# -- buffers ---------------------------------------------------------------------------


def _view(hasher: _ValueHasher, tag: bytes, view: memoryview) -> None:
    """Hash a buffer's layout and bytes, straight from memory when contiguous."""
    hasher.h.update(tag + f"{view.format}|{view.itemsize}|{view.shape}|".encode())
    hasher.h.update(view if view.c_contiguous else view.tobytes())


def _bytearray(hasher: _ValueHasher, value: bytearray) -> None:
    _view(hasher, b"B", memoryview(value))


def _memoryview(hasher: _ValueHasher, value: memoryview) -> None:
    _view(hasher, b"V", value)


def _mmap(hasher: _ValueHasher, value: mmap.mmap) -> None:
    _view(hasher, b"M", memoryview(value))


def _array_array(hasher: _ValueHasher, value: array.array[Any]) -> None:
    _view(hasher, b"A" + value.typecode.encode(), memoryview(value))


def _pickle_buffer(hasher: _ValueHasher, value: pickle.PickleBuffer) -> None:
    _view(hasher, b"V", value.raw())


def _buffer(hasher: _ValueHasher, value: Any) -> bool:
    """Hash any other object that exports a buffer; False when it does not."""
    try:
        view = memoryview(value)
    except TypeError:
        return False
    with view:
        _view(hasher, b"W" + type(value).__qualname__.encode(), view)
    return True


def _is_plain_array(kind: type) -> bool:
    """Whether ``kind`` is numpy's ``ndarray`` or ``memmap`` (hashed from the buffer)."""
    np = sys.modules.get("numpy")
    return np is not None and (kind is np.ndarray or kind is np.memmap)


def _array(hasher: _ValueHasher, value: Any) -> None:
    """A numpy array: dtype, shape and raw bytes, never a pickle.

    Arrays of Python objects have no raw bytes and go through their reduction.
    A non-contiguous array is copied once into C order; a memory-mapped or
    shared-memory array hashes like the same values in an ordinary array.
    """
    np = sys.modules["numpy"]
    dtype = value.dtype
    if dtype.hasobject:
        hasher._reduced(value)
        return
    descr = repr(dtype.descr) if dtype.fields is not None else dtype.str
    hasher.h.update(f"a{descr}|{value.shape}|".encode())
    flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    hasher.h.update(flat)


_FEEDERS: Final[dict[type, Callable[[Any, Any], None]]] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: _bytes,
    bytearray: _bytearray,
    memoryview: _memoryview,
    mmap.mmap: _mmap,
    array.array: _array_array,
    pickle.PickleBuffer: _pickle_buffer,
    list: _ValueHasher._sequence,
    tuple: _ValueHasher._sequence,
    dict: _ValueHasher._dict,
    set: _ValueHasher._set,
    frozenset: _ValueHasher._set,
}
