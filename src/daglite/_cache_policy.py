"""``CachePolicy``: how one task is cached (``@task(cache=CachePolicy(...))``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Union, final

__all__ = ["CachePolicy", "CacheSetting", "check_cache_setting"]


@final
@dataclass(frozen=True)
class CachePolicy:
    """A task's caching rules; passing one as ``cache=`` turns caching on.

    Attributes:
        ttl: Seconds after which an entry is stale and the task runs again
            (None: entries never expire). Wins over ``evaluate``'s ``cache_ttl``.
        ignore: Parameters left out of the key (say ``verbose`` or ``n_jobs``):
            calls that differ only in them share an entry.
    """

    ttl: float | None = None
    ignore: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        ttl = self.ttl
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))):
            raise TypeError(f"ttl must be a number of seconds or None, got {ttl!r}")
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        ignore: Any = self.ignore
        names = (ignore,) if isinstance(ignore, str) else tuple(_names(ignore))
        object.__setattr__(self, "ignore", names)


def _names(ignore: Iterable[Any]) -> Iterable[str]:
    for name in ignore:
        if not isinstance(name, str):
            raise TypeError(f"ignore must hold parameter names, got {name!r}")
        yield name


CachePolicy.__module__ = "daglite"

# What ``@task(cache=...)`` takes: None follows the run, True/False turn it on/off.
CacheSetting = Union[bool, CachePolicy, None]  # noqa: UP007 (a runtime alias on 3.10)


def check_cache_setting(task_name: str, params: Iterable[str], cache: Any) -> None:
    """Validate a task's ``cache`` option.

    Raises:
        TypeError: For anything but None, a bool or a ``CachePolicy``.
        ValueError: For an ignored parameter the task does not have.
    """
    if cache is None or isinstance(cache, bool):
        return
    if not isinstance(cache, CachePolicy):
        raise TypeError(
            f"task {task_name!r}: cache must be True, False, None or a CachePolicy, got {cache!r}"
        )
    known = set(params)
    for name in cache.ignore:
        if name not in known:
            raise ValueError(
                f"task {task_name!r}: CachePolicy(ignore=...) names {name!r}, "
                "which is not a parameter of the task"
            )
