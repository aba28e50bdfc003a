"""Plugin registration and the per-evaluation hook dispatcher.

Global plugins live in one ``pluggy.PluginManager``; plugins published through
the ``daglite.hooks`` entry-point group are loaded into it once per process, on
first use. ``evaluate(..., plugins=[...])`` adds plugins for one evaluation
only. ``HookDispatcher`` calls each implementation on its own, so a hook that
raises is logged (once, with plugin and hook named) without skipping the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, final

import pluggy

from daglite.plugins.hooks import specs
from daglite.plugins.hooks.markers import PROJECT_NAME
from daglite.settings import strict_plugins

__all__ = [
    "ENTRY_POINT_GROUP",
    "HookDispatcher",
    "get_plugin_manager",
    "register_plugins",
    "unregister_plugins",
]

ENTRY_POINT_GROUP = "daglite.hooks"
logger = logging.getLogger("daglite.plugins")

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_entry_points_loaded = False
# Bumped on every change to the global plugins, so cached dispatchers know to rebuild.
_generation = 0


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(specs.NodeSpecs)
    pm.add_hookspecs(specs.GraphSpecs)
    return pm


def _check_plugin(plugin: object) -> None:
    if isinstance(plugin, type):
        raise TypeError(
            f"register a plugin instance, not the class {plugin.__name__!r}; "
            f"did you mean {plugin.__name__}()?"
        )


def _register(pm: pluggy.PluginManager, plugin: object) -> None:
    """Register one plugin, rejecting unknown hook names at once."""
    _check_plugin(plugin)
    if pm.is_registered(plugin):
        return
    pm.register(plugin)
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.spec is None:
            pm.unregister(plugin)
            known = sorted(n for n in dir(pm.hook) if not n.startswith("_"))
            raise pluggy.PluginValidationError(
                plugin,
                f"unknown hook {caller.name!r} in plugin {type(plugin).__name__!r}; "
                f"daglite's hooks are: {', '.join(known)}",
            )


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every plugin of the ``daglite.hooks`` group (classes are instantiated)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        plugin = obj() if isinstance(obj, type) else obj
        if pm.get_plugin(ep.name) is None and not pm.is_registered(plugin):
            pm.register(plugin, name=ep.name)


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with entry-point plugins loaded."""
    global _manager, _entry_points_loaded, _generation
    with _lock:
        if _manager is None:
            _manager = _new_manager()
        if not _entry_points_loaded:
            _entry_points_loaded = True
            _load_entry_points(_manager)
            _generation += 1
        return _manager


def register_plugins(*plugins: object) -> None:
    """Register plugins for every later evaluation in this process.

    Raises:
        TypeError: If a class is passed instead of an instance.
        pluggy.PluginValidationError: If a hook name or parameter is misspelled.
    """
    global _generation
    with _lock:
        pm = get_plugin_manager()
        for plugin in plugins:
            _register(pm, plugin)
        _generation += 1


def unregister_plugins(*plugins: object) -> None:
    """Remove plugins registered with ``register_plugins``; unknown ones are ignored."""
    global _generation
    with _lock:
        pm = get_plugin_manager()
        for plugin in plugins:
            if pm.is_registered(plugin):
                pm.unregister(plugin)
        _generation += 1


_HookImpl = tuple[str, Callable[..., Any], tuple[str, ...]]


@final
class HookDispatcher:
    """Calls hooks for one evaluation, each implementation on its own.

    Attributes:
        plugins: Every plugin active for the evaluation, global ones first.
    """

    __slots__ = ("_failures", "_impls", "_pm", "plugins")

    def __init__(
        self,
        pm: pluggy.PluginManager,
        plugins: list[object],
        impls: dict[str, list[_HookImpl]] | None = None,
    ) -> None:
        self._pm: Final = pm
        self.plugins: Final = plugins
        self._impls: dict[str, list[_HookImpl]] = {} if impls is None else impls
        self._failures: dict[tuple[str, str], int] = {}
        if impls is not None:
            return
        for name in dir(pm.hook):
            if name.startswith("_"):
                continue
            caller = getattr(pm.hook, name)
            impls_of = caller.get_hookimpls()
            if impls_of:
                # pluggy calls the last registered (and tryfirst) implementations first.
                self._impls[name] = [
                    (_display_name(impl), impl.function, tuple(impl.argnames))
                    for impl in reversed(impls_of)
                ]

    def for_run(self) -> HookDispatcher:
        """A copy for one evaluation: same implementations, its own failure counts."""
        return HookDispatcher(self._pm, self.plugins, self._impls)

    def has(self, hook: str) -> bool:
        """Whether any plugin implements ``hook``."""
        return hook in self._impls

    def call(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of ``hook``; failures are logged, not raised."""
        for plugin_name, func, argnames in self._impls.get(hook, ()):
            try:
                func(*[kwargs[a] for a in argnames])
            except Exception:
                self._hook_failed(plugin_name, hook)

    def first_result(self, hook: str, **kwargs: Any) -> Any:
        """Call implementations until one returns something other than None."""
        for plugin_name, func, argnames in self._impls.get(hook, ()):
            try:
                result = func(*[kwargs[a] for a in argnames])
            except Exception:
                self._hook_failed(plugin_name, hook)
                continue
            if result is not None:
                return result
        return None

    def _hook_failed(self, plugin_name: str, hook: str) -> None:
        if strict_plugins():
            raise
        count = self._failures.get((plugin_name, hook), 0) + 1
        self._failures[(plugin_name, hook)] = count
        if count == 1:
            logger.exception("plugin %r raised in hook %r; the run goes on", plugin_name, hook)

    def report_failures(self) -> None:
        """Log how often each failing hook raised, after the first logged time."""
        for (plugin_name, hook), count in self._failures.items():
            if count > 1:
                logger.warning(
                    "plugin %r raised in hook %r %d times in this evaluation",
                    plugin_name,
                    hook,
                    count,
                )


def _display_name(impl: Any) -> str:
    """The plugin's registered name, or its class name when pluggy made one up."""
    name = str(impl.plugin_name)
    return type(impl.plugin).__qualname__ if name.isdigit() else name


_cached: tuple[int, HookDispatcher] | None = None


def dispatcher_for(extra: Iterable[object] | None) -> HookDispatcher:
    """The dispatcher for one evaluation: global plugins plus ``extra``.

    Raises:
        TypeError: If a class is passed instead of an instance.
    """
    global _cached
    extra = list(extra or ())
    with _lock:
        pm = get_plugin_manager()
        if not extra:
            if _cached is None or _cached[0] != _generation:
                _cached = (_generation, HookDispatcher(pm, _plugins_of(pm)))
            return _cached[1]
        local = _new_manager()
        for plugin in _plugins_of(pm):
            local.register(plugin, name=pm.get_name(plugin))
        for plugin in extra:
            _register(local, plugin)
        return HookDispatcher(local, _plugins_of(local))


def _plugins_of(pm: pluggy.PluginManager) -> list[object]:
    return [p for _, p in pm.list_name_plugin()]
