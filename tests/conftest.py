"""Shared fixtures: a backend parametrised by name, and clean global plugin state."""

from __future__ import annotations

import importlib.util
import os

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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of a built-in backend; every test using it runs once per backend."""
    return request.param


@pytest.fixture(params=[b for b in BACKENDS if b != "inline"])
def concurrent_backend(request: pytest.FixtureRequest) -> str:
    """Name of a built-in backend that runs tasks off the calling thread."""
    return request.param


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
