"""Plugins that ship with daglite.

``ProgressPlugin`` (a rich progress bar; the ``rich`` extra) and
``CachePlugin`` (result caching). Importing this package needs neither rich nor
the cache's dependencies: ``CachePlugin`` is imported on first use, and a
missing rich only matters when a ``ProgressPlugin`` is created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daglite.plugins.builtin.progress import ProgressPlugin

if TYPE_CHECKING:
    from daglite.plugins.builtin.cache import CachePlugin

__all__ = ["CachePlugin", "ProgressPlugin"]

_LAZY: dict[str, str] = {"CachePlugin": "daglite.plugins.builtin.cache"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daglite.plugins.builtin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
