"""Who gets to a Ray task first: the worker starting it, or the caller stopping it.

On a cluster whose nodes all run on this machine, each task has a claim file,
``<directory>/<task key>``, made once and atomically (``link`` fails if the
name exists):

- the worker, as it starts the task, makes it holding its pid, then runs the
  task; finding the file already there, it returns without running anything;
- the caller, to stop the task, makes it empty; finding it already there, it
  reads the pid of the worker running the task, and kills that process.

So a task is stopped either before it starts or by killing its worker, never
through ``ray.cancel``, which can abort the caller when it races a task
being handed to its worker (Ray 2.60: "Tried to complete task that was not
pending"). A worker that cannot use the directory runs its task as if
unclaimed; the caller notices (no claim for a task that ran) and stops using
claims.
"""

from __future__ import annotations

import os


def claim(directory: str, key: str) -> bool:
    """Claim task ``key`` for this worker process; False if the caller stopped it first.

    A directory this worker cannot use (not there, not writable) claims
    nothing and stops nothing: the task runs, and the caller, finding no
    claim once it is over, stops using claims.
    """
    path = os.path.join(directory, key)
    draft = f"{path}.{os.getpid()}"
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        try:
            os.link(draft, path)  # atomic, complete: the pid is written already
        finally:
            os.unlink(draft)
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def stop_or_find(directory: str, key: str) -> int | None:
    """Keep task ``key`` from starting; if it has started, the pid of its worker.

    Returns:
        None if the task will not run (stopped before its worker claimed it),
        else the pid of the worker process that claimed it.
    """
    path = os.path.join(directory, key)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as file:
            pid = file.read()
        return int(pid) if pid else None  # empty: stopped already
    os.close(fd)
    return None


def forget(directory: str, key: str) -> bool:
    """Remove task ``key``'s claim file (the task is over); whether there was one."""
    try:
        os.unlink(os.path.join(directory, key))
    except OSError:  # none, or the directory is gone
        return False
    return True
