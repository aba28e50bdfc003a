"""``CachePlugin``: results that survive the run, keyed by inputs and code.

A node whose key matches a sound stored entry is not run: the plugin answers
``lookup_node_result`` with the stored value. After a node ran,
``after_node_execute`` stores its result at once, so a run that dies (an
error under fail-fast, Ctrl-C, SIGKILL) loses only the nodes that had not
finished, and the next run with the same cache reruns only those. Both hooks
run in the caller's process, so the cache works the same on every backend.

The key of a call (docs/caching.md has the exact rules) is a SHA-256 of

- the task's code (``_cache_code``: its bytecode and constants, and the user's
  helpers, classes, closures, defaults and module constants it reaches;
  installed libraries by name and version),
- its inputs (``_cache_values``: numpy arrays hashed straight from their
  buffers), less the parameters its ``CachePolicy`` ignores.

Entries are sealed with an HMAC and written whole (``_cache_store``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import time
from collections.abc import Iterable
from typing import Any, Final, final

from daglite._cache_policy import CachePolicy
from daglite.plugins.builtin._cache_code import _code_digest, _CodeHasher, _CodeMemo
from daglite.plugins.builtin._cache_store import (
    ENTRY_SUFFIX,
    _Sealer,
    _secret_key,
    _Store,
    _UnsafeLocation,
    default_location,
    open_store,
)
from daglite.plugins.builtin._cache_values import STAND_INS, _Unhashable
from daglite.plugins.hooks import CachedResult, hook_impl
from daglite.tasks import Task

__all__ = ["CachePlugin", "CachePolicy", "cache_summary", "clear_cache"]

logger = logging.getLogger("daglite.plugins.cache")

# Bumped when the key rules change, so old entries are never read with new rules.
_KEY_VERSION: Final = b"daglite-cache-key-1\0"
_NOT_CACHED: Final = None


@final
class _TaskKey:
    """What every key of one task starts with, computed once per task."""

    __slots__ = ("base", "folder", "ignore", "task", "ttl")

    def __init__(self, task: Task[Any, Any], code: bytes, policy: CachePolicy) -> None:
        self.task = task  # keeps ``id(task)`` from being reused while cached
        self.folder = f"{_safe(task.name)}-{code.hex()[:16]}"
        self.ignore = frozenset(policy.ignore)
        self.ttl = policy.ttl
        prefix = _KEY_VERSION + code + repr(sorted(self.ignore)).encode() + b"\0"
        self.base = hashlib.sha256(prefix)  # every key of the task starts from a copy


@final
class CachePlugin:
    """Stores task results and serves them instead of running the task again.

    Args:
        location: A directory (created private to the user if missing) or an
            fsspec URL (``s3://bucket/cache``, ``memory://cache``; needs the
            ``cache`` extra).
        tasks: Which tasks to cache: ``Task`` objects or task names. None
            caches every task except those marked ``cache=False``.
        ttl: Seconds after which entries are stale (None: never). A task's
            ``CachePolicy(ttl=...)`` wins.

    A node is not cached when one of its inputs has no stable digest (logged
    at debug level, naming the task and the parameter) or its result cannot
    be pickled. An entry that fails its integrity check is ignored with a
    warning and recomputed. When entries cannot be written (a full disk, a
    read-only directory) the run goes on uncached after one warning.

    Raises:
        PermissionError: When the directory, or the secret key file, can be
            written (the key file: read) by other users.
        TypeError: For ``tasks`` holding something other than tasks or names.
        ValueError: For a ``ttl`` that is not a positive number.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        tasks: Iterable[Any] | None = None,
        ttl: float | None = None,
    ) -> None:
        self._only = None if tasks is None else frozenset(_task_name(t) for t in tasks)
        self._default = CachePolicy(ttl=ttl)
        self._marked_only = False  # only tasks with cache=True or a policy (run default)
        self._sealer = _Sealer(b"")
        self._store: _Store | None = None
        opened = _open_or_warn(location)
        if opened is not None:
            self._sealer, self._store = opened
        self.location = os.fspath(location)
        self._memo = _CodeMemo()
        self._keys: dict[int, _TaskKey | None] = {}
        # Entry computed by lookup, used by after_node_execute: (path, key, inputs). The
        # inputs dict is kept with it, so its id cannot be reused by another dict meanwhile.
        self._pending: dict[tuple[str, int], tuple[str, bytes, dict[str, Any]]] = {}
        self._writable = self._store is not None
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachePlugin({self.location!r})"

    # -- hooks -------------------------------------------------------------------

    @hook_impl
    def lookup_node_result(
        self, key: str, inputs: dict[str, Any], task: Task[Any, Any]
    ) -> CachedResult | None:
        """Return the stored result of this node, if there is a sound one."""
        task_key = self._task_key(task)
        if task_key is None or self._store is None:
            return None
        entry = _entry(task_key, key, inputs, self._memo)
        if entry is None:
            return None
        rel, digest = entry
        value = self._load(task_key, rel, digest)
        if value is _NOT_CACHED:
            self.misses += 1
            if self._writable:
                self._pending[(key, id(inputs))] = (rel, digest, inputs)
            return None
        self.hits += 1
        return value  # type: ignore[no-any-return]

    @hook_impl
    def after_node_execute(self, key: str, inputs: dict[str, Any], result: Any) -> None:
        """Store the result of a node that ran (served entries are left as they are)."""
        pending = self._pending.pop((key, id(inputs)), None)
        if pending is None or pending[2] is not inputs or not self._writable:
            return  # served from the cache, or not cacheable
        rel, digest, _ = pending
        kind = type(result)
        if f"{kind.__module__}.{kind.__qualname__}" in STAND_INS:
            logger.debug("node %r: result kept on the cluster, not cached", key)
            return
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            logger.debug("node %r: result not cached, it cannot be pickled: %s", key, exc)
            return
        parts = self._sealer.seal(digest, payload, time.time())
        try:
            self._store.write(rel, parts)  # type: ignore[union-attr]
        except OSError as exc:
            self._writable = False
            self._pending.clear()
            logger.warning(
                "cannot write to the cache at %r (%s); this run goes on without storing results",
                self.location,
                exc,
            )

    @hook_impl
    def on_node_error(self, key: str, inputs: dict[str, Any]) -> None:
        """Forget a failed node: nothing is stored."""
        self._pending.pop((key, id(inputs)), None)

    @hook_impl
    def on_graph_error(self) -> None:
        """Forget nodes of a failed evaluation that will never finish."""
        self._pending.clear()

    # -- entries -----------------------------------------------------------------

    def _task_key(self, task: Task[Any, Any]) -> _TaskKey | None:
        found = self._keys.get(id(task), self)
        if found is self:
            policy = self._policy(task)
            code = None if policy is None else self._code(task)
            found = None if code is None or policy is None else _TaskKey(task, code, policy)
            self._keys[id(task)] = found
        return found  # type: ignore[return-value]

    def _policy(self, task: Task[Any, Any]) -> CachePolicy | None:
        setting = getattr(task, "cache", None)
        if setting is False:
            return None
        if self._only is not None and task.name not in self._only:
            return None
        if self._marked_only and setting is None:
            return None
        return setting if isinstance(setting, CachePolicy) else self._default

    def _code(self, task: Task[Any, Any]) -> bytes | None:
        try:
            return _code_digest(task.func, self._memo)
        except Exception as exc:  # a bug, or code no digest can follow: never a wrong hit
            logger.warning("task %r: its code has no digest (%r); not cached", task.name, exc)
            return None

    def _load(self, task_key: _TaskKey, rel: str, digest: bytes) -> Any:
        """The stored ``CachedResult``, or None (missing, stale, unsound)."""
        try:
            data = self._store.read(rel)  # type: ignore[union-attr]
        except OSError as exc:
            logger.warning("cache entry %r cannot be read (%s); running the task", rel, exc)
            return _NOT_CACHED
        if data is None:
            return _NOT_CACHED
        opened = self._sealer.open(digest, data)
        if opened is None:
            logger.warning(
                "cache entry %r of task %r failed its integrity check (tampered, truncated or "
                "written with another key); ignoring it and running the task",
                rel,
                task_key.task.name,
            )
            return _NOT_CACHED
        created, payload = opened
        ttl = task_key.ttl if task_key.ttl is not None else self._default.ttl
        if ttl is not None and time.time() - created > ttl:
            return _NOT_CACHED
        try:
            return CachedResult(pickle.loads(payload))
        except Exception as exc:
            logger.warning("cache entry %r cannot be loaded (%s); running the task", rel, exc)
            return _NOT_CACHED

    def clear(self) -> int:
        """Delete every entry; returns how many there were."""
        return 0 if self._store is None else clear_cache(self.location)


