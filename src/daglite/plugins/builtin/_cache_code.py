"""Digests of code: the half of a cache key that follows what a task runs.

A function of the user's own code is hashed by what it does, not by its text:

- its bytecode, constants (nested functions and classes included), names,
  argument layout and flags; not its line numbers, file name or docstring, so
  a comment, a blank line or moving it within its file changes nothing;
- its default arguments and the values in its closure cells;
- every global name its code (or a nested function's) mentions, resolved in its
  module: helper functions and classes recursively, module constants by value,
  imported modules by the attributes the code mentions.

Code outside the user's project (the standard library, anything installed in
site-packages, daglite itself) counts by its distribution's name and version
instead (``numpy 2.1.0``), and builtins by the Python version. A global without
a stable digest (a lock, a client, a logger) counts by its type only.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import site
import sys
import sysconfig
import types
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Final, final

from daglite.plugins.builtin._cache_values import _Unhashable, _ValueHasher

__all__ = ["_CodeMemo", "_code_digest"]

logger = logging.getLogger("daglite.plugins.cache")

_PYTHON: Final = f"python {sys.version.split()[0]}"
# Attributes of a class that are bookkeeping, not behaviour.
_CLASS_SKIP: Final = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__firstlineno__"}
    | {"__static_attributes__", "__annotations__", "__slotnames__", "__abstractmethods__"}
    | {"_abc_impl", "__parameters__", "__orig_bases__"}
)


@final
class _CodeMemo:
    """Digests of functions and classes already computed (kept alive with them)."""

    __slots__ = ("active", "back", "done")

    def __init__(self) -> None:
        self.done: dict[int, tuple[Any, bytes]] = {}
        self.active: dict[int, str] = {}  # ids being hashed -> their names
        self.back: set[int] = set()  # active ids something referred back to (cycles)


def _code_digest(obj: Any, memo: _CodeMemo) -> bytes:
    """Digest of a task function (or any callable) and the code it reaches."""
    hasher = _CodeHasher(memo)
    hasher._feed_class(obj)
    return hasher.digest()


class _CodeHasher(_ValueHasher):
    """A value hasher that hashes functions, classes and modules by their code."""

    __slots__ = ("memo", "names")

    def __init__(
        self, memo: _CodeMemo | None = None, prefix: bytes = b"", base: Any = None
    ) -> None:
        super().__init__(prefix, base)
        self.memo = memo if memo is not None else _CodeMemo()
        self.names: frozenset[str] = frozenset()  # what the code being hashed mentions

    def child(self) -> _CodeHasher:
        """A fresh hasher sharing this one's memo."""
        return _CodeHasher(self.memo)

    def _reference(self, value: Any) -> bytes | None:
        if isinstance(value, types.FunctionType):
            return self._memoized(value, _function)
        if isinstance(value, type):
            return self._memoized(value, _class)
        if isinstance(value, types.ModuleType):
            return self._module(value)
        return _reference_other(self, value)

    def _memoized(self, obj: Any, compute: Any) -> bytes:
        memo, ident = self.memo, id(obj)
        found = memo.done.get(ident)
        if found is not None:
            return found[1]
        if ident in memo.active:  # recursion: name it, do not walk it again
            memo.back.add(ident)
            return b"cycle:" + getattr(obj, "__qualname__", "?").encode()
        library = _library_of(obj)
        if library is not None:
            return f"{library}:{_qualname(obj)}".encode()
        memo.active[ident] = _qualname(obj)
        try:
            sub = _CodeHasher(memo)
            compute(sub, obj)
            digest = sub.digest()
        finally:
            del memo.active[ident]
            memo.back.discard(ident)
        if not memo.back:  # complete: no part of it stood in for an unfinished one
            memo.done[ident] = (obj, digest)
        return digest

    def _module(self, module: types.ModuleType) -> bytes:
        """A library module by its version; the user's by the attributes code mentions."""
        library = _library_of_module(module.__name__)
        if library is not None:
            return f"{library}:{module.__name__}".encode()
        ident = id(module)
        if ident in self.memo.active:
            return b"module:" + module.__name__.encode()
        self.memo.active[ident] = module.__name__
        try:
            sub = _CodeHasher(self.memo)
            sub.names = self.names
            _str_of(sub, module.__name__)
            for name in sorted(self.names):
                if name in vars(module):
                    sub._named(name, vars(module)[name])
            return sub.digest()
        finally:
            del self.memo.active[ident]

    def _named(self, name: str, value: Any) -> None:
        """Feed a global, closure cell or default: by value, else by its type."""
        _str_of(self, name)
        sub = _CodeHasher(self.memo)
        sub.names = self.names
        try:
            sub.feed(value)
        except _Unhashable as exc:
            logger.debug("cache key: %r counts by its type only: %s", name, exc)
            sub = _CodeHasher(self.memo)
            sub._feed_class(type(value))
        self.h.update(b"=" + sub.digest())


def _str_of(hasher: _ValueHasher, text: str) -> None:
    hasher.h.update(b"n" + text.encode("utf-8", "surrogatepass") + b"\0")


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    return f"{module}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


# -- functions ------------------------------------------------------------------------


