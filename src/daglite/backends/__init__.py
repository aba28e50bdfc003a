"""Backend registry: maps names to backends, importing each module on first use.

Built-in names: ``"inline"``, ``"threads"``, ``"processes"``, ``"dask"``, ``"ray"``, with
the aliases ``"sequential"``/``"synchronous"``, ``"threading"`` and
``"multiprocessing"``. Third-party backends register with ``register_backend``
or through the ``daglite.backends`` entry-point group.

Backend instances made from a name are cached per (name, options): started on
first use, reused by later evaluations, stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from daglite.backends.base import Backend
from daglite.exceptions import BackendError
from daglite.settings import default_backend_name

if TYPE_CHECKING:
    from daglite.backends.inline import InlineBackend
    from daglite.backends.processes import ProcessBackend
    from daglite.backends.threads import ThreadBackend
    from daglite.tasks import Task

__all__ = [
    "Backend",
    "InlineBackend",
    "ProcessBackend",
    "ThreadBackend",
    "available_backends",
    "get_backend",
    "register_backend",
]

ENTRY_POINT_GROUP = "daglite.backends"

_BUILTIN: dict[str, str] = {
    "inline": "daglite.backends.inline:InlineBackend",
    "threads": "daglite.backends.threads:ThreadBackend",
    "processes": "daglite.backends.processes:ProcessBackend",
    "dask": "daglite.backends.dask:DaskBackend",
    "ray": "daglite.backends.ray:RayBackend",
}
_ALIASES: dict[str, str] = {
    "sequential": "inline",
    "synchronous": "inline",
    "threading": "threads",
    "multiprocessing": "processes",
}
# Built-ins with an optional dependency: imported only when named.
_OPTIONAL: frozenset[str] = frozenset({"dask", "ray"})
_registry: dict[str, type[Backend] | str] = dict(_BUILTIN)
_instances: dict[tuple[str, tuple[tuple[str, Any], ...]], Backend] = {}
_lock = threading.RLock()
_entry_points_loaded = False


def __getattr__(name: str) -> Any:
    """Import backend classes lazily, so ``import daglite`` stays light."""
    for key, target in _BUILTIN.items():
        module, cls = target.split(":")
        if cls == name and key not in _OPTIONAL:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'daglite.backends' has no attribute {name!r}")


def register_backend(name: str, cls: type[Backend]) -> None:
    """Make ``cls`` available as ``evaluate(..., backend=name)``.

    Raises:
        TypeError: If ``cls`` is not a ``Backend`` subclass.
    """
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"register_backend() needs a Backend subclass, got {cls!r}")
    with _lock:
        _registry[name] = cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _registry.setdefault(ep.name, ep.value)


def available_backends() -> list[str]:
    """Names that ``evaluate(backend=...)`` accepts, aliases excluded."""
    with _lock:
        _load_entry_points()
        return sorted(_registry)


def _resolve_class(name: str) -> type[Backend]:
    target = _registry[name]
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise BackendError(f"backend {name!r} could not be imported: {exc}") from exc
        target = getattr(module, attr)
        assert isinstance(target, type)
        _registry[name] = target
    return target


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (aliases resolved).

    Raises:
        BackendError: If no backend has that name.
    """
    with _lock:
        _load_entry_points()
        real = _ALIASES.get(name, name)
        if real not in _registry:
            import difflib

            close = difflib.get_close_matches(name, list(_registry) + list(_ALIASES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BackendError(
                f"unknown backend {name!r}{hint} (available: {', '.join(available_backends())})"
            )
        return real


def backend_namer(backend: str | Backend | None) -> Callable[[Task[Any, Any]], str]:
    """The function that names the backend each task runs on, in a run on ``backend``.

    A task's own ``backend=`` option wins. Used by ``evaluate`` and
    ``describe`` alike, so they always agree.

    Raises:
        BackendError: If ``backend`` is an unknown name (a task's unknown
            backend name raises when that task is named).
    """
    if isinstance(backend, Backend):
        default = type(backend).name
    else:
        default = canonical_name(backend or default_backend_name())

    def name_of(task: Task[Any, Any]) -> str:
        chosen = task.backend
        if isinstance(chosen, str):
            return canonical_name(chosen)
        if isinstance(chosen, Backend):
            return type(chosen).name
        return default

    return name_of


def get_backend(name: str, **options: Any) -> Backend:
    """The shared, lazily started backend for ``name`` and ``options``.

    Raises:
        BackendError: If the name is unknown or its optional dependency is missing.
    """
    real = canonical_name(name)
    key = (real, tuple(sorted(options.items())))
    with _lock:
        backend = _instances.get(key)
        if backend is None:
            cls = _resolve_class(real)
            try:
                backend = cls(**options)
            except TypeError as exc:
                raise TypeError(f"backend {real!r} does not accept these options: {exc}") from exc
            _instances[key] = backend
        return backend


@atexit.register
def _stop_all() -> None:
    """Stop every shared backend at interpreter exit."""
    with _lock:
        backends = list(_instances.values())
        _instances.clear()
    for backend in backends:
        try:
            backend.shutdown()
        except Exception:  # exiting anyway
            pass
