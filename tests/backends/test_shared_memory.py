"""Large buffers through shared memory on the processes backend (gh-14)."""

from __future__ import annotations

import copy
import logging
import mmap
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import weakref

import numpy as np
import pytest

from daglite import WorkerLostError, evaluate, task
from daglite._job import shared
from daglite.backends import ProcessBackend
from daglite.plugins.hooks import hook_impl

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "src")
KIB = 1024


def _in_shared_memory(value: object) -> bool:
    """Whether ``value``'s buffer is a mapping (it came through shared memory)."""
    base = value
    while getattr(base, "base", None) is not None:
        base = base.base  # type: ignore[attr-defined]
    if isinstance(base, memoryview):
        return isinstance(base.obj, mmap.mmap)
    return isinstance(base, mmap.mmap)


@pytest.fixture(scope="module")
def pool():
    """Two workers; buffers of 1 KiB or more go through shared memory."""
    with ProcessBackend(max_workers=2, shared_memory_threshold=KIB) as backend:
        yield backend


def _caller_directory() -> str:
    return f"/dev/shm/daglite-{os.getpid()}"


def _assert_no_run_segments() -> None:
    """No run's directory is left; a backend's pool of free segments may be."""
    if os.path.isdir(_caller_directory()):
        left = [n for n in os.listdir(_caller_directory()) if not n.startswith("pool-")]
        assert left == []


@task
def echo(value: object) -> object:
    return value


@task
def arrived_mapped(value: object) -> bool:
    return _in_shared_memory(value)


VALUES = {
    "float64": lambda: np.arange(1000, dtype=np.float64),
    "int8-2d": lambda: np.arange(4000, dtype=np.int8).reshape(40, 100),
    "strided": lambda: np.arange(4000, dtype=np.int32)[::2],
    "fortran": lambda: np.asfortranarray(np.arange(2000.0).reshape(40, 50)),
    "structured": lambda: np.zeros(500, dtype=[("a", "f8"), ("b", "i4")]),
    "bytes": lambda: bytes(range(256)) * 8,
    "bytearray": lambda: bytearray(b"x" * 4096),
}


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())  # type: ignore[union-attr]
    return a == b


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_values_round_trip_through_shared_memory(pool, kind):
    value = VALUES[kind]()
    back = evaluate(echo(value=value), backend=pool)
    assert type(back) is type(value)
    assert _same(back, value)
    if isinstance(value, np.ndarray):
        assert _in_shared_memory(back), "the result came home through the pipe"
        assert back.flags.writeable
        assert evaluate(arrived_mapped(value=value), backend=pool)
    _assert_no_run_segments()


def test_memoryview_travels_and_keeps_its_shape(pool):
    view = memoryview(np.arange(600, dtype=np.int32).reshape(20, 30))
    back = evaluate(echo(value=view), backend=pool)
    assert isinstance(back, memoryview)
    assert back.shape == (20, 30) and back.format == view.format
    assert back.tolist() == view.tolist()


def test_pandas_and_pyarrow_travel_through_their_buffers(pool):
    frame = pd.DataFrame({"a": np.arange(5000.0), "b": np.arange(5000)})
    table = pa.table({"x": np.arange(5000)})
    back_frame, back_series, back_table = evaluate(
        [echo(value=frame), echo(value=frame["a"]), echo(value=table)], backend=pool
    )
    pd.testing.assert_frame_equal(back_frame, frame)
    pd.testing.assert_series_equal(back_series, frame["a"])
    assert back_table.equals(table)


def test_below_the_threshold_or_off_nothing_changes():
    small = np.arange(10.0)
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB) as backend:
        assert not evaluate(arrived_mapped(value=small), backend=backend)
    with ProcessBackend(max_workers=1, shared_memory_threshold=None) as backend:
        assert not evaluate(arrived_mapped(value=np.arange(10_000.0)), backend=backend)


