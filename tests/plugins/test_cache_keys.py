"""Cache keys follow the code (issue 16): what invalidates an entry and what does not."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from daglite import evaluate, task
from daglite.plugins.builtin import CachePlugin
from daglite.plugins.builtin._cache_code import _code_digest, _CodeHasher, _CodeMemo
from daglite.plugins.builtin._cache_code import _library_of_module as library_of
from daglite.plugins.builtin._cache_values import _Unhashable
from daglite.plugins.hooks import hook_impl

_names = itertools.count()

BASE = '''
import json

from daglite import task

RATE = 3


def helper(x):
    return x + 1


def unused(x):
    return x - 1


@task
def compute(x: int) -> int:
    """Uses a helper and a module constant."""
    return helper(x) * RATE


@task
def plain(x: int) -> int:
    return x * 2
'''


def load(tmp_path: Path, source: str, **files: str):
    """Import ``source`` as a fresh module (and ``files`` beside it) from ``tmp_path``."""
    folder = tmp_path / f"mods{next(_names)}"
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))
    name = f"cachekeys_{next(_names)}"
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        for extra in files:
            sys.modules.pop(extra, None)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def code(obj) -> str:
    return _code_digest(obj, _CodeMemo()).hex()


def value(obj) -> str:
    hasher = _CodeHasher()
    hasher.feed(obj)
    return hasher.digest().hex()


# -- code -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("return helper(x) * RATE", "return helper(x) * RATE + 1"),  # the task's body
        ("    return x + 1\n", "    return x + 2\n"),  # a helper it calls
        ("RATE = 3", "RATE = 4"),  # a module constant it reads
        ("def unused(x):", "helper = lambda x: x\n\n\ndef unused(x):"),  # rebinding a helper
    ],
)
def test_editing_the_task_or_what_it_reaches_changes_its_key(tmp_path, old, new):
    before = load(tmp_path, BASE)
    after = load(tmp_path, BASE.replace(old, new, 1))
    assert code(before.compute) != code(after.compute)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("def helper(x):\n", "def helper(x):\n    # a comment\n\n"),
        lambda s: s.replace("import json\n", "import json\n\n\n\n# moved down\n"),
        lambda s: s.replace('"""Uses a helper and a module constant."""', '"""Other words."""'),
        # moving a function within its file
        lambda s: (
            s.replace("def unused(x):\n    return x - 1\n", "")
            + "\n\ndef unused(x):\n    return x - 1\n"
        ),
        lambda s: s.replace("def unused(x):\n    return x - 1", "def unused(x):\n    return 0"),
    ],
    ids=["comment", "blank-lines", "docstring", "moved", "unrelated-function"],
)
def test_comments_blank_lines_docstrings_and_moves_keep_the_key(tmp_path, edit):
    before = load(tmp_path, BASE)
    after = load(tmp_path, edit(BASE))
    assert code(before.compute) == code(after.compute)


def test_helper_in_another_user_module_is_followed(tmp_path):
    source = """
        import helpers
        from helpers import scale

        def compute(x):
            return helpers.offset(scale(x))
    """
    files = {"helpers": "def scale(x):\n    return 2 * x\n\ndef offset(x):\n    return x + 1\n"}
    base = code(load(tmp_path, source, **files).compute)
    for old, new in [("2 * x", "3 * x"), ("x + 1", "x + 5")]:
        edited = {"helpers": files["helpers"].replace(old, new)}
        assert code(load(tmp_path, source, **edited).compute) != base, old
    commented = {"helpers": "# new comment\n\n" + files["helpers"]}
    assert code(load(tmp_path, source, **commented).compute) == base


def test_closure_cells_defaults_and_nested_functions_are_followed():
    def make(factor, default=1):
        def inner(x, y=default):
            def nested(z):
                return z * factor

            return nested(x) + y

        return inner

    assert code(make(2)) == code(make(2))
    assert code(make(2)) != code(make(3))  # a closure cell's value
    assert code(make(2, default=1)) != code(make(2, default=5))  # a default argument


def test_classes_and_methods_the_code_uses_are_followed(tmp_path):
    source = """
        class Scaler:
            factor = 2

            def apply(self, x):
                return x * self.factor

        def compute(x):
            return Scaler().apply(x)
    """
    base = code(load(tmp_path, source).compute)
    assert code(load(tmp_path, source.replace("x * self", "x + self")).compute) != base
    assert code(load(tmp_path, source.replace("factor = 2", "factor = 3")).compute) != base


def test_instances_of_user_classes_as_inputs_follow_their_class(tmp_path):
    source = """
        class Point:
            def __init__(self, x):
                self.x = x

            def norm(self):
                return abs(self.x)
    """
    a = load(tmp_path, source).Point(1)
    b = load(tmp_path, source).Point(1)
    c = load(tmp_path, source.replace("abs(self.x)", "self.x * self.x")).Point(1)
    assert value(a) == value(b)
    assert value(a) != value(c)


def test_recursive_and_mutually_recursive_helpers_hash(tmp_path):
    source = """
        def even(n):
            return True if n == 0 else odd(n - 1)

        def odd(n):
            return False if n == 0 else even(n - 1)

        def compute(n):
            return even(n)
    """
    base = load(tmp_path, source)
    assert code(base.compute) == code(load(tmp_path, source).compute)
    memo = _CodeMemo()  # odd hashed first, then compute: odd's memo must not hide even
    _code_digest(base.odd, memo)
    edited = load(tmp_path, source.replace("even(n - 1)", "even(n - 1) and True"))
    memo2 = _CodeMemo()
    _code_digest(edited.odd, memo2)
    assert _code_digest(base.compute, memo) != _code_digest(edited.compute, memo2)


def test_library_code_counts_by_distribution_and_version(tmp_path):
    assert library_of("numpy") == f"numpy {np.__version__}"
    assert library_of("numpy.linalg") == f"numpy {np.__version__}"
    assert library_of("json").startswith("python ")
    assert library_of("json.decoder") == library_of("os")
    assert library_of("daglite.tasks").startswith("daglite ")
    module = load(tmp_path, BASE)
    assert library_of(module.__name__) is None  # the user's own code
    assert library_of("__main__") is None


def test_a_global_without_a_stable_digest_counts_by_type(tmp_path):
    source = """
        import threading
        LOCK = threading.Lock()

        def compute(x):
            with LOCK:
                return x
    """
    assert code(load(tmp_path, source).compute) == code(load(tmp_path, source).compute)


def test_editing_a_helper_invalidates_only_the_tasks_that_use_it(tmp_path):
    cache_dir = tmp_path / "cache"
    v1 = load(tmp_path, BASE)
    evaluate([v1.compute(1), v1.plain(1)], plugins=[CachePlugin(cache_dir)])
    v2 = load(tmp_path, BASE.replace("    return x + 1\n", "    return x + 10\n"))
    cache, ran = CachePlugin(cache_dir), Ran()
    assert evaluate([v2.compute(1), v2.plain(1)], plugins=[cache, ran]) == [33, 2]
    assert ran.keys == ["compute"]
    assert (cache.hits, cache.misses) == (1, 1)
    v3 = load(tmp_path, BASE.replace("def helper(x):\n", "def helper(x):\n    # note\n"))
    ran = Ran()
    assert evaluate([v3.compute(1), v3.plain(1)], plugins=[CachePlugin(cache_dir), ran]) == [6, 2]
    assert ran.keys == []


class Ran:
    """The keys of nodes that really ran (not served from the cache)."""

    def __init__(self):
        self.keys = []
        self.cached = []

    @hook_impl
    def after_node_execute(self, key, worker):
        (self.cached if worker == "cache" else self.keys).append(key)


STABILITY = """
import json, sys
sys.path.insert(0, {folder!r})
from daglite.plugins.builtin._cache_code import _CodeMemo
from daglite.plugins.builtin.cache import _TaskKey, _entry, CachePolicy, _code_digest
import {module} as m