def _entry(
    task_key: _TaskKey, key: str, inputs: dict[str, Any], memo: _CodeMemo
) -> tuple[str, bytes] | None:
    """(path, key digest) of a call's entry; None when an input has no stable digest."""
    hasher = _CodeHasher(memo, base=task_key.base)
    ignore = task_key.ignore
    for name in sorted(inputs):
        if name in ignore:
            continue
        hasher.h.update(name.encode() + b"\0")
        try:
            hasher.feed(inputs[name])
        except (_Unhashable, RecursionError) as exc:
            logger.debug(
                "task %r (key %r): parameter %r has no stable digest (%s); not cached",
                task_key.task.name,
                key,
                name,
                exc,
            )
            return None
    digest = hasher.digest()
    return f"{task_key.folder}/{digest.hex()}{ENTRY_SUFFIX}", digest


def _open_or_warn(location: str | os.PathLike[str]) -> tuple[_Sealer, _Store] | None:
    """The secret key's sealer and the store; None (after a warning) when unusable."""
    try:
        return _Sealer(_secret_key()), open_store(location)
    except (_UnsafeLocation, ImportError, NotADirectoryError):
        raise
    except OSError as exc:
        logger.warning(
            "cannot use the cache at %r (%s); running without a cache", os.fspath(location), exc
        )
        return None