def test_bad_threshold_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="shared_memory_threshold"):
        ProcessBackend(shared_memory_threshold=-1)
    monkeypatch.setenv("DAGLITE_SHM_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="DAGLITE_SHM_THRESHOLD"):
        ProcessBackend()
    monkeypatch.setenv("DAGLITE_SHM_THRESHOLD", "off")
    assert ProcessBackend().shared_memory_threshold is None


# -- mutation -------------------------------------------------------------------------


@task
def make(n: int) -> np.ndarray:
    return np.ones(n)


@task
def scribble(a: np.ndarray) -> float:
    a[:] = 7.0  # its own copy: nobody else sees this
    return float(a.sum())


@task
def total(a: np.ndarray) -> float:
    return float(a.sum())


def test_writes_to_an_input_stay_in_that_task(pool):
    data = np.ones(4000)
    produced = make(n=4000)
    out = evaluate(
        [scribble(a=produced), total(a=produced), scribble(a=data), total(a=data)], backend=pool
    )
    assert out == [28000.0, 4000.0, 28000.0, 4000.0]
    assert (data == 1.0).all(), "a task's write reached the caller's array"


def test_results_are_ordinary_values(pool):
    result = evaluate(make(n=5000), backend=pool)
    assert _in_shared_memory(result)
    result[:] = 3.0  # writable, and private to the caller
    clone = copy.deepcopy(result)
    assert (clone == 3.0).all()
    assert (pickle.loads(pickle.dumps(result)) == result).all()


# -- a value of the caller that many calls take -----------------------------------------


@task
def head_sum(k: int, a: np.ndarray) -> float:
    return float(a[:100].sum()) + k


def _count_writes(monkeypatch) -> list[int]:
    """Sizes of the segments the caller writes from now on."""
    written: list[int] = []
    real = shared._write_segment

    def spy(settings, buffers, *rest):
        written.append(sum(b.nbytes for b in buffers))
        return real(settings, buffers, *rest)

    monkeypatch.setattr(shared, "_write_segment", spy)
    return written


@pytest.mark.parametrize("watched", [False, True], ids=["slices", "per-element"])
def test_an_array_every_element_of_a_fan_out_takes_is_written_once(pool, monkeypatch, watched):
    data = np.ones(50_000)  # 400 kB, far above the pool's 1 KiB threshold
    written = _count_writes(monkeypatch)
    plugins = [SeesStarts()] if watched else []
    out = evaluate(head_sum.product(k=range(12), a=data), backend=pool, plugins=plugins)
    assert out == [100.0 + k for k in range(12)]
    assert written == [data.nbytes]  # one segment, not one per job
    _assert_no_run_segments()


def test_an_array_several_nodes_take_is_written_once_from_the_second(pool, monkeypatch):
    data = np.ones(50_000)
    written = _count_writes(monkeypatch)
    # Batched two jobs per worker: the first node's job writes its own copy
    # (its worker owns it); every later one maps one shared segment.
    out = evaluate([head_sum(k=k, a=data) for k in range(8)], backend=pool)
    assert out == [100.0 + k for k in range(8)]
    assert written == [data.nbytes, data.nbytes]


def test_a_task_writing_to_a_shared_argument_changes_its_own_copy_only(pool):
    data = np.ones(50_000)
    out = evaluate([scribble(a=data) for _ in range(4)] + [total(a=data)], backend=pool)
    assert out == [350_000.0] * 4 + [50_000.0]
    assert (data == 1.0).all()


class SeesStarts:
    """Watches single elements start: a fan-out then goes element by element."""

    @hook_impl
    def before_node_execute(self, key):
        pass


class SeesInputs:
    def __init__(self) -> None:
        self.inputs: list[object] = []

    @hook_impl
    def before_node_execute(self, inputs):
        self.inputs.append(inputs["a"])


def test_hooks_that_look_at_inputs_see_the_callers_own_array(pool):
    data = np.ones(50_000)
    plugin = SeesInputs()
    evaluate(head_sum.product(k=range(4), a=data), backend=pool, plugins=[plugin])
    assert len(plugin.inputs) == 4 and all(a is data for a in plugin.inputs)


# -- what goes home, and when -----------------------------------------------------------


def _refuse_in_the_caller(data: np.ndarray) -> np.ndarray:
    import multiprocessing

    if multiprocessing.parent_process() is None:  # not a pool worker: the caller
        raise RuntimeError("this value was unpickled in the caller")
    return data


class WorkersOnly:
    """A large value that must never be unpickled in the caller."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __reduce__(self):
        return (_rebuild_workers_only, (self.data,))


def _rebuild_workers_only(data: np.ndarray) -> WorkersOnly:
    return WorkersOnly(_refuse_in_the_caller(data))


@task
def produce_private(n: int) -> WorkersOnly:
    return WorkersOnly(np.ones(n))


@task
def use_private(value: WorkersOnly) -> float:
    return float(value.data.sum())


def test_intermediates_never_enter_the_caller(pool):
    produced = produce_private(n=5000)
    # Two consumers: the result comes home as a handle both workers map.
    assert evaluate([use_private(value=produced), use_private(value=produced)], backend=pool) == [
        5000.0,
        5000.0,
    ]
    # One consumer (a fused chain): it never leaves its worker.
    assert evaluate(use_private(value=produce_private(n=5000)), backend=pool) == 5000.0


class SeesValues:
    def __init__(self) -> None:
        self.seen: list[tuple[str, type, type]] = []

    @hook_impl
    def after_node_execute(self, key, inputs, result):
        first = next(iter(inputs.values()), None)
        self.seen.append((key, type(first), type(result)))


def test_hooks_see_ordinary_values(pool):
    plugin = SeesValues()
    assert evaluate(total(a=make(n=5000)), backend=pool, plugins=[plugin]) == 5000.0
    assert ("make", int, np.ndarray) in plugin.seen
    assert ("total", np.ndarray, float) in plugin.seen


@task(retries=1)
def flaky_total(a: np.ndarray, mark: str) -> float:
    if not os.path.exists(mark):
        with open(mark, "w"):
            pass
        raise RuntimeError("first attempt fails")
    return float(a.sum())


def test_a_fused_follower_that_fails_is_retried_with_its_input(pool, tmp_path):
    mark = str(tmp_path / "first")
    assert evaluate(flaky_total(a=make(n=5000), mark=mark), backend=pool) == 5000.0


# -- intermediates released ---------------------------------------------------------------

_alive: list[weakref.ref] = []


@task
def start(n: int) -> np.ndarray:
    out = np.ones(n)
    _alive.append(weakref.ref(out))
    return out


@task
def step(a: np.ndarray) -> tuple[np.ndarray, int]:
    live = sum(r() is not None for r in _alive)
    out = a + 1
    _alive.append(weakref.ref(out))
    return out, live


@task
def step_on(pair: tuple[np.ndarray, int]) -> tuple[np.ndarray, int]:
    a, most = pair
    live = sum(r() is not None for r in _alive)
    out = a + 1
    _alive.append(weakref.ref(out))
    return out, max(most, live)


def test_a_chain_on_threads_keeps_one_intermediate_at_a_time():
    _alive.clear()
    x = step(a=start(n=1000))
    for _ in range(8):
        x = step_on(pair=x)
    out, most_alive = evaluate(x, backend="threads")
    assert out[0] == 10.0
    # While a step runs: its input (and the tuple's array before it, at most).
    assert most_alive <= 2, f"{most_alive} intermediates alive at once"


# -- no leaks ---------------------------------------------------------------------------


def test_segments_are_gone_when_evaluate_returns_or_raises(pool):
    @task
    def boom(a: np.ndarray) -> None:
        raise ValueError("no")

    evaluate(total(a=np.ones(5000)), backend=pool)
    _assert_no_run_segments()
    with pytest.raises(Exception, match="no"):
        evaluate(boom(a=np.ones(5000)), backend=pool)
    _assert_no_run_segments()


def test_a_worker_that_segfaults_leaves_no_segment():
    @task
    def crash(a: np.ndarray) -> None:
        import ctypes

        ctypes.string_at(0)

    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB) as backend:
        with pytest.raises(WorkerLostError):
            evaluate(crash(a=np.ones(5000)), backend=backend)
    _assert_no_run_segments()


def test_too_little_shared_memory_falls_back_to_the_pipe(monkeypatch, caplog):
    monkeypatch.setattr(shared, "_SPARE_BYTES", 1 << 62)  # as if /dev/shm were full
    caplog.set_level(logging.WARNING, logger="daglite.shared")
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB) as backend:
        assert evaluate(total(a=np.ones(5000)), backend=backend) == 5000.0
        assert not evaluate(arrived_mapped(value=np.ones(5000)), backend=backend)
    warnings = [r for r in caplog.records if "could not go through shared memory" in r.message]
    assert len(warnings) >= 1
    assert "40,000 bytes" in warnings[0].message


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from daglite import task, evaluate
    from daglite.backends import ProcessBackend

    @task
    def hold(a, mark: str) -> float:
        open(mark, "w").close()
        time.sleep(60)  # killed long before this ends
        return float(a.sum())

    @task
    def make(n: int):
        return np.ones(n)

    pool = ProcessBackend(max_workers=2, shared_memory_threshold=1024)
    evaluate([hold(a=make(n=5000), mark=sys.argv[1]), hold(a=np.ones(5000), mark=sys.argv[1])],
             backend=pool)
    """
)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_killed_caller_leaves_nothing_in_shared_memory(tmp_path, how):
    mark = tmp_path / "running"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(mark)],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    directory = f"/dev/shm/daglite-{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():  # bounded poll for the task to start
            assert time.monotonic() < deadline, "the task never started"
            assert proc.poll() is None, "the script ended early"
            time.sleep(0.05)
        assert os.path.isdir(directory)
        proc.send_signal(getattr(signal, how))
        proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while os.path.exists(directory):  # the janitor (or the caller itself) removes it
            assert time.monotonic() < deadline, os.listdir(directory)
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@task
def make_chunks(n: int) -> list:
    return [WorkersOnly(c) for c in np.split(np.arange(n, dtype=np.float64), 4)]


