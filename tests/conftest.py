"""Shared fixtures: a backend parametrised by name, and clean global plugin state."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from daglite.plugins import manager

# Backends every contract test runs on. "dask" joins when distributed is installed;
# CI installs every extra, and DAGLITE_REQUIRE_ALL_BACKENDS=1 turns a missing one
# into a failure instead of a silent narrowing.
BACKENDS = ["inline", "threads", "processes"]
HAS_DASK = importlib.util.find_spec("distributed") is not None
if HAS_DASK:
    BACKENDS.append("dask")
elif os.environ.get("DAGLITE_REQUIRE_ALL_BACKENDS") == "1":
    raise RuntimeError("DAGLITE_REQUIRE_ALL_BACKENDS=1 but 'distributed' is not installed")
HAS_RAY = importlib.util.find_spec("ray") is not None
if HAS_RAY:
    BACKENDS.append("ray")
    # Before anything imports ray, which reads them once (see ``ray_address``).
    from tests.backends._ray_head import connect_env

    RAY_CONNECT_ENV = connect_env()
    os.environ.update(RAY_CONNECT_ENV)
elif os.environ.get("DAGLITE_REQUIRE_ALL_BACKENDS") == "1":
    raise RuntimeError("DAGLITE_REQUIRE_ALL_BACKENDS=1 but 'ray' is not installed")


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Address of a Ray head node of this test process (each xdist worker has its own).

    Started once per session as a separate process (``ray start --head``), and
    set as ``DAGLITE_RAY_ADDRESS``, so ``backend="ray"`` connects to it.
    """
    from tests.backends._ray_head import RayHead

    head = RayHead(RAY_CONNECT_ENV)
    os.environ["DAGLITE_RAY_ADDRESS"] = head.address
    try:
        yield head.address
    finally:
        _disconnect_ray()
        os.environ.pop("DAGLITE_RAY_ADDRESS", None)
        head.stop()


def _disconnect_ray() -> None:
    """Stop the shared ray backends and the driver's connection before the head goes."""
    import ray

    from daglite import backends

    with backends._lock:
        found = [(k, b) for k, b in backends._instances.items() if k[0] == "ray"]
        for key, _ in found:
            del backends._instances[key]
    for _, b in found:
        b.shutdown()
    if ray.is_initialized():
        ray.shutdown()


def _named_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_address")
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of a built-in backend; every test using it runs once per backend."""
    return _named_backend(request)


@pytest.fixture(params=[b for b in BACKENDS if b != "inline"])
def concurrent_backend(request: pytest.FixtureRequest) -> str:
    """Name of a built-in backend that runs tasks off the calling thread."""
    return _named_backend(request)


@pytest.fixture(params=[b for b in BACKENDS if b not in ("inline", "threads")])
def process_backend(request: pytest.FixtureRequest) -> str:
    """Name of a built-in backend that runs tasks in other processes (values are pickled)."""
    return _named_backend(request)


@pytest.fixture(autouse=True)
def _clean_global_plugins():
    """Each test starts and ends with no globally registered plugins."""
    pm = manager.get_plugin_manager()
    before = {id(p) for _, p in pm.list_name_plugin()}
    yield
    extra = [p for _, p in pm.list_name_plugin() if id(p) not in before]
    if extra:
        manager.unregister_plugins(*extra)


@pytest.fixture(autouse=True)
def _private_cache_key(tmp_path_factory, monkeypatch):
    """The cache's secret key and default directory live in a temporary directory."""
    home = tmp_path_factory.getbasetemp() / "daglite-cache-home"
    monkeypatch.setenv("DAGLITE_CACHE_KEY_FILE", str(home / "config" / "cache-key"))
    monkeypatch.setenv("DAGLITE_CACHE_DIR", str(home / "cache"))