memo = _CodeMemo()
key = _TaskKey(m.compute, _code_digest(m.compute.func, memo), CachePolicy())
inputs = {{"x": {{"b", "a", "c"}}, "y": {{"k": frozenset({{"p", "q"}}), 2: [1.5, None]}}}}
print(_entry(key, "compute", inputs, memo)[0])
"""


def test_keys_are_stable_across_processes_and_hash_seeds(tmp_path):
    source = """
        from daglite import task

        WORDS = {"alpha", "beta", "gamma"}

        @task
        def compute(x, y):
            return sorted(WORDS) + sorted(x) + [y, x in {"a", "z"}]
    """
    folder = tmp_path / "stable"
    folder.mkdir()
    (folder / "stable_mod.py").write_text(textwrap.dedent(source))
    script = STABILITY.format(folder=str(folder), module="stable_mod")
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1, outputs


# -- values -----------------------------------------------------------------------------


def test_values_hash_by_type_and_content_whatever_the_order():
    assert value({"a": 1, "b": {2, 3}}) == value({"b": {3, 2}, "a": 1})
    assert value({1: "x", (2, 3): "y"}) == value({(2, 3): "y", 1: "x"})
    assert len({value(1), value(1.0), value(True), value("1"), value(b"1")}) == 5
    assert value([1, 2]) != value((1, 2))
    assert value(list(range(100))) == value(list(range(100)))
    assert value(list(range(100))) != value([*range(99), 100])
    assert value(10**5000) != value(10**5000 + 1)  # no int-to-str digit limit


def test_numpy_arrays_hash_their_contents_whatever_the_memory(tmp_path):
    data = np.arange(24, dtype=np.float64).reshape(4, 6)
    mapped = np.memmap(tmp_path / "a.bin", dtype=np.float64, mode="w+", shape=(4, 6))
    mapped[:] = data
    assert value(data) == value(data.copy()) == value(mapped) == value(np.asfortranarray(data))
    assert value(data[:, ::2]) == value(np.ascontiguousarray(data[:, ::2]))
    changed = data.copy()
    changed[3, 5] += 1
    assert value(changed) != value(data)
    assert value(data) != value(data.astype(np.float32))  # dtype
    assert value(data) != value(data.reshape(6, 4))  # shape
    dates = np.array(["2020-01-01", "2021-01-01"], dtype="M8[D]")
    assert value(dates) != value(dates + np.timedelta64(1, "D"))
    objects = np.array([1, "x", None], dtype=object)
    assert value(objects) == value(objects.copy())
    assert value(objects) != value(np.array([1, "y", None], dtype=object))


def test_buffers_hash_without_pickling(tmp_path):
    raw = bytes(range(256)) * 4
    path = tmp_path / "buf"
    path.write_bytes(raw)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        first = value(mapped)
        mapped[0] = 1
        assert value(mapped) != first
        mapped[0] = 0
        assert value(mapped) == first
    assert value(memoryview(raw)) == value(memoryview(bytearray(raw)))
    assert value(memoryview(raw)) != value(memoryview(raw)[::2])
    assert value(bytearray(raw)) != value(raw)  # the type counts
    import array

    assert value(array.array("i", [1, 2])) != value(array.array("i", [1, 3]))


def test_a_large_array_is_hashed_in_place_not_pickled():
    big = np.ones(50_000_000 // 8)  # 50 MB
    tracemalloc.start()
    try:
        value({"big": big, "small": 1})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # pickling it would take 50 MB


@pytest.mark.parametrize(
    "make",
    [
        lambda tmp: threading.Lock(),
        lambda tmp: (i for i in range(3)),
        lambda tmp: open(tmp / "f.txt", "w"),  # noqa: SIM115
        lambda tmp: [1, {"deep": threading.Lock()}],
    ],
    ids=["lock", "generator", "open-file", "nested-lock"],
)
def test_values_without_a_stable_digest_are_refused(tmp_path, make):
    obj = make(tmp_path)
    try:
        with pytest.raises(_Unhashable):
            value(obj)
    finally:
        if hasattr(obj, "close"):
            obj.close()


def test_unhashable_input_leaves_the_node_uncached_with_one_debug_line(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="daglite.plugins.cache")
    counter = []

    @task
    def consume(x: int, stream) -> int:
        counter.append(x)
        return x

    cache = CachePlugin(tmp_path / "cache")
    for _ in range(2):
        assert evaluate(consume(1, (i for i in range(2))), plugins=[cache]) == 1
    assert counter == [1, 1]
    lines = [r.getMessage() for r in caplog.records if r.name == "daglite.plugins.cache"]
    assert len(lines) == 2  # one per run
    assert all("'consume'" in line and "'stream'" in line for line in lines)
    assert not list((tmp_path / "cache").rglob("*.entry"))


def test_function_inputs_follow_their_code():
    def one(x):
        return x + 1

    def two(x):
        return x + 2

    assert value(one) != value(two)
    assert value({"f": one}) == value({"f": one})
    assert json.dumps  # library callables hash by name and Python version
    assert value(json.dumps) == value(json.dumps)


def test_shared_memory_arrays_hash_like_ordinary_ones():
    from multiprocessing import shared_memory

    data = np.arange(1000, dtype=np.int64)
    shm = shared_memory.SharedMemory(create=True, size=data.nbytes)
    try:
        shared = np.ndarray(data.shape, dtype=data.dtype, buffer=shm.buf)
        shared[:] = data
        assert value(shared) == value(data)
        assert value(shm.buf) == value(memoryview(data.tobytes()))  # the raw buffer too
        del shared
    finally:
        shm.close()
        shm.unlink()


def test_bound_method_tasks_follow_the_object_they_are_bound_to(tmp_path):
    source = """
        class Model:
            def __init__(self, weight):
                self.weight = weight

            def predict(self, x):
                return x * self.weight
    """
    module = load(tmp_path, source)
    assert code(module.Model(2).predict) == code(module.Model(2).predict)
    assert code(module.Model(2).predict) != code(module.Model(3).predict)
    edited = load(tmp_path, source.replace("x * self.weight", "x + self.weight"))
    assert code(module.Model(2).predict) != code(edited.Model(2).predict)