@task
def chunk_report(chunk: WorkersOnly) -> tuple[float, bool]:
    return float(chunk.data.sum()), _in_shared_memory(chunk.data)


def test_a_fan_out_over_a_result_in_shared_memory_maps_each_element(pool):
    # Each element is mapped from the producer's segment by its worker: the
    # list is never unpickled in the caller (WorkersOnly would refuse).
    out = evaluate(chunk_report.product(chunk=make_chunks(n=4000)), backend=pool)
    sums = [sum(range(i * 1000, (i + 1) * 1000)) for i in range(4)]
    assert out == [(float(s), True) for s in sums]


def test_fan_out_elements_return_through_shared_memory(pool):
    arrays = [np.full(1000, float(i)) for i in range(6)]
    back = evaluate(echo.product(value=arrays), backend=pool)
    assert all((b == a).all() for a, b in zip(arrays, back))
    assert all(_in_shared_memory(b) for b in back)
    # Consumed in the caller by a task on another backend: resolved to values there.
    assert (
        evaluate(total.with_options(backend="threads")(a=echo(value=arrays[3])), backend=pool)
        == 3000.0
    )


def test_the_cache_hashes_and_stores_values_from_shared_memory(pool, tmp_path):
    from daglite.plugins.builtin import CachePlugin

    ran: list[str] = []

    class Ran:
        @hook_impl
        def after_node_execute(self, key, worker):
            if worker != "cache":
                ran.append(key)

    def dag():
        return total(a=make(n=5000))

    for _ in range(2):
        plugins = [CachePlugin(str(tmp_path / "cache")), Ran()]
        assert evaluate(dag(), backend=pool, plugins=plugins) == 5000.0
    assert ran == ["make", "total"], ran  # the second run was served from the cache


