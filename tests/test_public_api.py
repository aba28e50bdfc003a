"""The public surface: ``__all__``, error hierarchy, and a light ``import daglite``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import daglite
from daglite import exceptions

ERRORS = [
    "BackendError",
    "DagliteError",
    "EvaluationError",
    "GraphError",
    "TaskError",
    "TaskTimeoutError",
    "WorkerLostError",
]


def test_all_is_sorted_and_unique():
    assert daglite.__all__ == sorted(daglite.__all__)
    assert len(set(daglite.__all__)) == len(daglite.__all__)


def test_every_name_in_all_is_importable():
    for name in daglite.__all__:
        assert getattr(daglite, name) is not None, name


def test_all_is_complete():
    # Every public class or function daglite defines and puts in its namespace.
    public = {
        name
        for name, value in vars(daglite).items()
        if not name.startswith("_")
        and callable(value)
        and getattr(value, "__module__", "").startswith("daglite")
    }
    assert public <= set(daglite.__all__)
    for name in ("task", "evaluate", "evaluate_async", "Task", "TaskFuture", *ERRORS):
        assert name in daglite.__all__


def test_version_is_a_string():
    assert isinstance(daglite.__version__, str)
    with pytest.raises(AttributeError, match="no_such_name"):
        daglite.no_such_name  # noqa: B018


@pytest.mark.parametrize("name", ERRORS)
def test_errors_live_in_exceptions_and_are_reexported(name):
    assert name in exceptions.__all__
    assert getattr(daglite, name) is getattr(exceptions, name)
    assert issubclass(getattr(exceptions, name), exceptions.DagliteError)


def test_error_hierarchy():
    assert issubclass(exceptions.DagliteError, Exception)
    assert issubclass(exceptions.TaskTimeoutError, exceptions.TaskError)
    assert issubclass(exceptions.WorkerLostError, exceptions.TaskError)
    assert issubclass(exceptions.GraphError, ValueError)
    assert issubclass(exceptions.BackendError, RuntimeError)
    assert not issubclass(exceptions.EvaluationError, exceptions.TaskError)
    assert issubclass(exceptions.DagliteWarning, UserWarning)


def test_task_error_carries_name_key_and_original_through_pickle():
    import pickle

    original = KeyError("missing")
    err = exceptions.TaskTimeoutError("timed out", task_name="load", key="load[2]", error=original)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is exceptions.TaskTimeoutError
    assert (back.task_name, back.key, str(back)) == ("load", "load[2]", "timed out")
    assert isinstance(back.error, KeyError)


def test_public_classes_show_the_public_module():
    for name in ("Task", "TaskFuture", *ERRORS):
        assert getattr(daglite, name).__module__ == "daglite", name


_HEAVY = [
    "distributed",
    "dask",
    "cloudpickle",
    "concurrent.futures.process",
    "daglite.backends.inline",
    "daglite.backends.threads",
    "daglite.backends.processes",
    "daglite.backends.dask",
]


def test_import_daglite_stays_light():
    code = (
        "import json, sys; import daglite; "
        f"print(json.dumps([m for m in {_HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
