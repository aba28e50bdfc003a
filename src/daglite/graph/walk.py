"""The one walk over containers of values: lists, tuples, dicts, sets, namedtuples.

Every place that looks inside task arguments for something (futures while
building the graph, futures to fill in with results at run time, Dask
stand-ins of results kept on the cluster) goes through these two functions, so
they agree on what a container is and how one is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final, TypeVar

__all__ = ["CONTAINERS", "find", "replace"]

T = TypeVar("T")

# What is looked inside. Dict keys are never walked, only values.
CONTAINERS: Final = (list, tuple, dict, set, frozenset)


def find(value: Any, kind: type[T]) -> Iterator[T]:
    """Yield every instance of ``kind`` in ``value``, looking inside containers.

    Depth first, in container order (dicts by value). A container whose items
    are all of other types is skipped after one pass at C speed.
    """
    if isinstance(value, kind):
        yield value
        return
    if not isinstance(value, CONTAINERS):
        return
    scanned = (kind, *CONTAINERS)
    stack = [value]
    while stack:
        item = stack.pop()
        values = item.values() if isinstance(item, dict) else item
        if not any(issubclass(t, scanned) for t in set(map(type, values))):
            continue
        for v in values:
            if isinstance(v, kind):
                yield v
            elif isinstance(v, CONTAINERS):
                stack.append(v)


def replace(value: Any, kind: type[T], swap: Callable[[T], Any]) -> Any:
    """``value`` with each instance of ``kind`` replaced by ``swap(instance)``.

    Containers are rebuilt with their own type (namedtuples field by field,
    dicts as plain dicts); a container holding nothing to replace is returned
    as it is, not copied.
    """
    if isinstance(value, kind):
        return swap(value)
    if not isinstance(value, CONTAINERS):
        return value
    values = value.values() if isinstance(value, dict) else value
    items = [
        swap(v)
        if isinstance(v, kind)
        else replace(v, kind, swap)
        if isinstance(v, CONTAINERS)
        else v
        for v in values
    ]
    if all(new is old for new, old in zip(items, values)):
        return value
    if isinstance(value, dict):
        return dict(zip(value, items))
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*items)
    return type(value)(items)