def _task_name(item: Any) -> str:
    if isinstance(item, Task):
        return item.name
    if isinstance(item, str):
        return item
    raise TypeError(f"tasks must hold Task objects or task names, got {item!r}")


def _task_of(rel: str) -> str:
    """The (file-safe) task name of an entry path ``name-codedigest/keydigest.entry``."""
    return rel.partition("/")[0].rpartition("-")[0]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "task"


def cache_summary(location: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Entries and bytes per task folder (``name-codedigest``) of the cache at ``location``.

    Raises:
        FileNotFoundError: When there is no cache there.
        PermissionError: For a local directory other users can write to.
    """
    summary: dict[str, tuple[int, int]] = {}
    for rel, size in open_store(location, create=False).entries():
        folder = rel.partition("/")[0]
        count, total = summary.get(folder, (0, 0))
        summary[folder] = (count + 1, total + size)
    return summary


def clear_cache(location: str | os.PathLike[str], task: str | None = None) -> int:
    """Delete the entries of the cache at ``location`` (only ``task``'s, if given).

    Returns:
        How many entries were deleted.

    Raises:
        FileNotFoundError: When there is no cache there.
        PermissionError: For a local directory other users can write to.
    """
    store = open_store(location, create=False)
    doomed = [r for r, _ in store.entries() if task is None or _task_of(r) == _safe(task)]
    for rel in doomed:
        store.remove(rel)
    return len(doomed)


def run_cache_plugin(
    cache: bool | str | os.PathLike[str] | None,
    ttl: float | None,
    tasks: Iterable[Task[Any, Any]],
    plugins: Iterable[object],
) -> CachePlugin | None:
    """The plugin ``evaluate(cache=..., cache_ttl=...)`` adds to a run, if any.

    ``cache`` a location (or True: the default location) caches every task not
    marked ``cache=False``; None caches the tasks marked ``cache=True`` (or
    with a ``CachePolicy``) in the default location, unless the run already has
    a ``CachePlugin``; False adds nothing.
    """
    if cache is False:
        return None
    if cache is None or cache is True:
        if cache is None and (
            not any(t.cache for t in tasks) or any(isinstance(p, CachePlugin) for p in plugins)
        ):
            return None
        location: str | os.PathLike[str] = default_location()
    else:
        location = cache
    plugin = CachePlugin(location, ttl=ttl)
    plugin._marked_only = cache is None
    return plugin
