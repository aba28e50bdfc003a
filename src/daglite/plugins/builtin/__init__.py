"""Plugins that ship with daglite.

``ProgressPlugin`` (a rich progress bar; the ``rich`` extra), ``CachePlugin``
(result caching) and ``ReportPlugin`` (a self-contained HTML run report).
Importing this package needs neither rich nor the cache's dependencies:
``CachePlugin`` and ``ReportPlugin`` are imported on first use, and a missing
rich only matters when a ``ProgressPlugin`` is created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daglite.plugins.builtin.progress import ProgressPlugin

if TYPE_CHECKING:
    from daglite.plugins.builtin.cache import CachePlugin
    from daglite.plugins.builtin.report import ReportPlugin

__all__ = ["CachePlugin", "ProgressPlugin", "ReportPlugin"]

_LAZY: dict[str, str] = {
    "CachePlugin": "daglite.plugins.builtin.cache",
    "ReportPlugin": "daglite.plugins.builtin.report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daglite.plugins.builtin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
