"""An opt-in, on-disk result cache: ``CachePlugin``.

A node whose task identity and inputs match a stored entry is not run: the
plugin answers ``lookup_node_result`` with the stored value. After a node ran,
``after_node_execute`` stores its result. Both hooks run in the caller's
process, so the cache works the same on every backend.

Layout::

    <directory>/<task name>-<identity hash>/<inputs hash>.pickle

Entries are written to a temporary file and moved into place with
``os.replace``, so a reader never sees a half-written entry, even when several
processes share the directory.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, final

from daglite.graph.base import GraphMetadata
from daglite.plugins.hooks import CachedResult, hook_impl
from daglite.tasks import Task

__all__ = ["CachePlugin"]

logger = logging.getLogger("daglite.plugins.cache")

_PICKLE_PROTOCOL: Final = 4  # fixed, so digests do not change with the Python version
_SUFFIX: Final = ".pickle"


class _Unhashable(Exception):
    """An input has no stable digest; the node is not cached."""


@final
class CachePlugin:
    """Stores task results on disk and serves them instead of running the task again.

    Args:
        directory: Where entries live (created if missing).
        tasks: Which tasks to cache: ``Task`` objects or task names. None caches
            every task. A ``Task`` adds a hash of its function's code to the key,
            so editing the function invalidates its entries; a bare name (and
            ``tasks=None``) keys on the task name only.

    A node is not cached when one of its inputs has no stable digest or its
    result cannot be pickled (logged at debug level).
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, tasks: Iterable[Any] | None = None
    ) -> None:
        self._only: frozenset[str] | None = None
        self._code: dict[str, str] = {}
        if tasks is not None:
            self._only = frozenset(self._remember(t) for t in tasks)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Entry path computed by lookup, reused by after_node_execute. The inputs dict
        # is kept with it, so its id cannot be reused by another dict meanwhile.
        self._pending: dict[tuple[str, int], tuple[Path, dict[str, Any]]] = {}
        self.hits = 0
        self.misses = 0

    def _remember(self, item: Any) -> str:
        if isinstance(item, Task):
            self._code[item.name] = _code_digest(item.func)
            return item.name
        if isinstance(item, str):
            return item
        raise TypeError(f"tasks must hold Task objects or task names, got {item!r}")

    # -- hooks -------------------------------------------------------------------

    @hook_impl
    def lookup_node_result(
        self, key: str, metadata: GraphMetadata, inputs: dict[str, Any]
    ) -> CachedResult | None:
        """Return the stored result of this node, if there is one."""
        path = self._entry(metadata, inputs)
        if path is None:
            return None
        try:
            with path.open("rb") as f:
                value = pickle.load(f)
        except FileNotFoundError:
            self._miss(key, inputs, path)
            return None
        except Exception:
            logger.warning("cache entry %s is unreadable; running the task", path, exc_info=True)
            self._miss(key, inputs, path)
            return None
        self.hits += 1
        return CachedResult(value)

    def _miss(self, key: str, inputs: dict[str, Any], path: Path) -> None:
        self.misses += 1
        self._pending[(key, id(inputs))] = (path, inputs)

    @hook_impl
    def after_node_execute(
        self,
        key: str,
        metadata: GraphMetadata,
        inputs: dict[str, Any],
        result: Any,
    ) -> None:
        """Store the result of a node that ran (served entries are left as they are)."""
        pending = self._pending.pop((key, id(inputs)), None)
        if pending is None or pending[1] is not inputs:
            return  # served from the cache, or not cacheable
        try:
            data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            logger.debug("task %r (key %r): result not cached: %s", metadata.name, key, exc)
            return
        try:
            _atomic_write(pending[0], data)
        except OSError:
            logger.warning("could not write cache entry %s", pending[0], exc_info=True)

    @hook_impl
    def on_node_error(self, key: str, inputs: dict[str, Any]) -> None:
        """Forget a failed node: nothing is stored."""
        self._pending.pop((key, id(inputs)), None)

    @hook_impl
    def on_graph_error(self) -> None:
        """Forget nodes of a failed evaluation that will never finish."""
        self._pending.clear()

    # -- keys --------------------------------------------------------------------

    def _entry(self, metadata: GraphMetadata, inputs: dict[str, Any]) -> Path | None:
        name = metadata.name
        if self._only is not None and name not in self._only:
            return None
        try:
            digest = _inputs_digest(inputs)
        except _Unhashable as exc:
            logger.debug("task %r: inputs have no stable digest, not cached: %s", name, exc)
            return None
        identity = hashlib.sha256(f"{name}\0{self._code.get(name, '')}".encode()).hexdigest()
        folder = f"{_safe(name)}-{identity[:16]}"
        return self.directory / folder / f"{digest}{_SUFFIX}"

    def clear(self) -> None:
        """Delete every entry in the directory."""
        for entry in self.directory.glob(f"*/*{_SUFFIX}"):
            entry.unlink(missing_ok=True)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "task"


def _code_digest(func: Any) -> str:
    """Hash of a function's source, or of its bytecode when the source is unavailable."""
    func = inspect.unwrap(func)
    try:
        text = inspect.getsource(func).encode()
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        if code is None:
            return ""
        text = code.co_code + repr(code.co_consts).encode() + repr(code.co_names).encode()
    return hashlib.sha256(text).hexdigest()


def _inputs_digest(inputs: dict[str, Any]) -> str:
    h = hashlib.sha256()
    _feed(h, inputs)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    """Feed ``h`` a canonical encoding of ``value``.

    Builtins go in structurally (so dicts and sets hash the same whatever
    their order), anything else through pickle.
    """
    kind = type(value)
    if value is None or kind is bool:
        h.update(b"c" + repr(value).encode())
    elif kind is int:
        h.update(b"i" + str(value).encode() + b";")
    elif kind is float:
        h.update(b"f" + struct.pack("<d", value))
    elif kind is str:
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + str(len(data)).encode() + b":" + data)
    elif kind is bytes:
        h.update(b"b" + str(len(value)).encode() + b":" + value)
    elif kind in (list, tuple):
        h.update(b"l" if kind is list else b"t")
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif kind is dict:
        h.update(b"d")
        for digest in sorted(_pair_digest(k, v) for k, v in value.items()):
            h.update(digest)
        h.update(b"}")
    elif kind in (set, frozenset):
        h.update(b"S")
        for digest in sorted(_item_digest(item) for item in value):
            h.update(digest)
        h.update(b"}")
    else:
        h.update(b"p" + _pickled(value))


def _item_digest(value: Any) -> bytes:
    h = hashlib.sha256()
    _feed(h, value)
    return h.digest()


def _pair_digest(key: Any, value: Any) -> bytes:
    h = hashlib.sha256()
    _feed(h, key)
    _feed(h, value)
    return h.digest()


def _pickled(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
    except Exception:
        pass
    try:  # functions and classes defined in __main__ or in a notebook
        import cloudpickle

        return bytes(cloudpickle.dumps(value, protocol=_PICKLE_PROTOCOL))
    except Exception as exc:
        raise _Unhashable(f"{type(value).__name__} cannot be pickled: {exc}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
