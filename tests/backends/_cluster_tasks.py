"""Tasks, a payload type and a plugin the cluster tests share (Dask, Ray, submit-ahead).

Module level, so that worker processes import the tasks by reference.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from tests.engine._tasks import double, inc, total

from daglite import task
from daglite.plugins.hooks import hook_impl

__all__ = [
    "UNPICKLED",
    "Blob",
    "Order",
    "die",
    "die_at",
    "double",
    "explode",
    "flaky",
    "inc",
    "stuck",
    "total",
    "where",
]

# Sizes of ``Blob`` s unpickled in this process: a test clears it, runs, and
# reads whether a payload reached the caller.
UNPICKLED: list[int] = []


def _rebuild_blob(data: bytes) -> Blob:
    UNPICKLED.append(len(data))
    return Blob(data)


class Blob(bytes):
    """Bytes that count their unpickling in ``UNPICKLED``."""

    def __reduce__(self):
        return (_rebuild_blob, (bytes(self),))


@task
def where(x: int) -> int:
    return os.getpid()


@task
def explode(x: int) -> int:
    raise ValueError(f"boom {x}")


@task
def die() -> int:
    os._exit(1)


@task
def die_at(i: int, fatal: int) -> int:
    if i == fatal:
        os._exit(1)
    return i


@task
def flaky(directory: str) -> int:
    """Fails on its first two attempts (counted in ``directory``), then succeeds."""
    attempt = len(os.listdir(directory))
    open(os.path.join(directory, str(attempt)), "w").close()
    if attempt < 2:
        raise ValueError(f"attempt {attempt} fails")
    return attempt


@task(timeout=1.0)
def stuck(gate) -> int:
    gate.wait(120)  # blocks until the test opens the gate: only the timeout stops it
    return 0


class Order:
    """What the hooks saw, in the order they saw it, and where they ran."""

    def __init__(self) -> None:
        self.order: list[tuple[str, str]] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.results: dict[str, Any] = {}
        self.errors: list[BaseException] = []
        self.places: set[tuple[int, int]] = set()

    @hook_impl
    def before_node_execute(self, key, inputs) -> None:
        self.order.append(("before", key))
        self.inputs[key] = dict(inputs)
        self.places.add((os.getpid(), threading.get_ident()))

    @hook_impl
    def after_node_execute(self, key, result) -> None:
        self.order.append(("after", key))
        self.results[key] = result
        self.places.add((os.getpid(), threading.get_ident()))

    @hook_impl
    def on_node_error(self, key, error) -> None:
        self.errors.append(error)
