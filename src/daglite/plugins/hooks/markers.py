"""The pluggy markers: ``hook_impl`` for plugin authors, ``hook_spec`` for daglite."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "hook_impl", "hook_spec"]

PROJECT_NAME = "daglite"

hook_spec = pluggy.HookspecMarker(PROJECT_NAME)
hook_impl = pluggy.HookimplMarker(PROJECT_NAME)
