"""Settings read from the environment, and machine facts (usable CPUs).

Knobs:
    DAGLITE_BACKEND: default backend name (``"inline"`` when unset).
    DAGLITE_STRICT_PLUGINS: ``1`` makes a raising hook fail the evaluation.
    DAGLITE_START_METHOD: multiprocessing start method for the processes backend.
    DAGLITE_DASK_ADDRESS: scheduler address the dask backend connects to.
"""

from __future__ import annotations

import os

__all__ = ["default_backend_name", "strict_plugins", "usable_cpu_count"]

DEFAULT_BACKEND = "inline"


def default_backend_name() -> str:
    """The backend ``evaluate`` uses when none is given."""
    return os.environ.get("DAGLITE_BACKEND") or DEFAULT_BACKEND


def strict_plugins() -> bool:
    """Whether a raising hook should fail the evaluation instead of being logged."""
    return os.environ.get("DAGLITE_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


def usable_cpu_count() -> int:
    """CPUs this process may use: affinity mask and cgroup quota aware (psutil)."""
    import psutil

    try:
        count = len(psutil.Process().cpu_affinity() or ()) or None
    except (AttributeError, OSError, NotImplementedError):
        count = None
    count = count or psutil.cpu_count() or os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(count, limit) if limit else count)
