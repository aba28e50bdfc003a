"""What plugin authors import: ``hook_impl``, ``hook_spec`` and ``CachedResult``."""

from __future__ import annotations

from typing import Any, Final, final

from daglite.plugins.hooks.markers import hook_impl, hook_spec

__all__ = ["CachedResult", "hook_impl", "hook_spec"]


@final
class CachedResult:
    """A result supplied by ``lookup_node_result``: the node is not run.

    Wrapping the value lets a cached ``None`` be told apart from "no result".
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value: Final = value

    def __repr__(self) -> str:
        return f"CachedResult({self.value!r})"