def _code_names(code: types.CodeType) -> set[str]:
    """Every name ``code`` and the code nested in it look up."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _feed_code(hasher: _CodeHasher, code: types.CodeType, doc: Any = None) -> None:
    """Bytecode, constants and layout; no line numbers, file name or docstring."""
    h = hasher.h
    h.update(b"C" + code.co_code)
    h.update(getattr(code, "co_exceptiontable", b""))
    layout = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
    _str_of(hasher, repr(layout))
    for names in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
        _str_of(hasher, "\0".join(names))
    consts = code.co_consts
    if doc is not None and consts and consts[0] == doc:
        consts = consts[1:]  # the docstring
    for const in consts:
        if isinstance(const, types.CodeType):
            _feed_code(hasher, const)
        else:
            hasher.feed(const)


def _function(hasher: _CodeHasher, func: types.FunctionType) -> None:
    code = func.__code__
    hasher.names = frozenset(_code_names(code))
    _feed_code(hasher, code, func.__doc__)
    hasher._named("defaults", func.__defaults__)
    hasher._named("kwdefaults", func.__kwdefaults__)
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell (a name assigned later)
            value = None
        hasher._named(name, value)
    _feed_globals(hasher, func.__globals__)


def _feed_globals(hasher: _CodeHasher, namespace: dict[str, Any]) -> None:
    for name in sorted(hasher.names):
        if name in namespace:
            hasher._named(name, namespace[name])
        elif not hasattr(builtins, name):
            module = sys.modules.get(name)  # ``import pkg.mod`` inside the function
            if module is not None:
                hasher._named(name, module)


# -- classes --------------------------------------------------------------------------


def _class(hasher: _CodeHasher, cls: type) -> None:
    _str_of(hasher, cls.__qualname__)
    for base in cls.__bases__:
        hasher._feed_class(base)
    for name, value in sorted(vars(cls).items()):
        if name not in _CLASS_SKIP:
            hasher._named(name, value)


def _reference_other(hasher: _CodeHasher, value: Any) -> bytes | None:
    """Functions in disguise: methods, wrappers, tasks, builtins; None for plain values."""
    if isinstance(value, types.MethodType):
        return _bound_method(hasher, value)
    if isinstance(value, (staticmethod, classmethod)):
        return _sub(hasher, "method", [value.__func__])
    if isinstance(value, property):
        return _sub(hasher, "property", [value.fget, value.fset, value.fdel])
    if isinstance(value, _BUILTIN_CALLABLES):
        return _builtin(value)
    return _wrapper(hasher, value)


def _bound_method(hasher: _CodeHasher, method: types.MethodType) -> bytes:
    """A bound method: its function's code and the object it is bound to."""
    sub = _CodeHasher(hasher.memo)
    _str_of(sub, "bound")
    sub._feed_class(method.__func__)
    sub._named("self", method.__self__)
    return sub.digest()


def _builtin(value: Any) -> bytes:
    """A function or method written in C: by its library (or Python) version and name."""
    owner = getattr(value, "__objclass__", None) or getattr(value, "__self__", None)
    module = getattr(value, "__module__", None) or getattr(owner, "__module__", None)
    library = _library_of_module(module or "builtins") or _PYTHON
    return f"{library}:{getattr(value, '__qualname__', repr(value))}".encode()


def _wrapper(hasher: _CodeHasher, value: Any) -> bytes | None:
    """A ``Task`` or a wrapper (``functools.wraps``, ``lru_cache``) by what it wraps."""
    task_func = _task_function(value)
    if task_func is not None:
        return _sub(hasher, "task", [task_func])
    wrapped = getattr(value, "__dict__", {}).get("__wrapped__") if callable(value) else None
    return None if wrapped is None else _sub(hasher, "wrapped", [type(value), wrapped])


_BUILTIN_CALLABLES: Final = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    types.GetSetDescriptorType,
    types.MemberDescriptorType,
)


def _task_function(value: Any) -> Any:
    from daglite.tasks import Task

    return value.func if isinstance(value, Task) else None


def _sub(hasher: _CodeHasher, tag: str, parts: Iterable[Any]) -> bytes:
    sub = _CodeHasher(hasher.memo)
    _str_of(sub, tag)
    for part in parts:
        sub._feed_class(part)
    return sub.digest()


# -- what is the user's code ------------------------------------------------------------


def _library_of(obj: Any) -> str | None:
    """``"numpy 2.1.0"`` for a function or class of installed code, None for the user's."""
    module = getattr(obj, "__module__", None)
    return _library_of_module(module) if isinstance(module, str) else None


@functools.cache
def _library_of_module(name: str) -> str | None:
    """The distribution and version module ``name`` comes from; None for the user's code.

    ``__main__``, modules outside the interpreter's and site-packages'
    directories and modules that cannot be found are the user's: their code is
    hashed, which can only cost a miss, never a wrong hit.
    """
    top = name.partition(".")[0]
    if top == "daglite":
        return _distribution("daglite")
    if top == "builtins" or top in sys.builtin_module_names:
        return _PYTHON
    module = sys.modules.get(name) or sys.modules.get(top)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return _PYTHON if top in getattr(sys, "stdlib_module_names", ()) else None
    real = os.path.realpath(path)
    if not real.startswith(_library_dirs()) and not _in_site_packages(real):
        return None
    in_stdlib = top in getattr(sys, "stdlib_module_names", ()) or real.startswith(_stdlib_dirs())
    return _PYTHON if in_stdlib and not _in_site_packages(real) else _distribution(top)


def _in_site_packages(path: str) -> bool:
    parts = path.split(os.sep)
    return "site-packages" in parts or "dist-packages" in parts


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(
        os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths
    )


@functools.lru_cache(maxsize=1)
def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - old virtualenv's site module
        pass
    return tuple(os.path.realpath(d) + os.sep for d in dirs)


@functools.cache
def _distribution(top: str) -> str:
    names = _packages().get(top) or [top]
    for dist in names:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return f"{top} (no version)"


@functools.lru_cache(maxsize=1)
def _packages() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())
