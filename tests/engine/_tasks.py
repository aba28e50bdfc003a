"""Small tasks the engine's state tests build graphs from; the cluster tests run some."""

from __future__ import annotations

from daglite import task


@task
def source(n: int) -> int:
    return n


@task
def inc(x: int) -> int:
    return x + 1


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def total(xs: list[int]) -> int:
    return sum(xs)
