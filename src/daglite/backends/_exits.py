"""Killing processes that still show a title, and waiting for them to exit.

For worker processes this process did not start (a local Ray instance's), so
it cannot ``wait`` on them as a parent: it checks the title they set before a
kill, and waits on a pidfd where the kernel has them (Linux 5.3+), else by polling.
An exited process counts as gone even while its parent has not reaped it.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Final

# Polling interval bounds (seconds) where pidfds are missing.
_POLL_FIRST: Final = 0.001
_POLL_MOST: Final = 0.05


def _title(cmdline: list[str] | None) -> str:
    """A process's title: the first word of its command line ('' if none)."""
    words = cmdline[0].split() if cmdline else []
    return words[0] if words else ""


def kill_titled(processes: list[Any], title: str) -> bool:
    """SIGKILL those of ``processes`` whose title is still ``title``; whether any was.

    The title is read again first: a worker that has moved on (retitled, or
    gone) is left alone.
    """
    import psutil

    killed = False
    for process in processes:
        try:
            if _title(process.cmdline()) == title:
                process.kill()  # psutil refuses a pid reused since ``process`` was found
                killed = True
        except psutil.Error:
            continue
    return killed


def wait_exited(processes: list[Any], timeout: float) -> list[Any]:
    """Wait until every one of ``processes`` (``psutil.Process``) has exited.

    Returns:
        Those still running after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    return [p for p in processes if not _wait_one(p, deadline - time.monotonic())]


def _wait_one(process: Any, timeout: float) -> bool:
    """Whether ``process`` exited within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(process.pid)  # type: ignore[attr-defined,unused-ignore]
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfds here: poll
        return _poll_exit(process, timeout)
    try:
        if not _running(process):  # the pid was reused after ``process`` was found
            return True
        readable, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        return bool(readable)
    finally:
        os.close(fd)


def _poll_exit(process: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = _POLL_FIRST
    while _running(process):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))  # no exit notification for a non-child here
        pause = min(pause * 2, _POLL_MOST)
    return True


def _running(process: Any) -> bool:
    """Whether ``process`` is alive: not gone, not exited awaiting its parent."""
    import psutil

    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
