"""Files the built-in plugins write (run report, trace): path checks and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["checked_path", "write_atomically"]


def checked_path(value: object, name: str) -> Path:
    """``value`` as the path of a file to write, or a clear error naming ``name``.

    Raises:
        TypeError: If ``value`` is not a ``str`` or ``os.PathLike``.
        ValueError: If it is empty, a directory, or in a missing directory.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {value!r}")
    raw = os.fspath(value)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{name} must be a non-empty file path, got {value!r}")
    path = Path(raw)
    if path.is_dir():
        raise ValueError(f"{name} must name a file, but {raw!r} is a directory")
    if not path.parent.is_dir():
        raise ValueError(f"{name}: the directory of {raw!r} does not exist; create it first")
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so readers never see half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the output is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
