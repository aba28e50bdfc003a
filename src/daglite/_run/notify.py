"""Hooks and events of a run, called on the engine thread only.

Every node hook and every event handler call of a run goes through here:
plugins see one call at a time, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from daglite._job import shared
from daglite._run.unit import At, _Unit
from daglite.graph.base import Graph
from daglite.plugins import log_bridge
from daglite.plugins.manager import HookDispatcher
from daglite.plugins.reporters import (
    DROPPED_EVENT,
    LOG_EVENT,
    START_EVENT,
    EventRegistry,
    _CallerReporter,
)
from daglite.settings import strict_plugins

logger = logging.getLogger("daglite")

# The arguments of ``after_node_execute`` in the order ``_after_hook`` passes
# them: the hook fires once per task, so it is called positionally
# (``HookDispatcher.caller``), not with a keyword dict per call.
AFTER_ARGS: Final = (
    "key",
    "metadata",
    "inputs",
    "reporter",
    "result",
    "duration",
    "started",
    "worker",
)


class _Notifying:
    """The hooks-and-events part of ``_Run``."""

    # What this part uses of the run (set up by ``_Run.__init__``).
    _any_shared: bool
    _call_after: Callable[..., None]
    _has_before: bool
    _sees_inputs: bool
    _sees_result: bool
    graph: Graph
    hooks: HookDispatcher
    registry: EventRegistry
    reporter: _CallerReporter

    def _deliver(self, unit: _Unit, events: list[tuple[str, dict[str, Any]]]) -> None:
        for event_type, data in events:
            if event_type == START_EVENT:
                self._node_started(unit)
            elif event_type == LOG_EVENT:
                log_bridge.emit_in_caller(data)
            elif event_type == DROPPED_EVENT:
                logger.warning(
                    "event %r from task %r (key %r) could not be pickled and was dropped: %s",
                    data.get("event_type"),
                    unit.task.name,
                    unit.key,
                    data.get("reason"),
                )
            else:
                self._dispatch_event(event_type, data, unit.key)

    def _dispatch_event(self, event_type: str, data: dict[str, Any], key: str | None) -> None:
        handlers = self.registry.handlers(event_type)
        if not handlers:
            return
        event = {**data, "type": event_type}
        if key is not None:
            event["key"] = key
        for handler in handlers:
            try:
                handler(event)
            except Exception:
                if strict_plugins():
                    raise
                logger.exception(
                    "event handler %r for %r raised; the run goes on", handler, event_type
                )

    def _node_started(self, unit: _Unit) -> None:
        if unit.started:
            return
        unit.started = True
        if self._has_before:
            self._unit_hook("before_node_execute", unit)

    def _node_hook(self, name: str, i: int, e: int, inputs: dict[str, Any], **extra: Any) -> None:
        """Call hook ``name`` for element ``e`` of node ``i`` (-1: the node itself)."""
        if self._any_shared:
            inputs = self._values_for_hooks(inputs, extra)
        self.hooks.call(
            name,
            key=self.key_of(i, e),
            metadata=self.graph.metadata[i],
            inputs=inputs,
            reporter=self.reporter,
            **extra,
        )

    def _after_hook(
        self, i: int, e: int, inputs: dict[str, Any], result: Any, duration: float, at: At
    ) -> None:
        """``after_node_execute`` of element ``e`` of node ``i`` (-1: the node itself)."""
        if self._any_shared:
            if self._sees_inputs:
                inputs = shared.resolve_all(inputs)
            if self._sees_result:
                result = shared.resolve(result)
        self._call_after(
            self.key_of(i, e),
            self.graph.metadata[i],
            inputs,
            self.reporter,
            result,
            duration,
            at[0],
            at[1],
        )

    def _unit_hook(self, name: str, unit: _Unit, **extra: Any) -> None:
        """Call hook ``name`` for the call ``unit``."""
        inputs = unit.kwargs
        if self._any_shared:
            inputs = self._values_for_hooks(inputs, extra)
        self.hooks.call(
            name,
            key=unit.key,
            metadata=unit.meta,
            inputs=inputs,
            reporter=self.reporter,
            **extra,
        )

    def _values_for_hooks(self, inputs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """Hooks see values, not shared-memory handles: resolve what they look at."""
        if self._sees_result and "result" in extra:
            extra["result"] = shared.resolve(extra["result"])
        return shared.resolve_all(inputs) if self._sees_inputs else inputs

    def key_of(self, node: int, elem: int) -> str:
        """Key of node ``node``, or of its element ``elem`` (``name[elem]``) if >= 0."""
        key = self.graph.keys[node]
        return key if elem < 0 else f"{key}[{elem}]"