def test_a_job_whose_segment_is_gone_fails_as_a_job_not_the_worker(tmp_path):
    from daglite._job.job import _dumps_calls, _load_job
    from daglite._job.records import _new_call
    from daglite.exceptions import BackendError

    settings = shared.SharedMemory(str(tmp_path), KIB)
    call = _new_call(
        (1, "total", "total", total.func, {"a": np.ones(5000)}, None, None, None, None, False, None)
    )
    funcs, body = _dumps_calls([call], settings)
    assert isinstance(body, tuple), "the argument should have gone into a segment"
    os.unlink(body[1].path)  # the run ended, and took its segments with it
    job = _load_job(None, funcs, body)  # type: ignore[arg-type]
    with pytest.raises(BackendError, match="gone from shared memory"):
        job()


def test_a_custom_process_backend_opts_in_through_the_same_job_path():
    from tests.backends.test_custom_backends import LokyBackend

    class SharedLoky(LokyBackend):
        shared_memory_threshold = KIB

    with SharedLoky(max_workers=1) as backend:
        assert evaluate(arrived_mapped(value=np.ones(5000)), backend=backend)
        result = evaluate(make(n=5000), backend=backend)
    assert _in_shared_memory(result) and result.sum() == 5000.0
    with LokyBackend(max_workers=1) as backend:  # not opted in: the pipe, as before
        assert not evaluate(arrived_mapped(value=np.ones(5000)), backend=backend)


def test_hooks_see_ordinary_values_of_fan_out_elements(pool):
    plugin = SeesValues()
    arrays = [np.full(1000, float(i)) for i in range(6)]
    evaluate(echo.product(value=arrays), backend=pool, plugins=[plugin])
    elements = [s for s in plugin.seen if s[0].startswith("echo[")]
    assert len(elements) == 6
    assert all(inp is np.ndarray and res is np.ndarray for _, inp, res in elements), elements


@task
def make_arrays(n: int) -> list:
    return [np.full(n, float(i)) for i in range(4)]


@pytest.mark.parametrize("source", ["one result", "a list of results", "nested in lists"])
def test_hooks_see_ordinary_inputs_of_fan_outs_over_shared_memory(pool, source):
    # The bulk path: each element's input is a handle into a segment in the
    # caller (from one list result, or one result per element, or inside a
    # container); a hook that names inputs gets arrays all the same.
    if source == "one result":
        values = make_arrays(n=5000)
    elif source == "a list of results":
        values = [make(n=5000) for _ in range(4)]
    else:
        values = [[make(n=5000)] for _ in range(4)]
    plugin = SeesElementInputs()
    evaluate(echo.product(value=values), backend=pool, plugins=[plugin])
    assert sorted(plugin.seen) == [f"echo[{i}]" for i in range(4)]
    assert all(type(v) is np.ndarray for v in plugin.seen.values()), plugin.seen


class SeesElementInputs:
    """Records each fan-out element's input (the array, or the one inside a list)."""

    def __init__(self) -> None:
        self.seen: dict[str, object] = {}

    @hook_impl
    def after_node_execute(self, key, inputs):
        if key.startswith("echo["):
            value = inputs["value"]
            self.seen[key] = value[0] if type(value) is list else value
