"""Plugin registration and the per-evaluation hook dispatcher.

Global plugins live in one ``pluggy.PluginManager``; plugins published through
the ``daglite.hooks`` entry-point group are loaded into it once per process, on
first use. ``evaluate(..., plugins=[...])`` adds plugins for one evaluation
only. ``HookDispatcher`` calls each implementation on its own, so a hook that
raises is logged (once, with plugin and hook named) without skipping the others;
wrappers and ordering follow pluggy (``_calls.py``).
"""

from __future__ import annotations

import logging
import operator
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final, final

import pluggy

from daglite.plugins._calls import _Chain, _Impl, impl_entry
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
    try:
        pm.register(plugin)
    except pluggy.PluginValidationError:
        # pluggy before 1.4 leaves the rejected plugin half registered.
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise
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


_Table = tuple[dict[str, list[_Impl]], dict[str, _Chain]]


@final
class HookDispatcher:
    """Calls hooks for one evaluation, each implementation on its own.

    A hook with a wrapper is one entry of the table: its ``_Chain``
    (``_calls.py``), which keeps pluggy's wrapper protocol and order. So the
    loop below is the same for every hook, and costs nothing more for hooks
    with plain implementations only.

    Attributes:
        plugins: Every plugin active for the evaluation, global ones first.
    """

    __slots__ = ("_failures", "_impls", "_pm", "_table", "plugins")

    def __init__(
        self, pm: pluggy.PluginManager, plugins: list[object], table: _Table | None = None
    ) -> None:
        self._pm: Final = pm
        self.plugins: Final = plugins
        self._table: Final = _implementations(pm) if table is None else table
        plain, chains = self._table
        self._impls = plain
        if chains:  # the chains report failures to this dispatcher's counts
            self._impls = {**plain, **{h: [self._chain_entry(h, c)] for h, c in chains.items()}}
        self._failures: dict[tuple[str, str], int] = {}

    def for_run(self) -> HookDispatcher:
        """A copy for one evaluation: same implementations, its own failure counts."""
        return HookDispatcher(self._pm, self.plugins, self._table)

    def takes(self, hook: str, param: str) -> bool:
        """Whether any implementation of ``hook`` declares the parameter ``param``.

        For arguments that cost something to make (the graph's description):
        the engine makes them only when somebody asked for them.
        """
        caller = getattr(self._pm.hook, hook, None)
        impls = caller.get_hookimpls() if caller is not None else ()
        return any(param in impl.argnames or param in impl.kwargnames for impl in impls)

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

    def caller(self, hook: str, names: tuple[str, ...]) -> Callable[..., None]:
        """A function that calls ``hook`` with the arguments ``names``, given positionally.

        For the hooks the engine calls once per task: each implementation's
        arguments are picked from the positional ones by an ``itemgetter`` made
        here, once, instead of from a keyword dict made per call (~0.3 µs
        against ~0.9 µs a call). Failures are handled as by ``call``.

        Raises:
            ValueError: If an implementation takes an argument ``names`` lacks.
        """
        entries = [
            (plugin_name, func, _picker(hook, argnames, names))
            for plugin_name, func, argnames in self._impls.get(hook, ())
        ]

        def call(*args: Any) -> None:
            for plugin_name, func, pick in entries:
                try:
                    func(*pick(args))
                except Exception:
                    self._hook_failed(plugin_name, hook)

        return call

    def first_result(self, hook: str, **kwargs: Any) -> Any:
        """Call implementations until one returns something other than None.

        Wrappers of the hook see that result and may change it, as in pluggy.
        """
        for plugin_name, func, argnames in self._impls.get(hook, ()):
            try:
                result = func(*[kwargs[a] for a in argnames])
            except Exception:
                self._hook_failed(plugin_name, hook)
                continue
            if result is not None:
                return result
        return None

    def _chain_entry(self, hook: str, chain: _Chain) -> _Impl:
        """The table entry of a hook with wrappers: its chain, given every spec argument."""
        names = chain.spec_args

        def failed(plugin_name: str, exc: BaseException) -> None:
            self._count_failure(plugin_name, hook, exc)

        def run(*values: Any) -> Any:
            return chain.run(dict(zip(names, values)), failed, strict_plugins)

        return chain.name, run, names

    def _hook_failed(self, plugin_name: str, hook: str) -> None:
        """Called in an ``except`` block: re-raise in strict mode, else count and log."""
        if strict_plugins():
            raise
        self._count_failure(plugin_name, hook, sys.exc_info()[1])

    def _count_failure(self, plugin_name: str, hook: str, exc: BaseException | None) -> None:
        """Count a failure; the first of each plugin and hook is logged with its traceback."""
        count = self._failures.get((plugin_name, hook), 0) + 1
        self._failures[(plugin_name, hook)] = count
        if count == 1:
            logger.error(
                "plugin %r raised in hook %r; the run goes on", plugin_name, hook, exc_info=exc
            )

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


def _implementations(pm: pluggy.PluginManager) -> _Table:
    """Per hook, its plain implementations in call order, or its chain if it has wrappers."""
    plain: dict[str, list[_Impl]] = {}
    chains: dict[str, _Chain] = {}
    for name in dir(pm.hook):
        if name.startswith("_"):
            continue
        caller = getattr(pm.hook, name)
        # pluggy calls the list from its end: wrappers, then the rest; tryfirst first.
        impls = list(reversed(caller.get_hookimpls()))
        if not impls:
            continue
        spec = caller.spec
        spec_args = tuple(spec.argnames) if spec is not None else ()
        entries = [impl_entry(_display_name(impl), impl, spec_args) for impl in impls]
        wrappers = [(*e, bool(i.hookwrapper)) for e, i in zip(entries, impls) if _wraps(i)]
        if not wrappers:
            plain[name] = entries
            continue
        others = [e for e, i in zip(entries, impls) if not _wraps(i)]
        firstresult = bool(spec is not None and spec.opts.get("firstresult"))
        chains[name] = _Chain(wrappers, others, firstresult, spec_args)
    return plain, chains


def _picker(
    hook: str, argnames: tuple[str, ...], names: tuple[str, ...]
) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """Picks the values of ``argnames``, in order, from values given in the order of ``names``."""
    missing = [a for a in argnames if a not in names]
    if missing:
        raise ValueError(f"hook {hook!r} is called without {', '.join(map(repr, missing))}")
    at = [names.index(a) for a in argnames]
    if len(at) > 1:
        return operator.itemgetter(*at)
    if at:
        only = at[0]
        return lambda values: (values[only],)
    return lambda values: ()


def _wraps(impl: Any) -> bool:
    return bool(impl.wrapper or impl.hookwrapper)


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
