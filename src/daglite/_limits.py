"""Task limits given as plain values: memory sizes and named resources.

Parsing and checking only, so ``tasks.py`` (``memory=``, ``resources=``) and
``engine.py`` (``memory_per_task=``, ``resources=``) reject the same bad
input with the same words, before anything runs. Enforcing the limits is
the run's job (``_run/resources.py``) and the processes backend's (memory).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["check_capacities", "check_resources", "format_bytes", "parse_memory"]

# Decimal units as disk and cloud vendors (and Dask) count; the binary ones
# are spelled with an "i".
_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


def parse_memory(value: object, where: str) -> int | None:
    """Bytes of a memory size: an int of bytes, or a string like ``"2GB"`` or ``"512MiB"``.

    Args:
        value: The size, or None for no limit.
        where: Who asks, for the error (``"task 'fit': memory"``).

    Returns:
        The size in bytes, or None.

    Raises:
        ValueError: If the size is malformed, zero or negative.
    """
    if value is None:
        return None
    size: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match and unit is not None:
            size = float(match.group(1)) * unit
    if size is None or not math.isfinite(size) or size < 1:
        raise ValueError(
            f"{where} must be a positive size such as '2GB', '512MiB' or a number of "
            f"bytes, got {value!r}"
        )
    return int(size)


def format_bytes(size: float) -> str:
    """``size`` bytes for people: ``'1.5 GB'``, ``'200 MB'``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def _amounts(value: object, where: str) -> dict[str, float]:
    """``value`` as ``{name: positive amount}``, or a ValueError naming ``where``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a dict of resource name to amount, got {value!r}")
    out: dict[str, float] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: a resource name must be a non-empty str, got {name!r}")
        ok = isinstance(amount, (int, float)) and not isinstance(amount, bool)
        if not ok or not math.isfinite(amount) or amount <= 0:
            raise ValueError(f"{where}[{name!r}] must be a positive number, got {amount!r}")
        out[name] = amount
    return out


def check_resources(value: object, task_name: str) -> dict[str, float] | None:
    """A task's ``resources=`` checked: ``{name: amount}``, or None when it asks for none.

    Raises:
        ValueError: If it is not a dict of names to positive numbers.
    """
    if value is None:
        return None
    return _amounts(value, f"task {task_name!r}: resources") or None


def check_capacities(value: object) -> dict[str, float] | None:
    """``evaluate(resources=...)`` checked: ``{name: capacity}``, or None.

    Raises:
        ValueError: If it is not a dict of names to positive numbers.
    """
    if value is None:
        return None
    return _amounts(value, "evaluate(): resources")
