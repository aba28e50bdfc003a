"""Plugins that ship with daglite.

``ProgressPlugin`` (a rich progress bar; the ``rich`` extra), ``CachePlugin``
(result caching), ``ReportPlugin`` (a self-contained HTML run report),
``TracePlugin`` (a Chrome trace file) and ``OpenTelemetryPlugin`` (spans; the
``otel`` extra). Importing this package needs neither rich, the cache's
dependencies nor opentelemetry: all but ``ProgressPlugin`` are imported on
first use, and a missing rich or opentelemetry only matters when such a plugin
is created.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daglite.plugins.builtin.progress import ProgressPlugin

if TYPE_CHECKING:
    from daglite.plugins.builtin.cache import CachePlugin
    from daglite.plugins.builtin.otel import OpenTelemetryPlugin
    from daglite.plugins.builtin.report import ReportPlugin
    from daglite.plugins.builtin.trace import TracePlugin

__all__ = ["CachePlugin", "OpenTelemetryPlugin", "ProgressPlugin", "ReportPlugin", "TracePlugin"]

_LAZY: dict[str, str] = {
    "CachePlugin": "daglite.plugins.builtin.cache",
    "OpenTelemetryPlugin": "daglite.plugins.builtin.otel",
    "ReportPlugin": "daglite.plugins.builtin.report",
    "TracePlugin": "daglite.plugins.builtin.trace",
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
