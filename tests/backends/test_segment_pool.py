"""Job arguments' segments kept for reuse on the processes backend (gh-14)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from daglite import WorkerLostError, evaluate, task
from daglite._job import shared
from daglite.backends import ProcessBackend

KIB = 1024
N = 50_000  # 400 kB of float64: far above the 1 KiB threshold


@task
def total(a: np.ndarray) -> float:
    return float(a.sum())


@task
def keep(a: np.ndarray) -> float:
    import sys

    # This worker holds on to its argument after the call (on a module both
    # calls find: a function pickled by value brings its own globals).
    sys.daglite_test_kept = a  # type: ignore[attr-defined]
    return float(a.sum())


@task
def kept_total() -> float:
    import sys

    return float(sys.daglite_test_kept.sum())  # type: ignore[attr-defined]


@task
def head(a: np.ndarray) -> np.ndarray:
    return a[:10]  # a view of the argument: the result holds its mapping


@task
def crash(a: np.ndarray) -> None:
    import ctypes

    ctypes.string_at(0)


@task
def fail(a: np.ndarray) -> None:
    raise ValueError("no")


def _count_new_files(monkeypatch) -> list[str]:
    """Paths of the segment files written from now on (new ones, not reused)."""
    made: list[str] = []
    real = shared.write_file

    def spy(path, *rest):
        made.append(path)
        return real(path, *rest)

    monkeypatch.setattr(shared, "write_file", spy)
    return made


def _pool_files(backend: ProcessBackend) -> list[str]:
    pool = backend.segment_pool()
    assert pool is not None and pool._directory is not None
    return sorted(os.listdir(pool._directory))


@pytest.fixture
def backend():
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB) as pool:
        yield pool


def test_a_released_segment_is_reused_with_the_new_arguments(backend, monkeypatch):
    made = _count_new_files(monkeypatch)
    first = np.ones(N)
    assert evaluate(total(a=first), backend=backend) == N
    assert len(made) == 1
    pool = backend.segment_pool()
    assert pool is not None and pool.free_bytes() >= first.nbytes  # kept, not removed
    second = np.arange(N, dtype=np.float64)
    assert evaluate(total(a=second), backend=backend) == float(second.sum())
    assert len(made) == 1  # the same file, with the new data copied in
    assert len(_pool_files(backend)) == 1


@pytest.mark.parametrize("holder", [keep, head], ids=["kept-in-a-global", "returned-as-a-view"])
def test_a_segment_the_worker_still_uses_is_not_reused(backend, monkeypatch, holder):
    made = _count_new_files(monkeypatch)
    first = np.ones(N)
    result = evaluate(holder(a=first), backend=backend)
    other = np.full(N, 7.0)
    assert evaluate(total(a=other), backend=backend) == 7.0 * N
    assert len(made) == 2  # the first file stayed with the worker: a new one was written
    if holder is keep:
        assert evaluate(kept_total(), backend=backend) == N  # untouched by the second job
    else:
        assert np.array_equal(result, np.ones(10))


@task
def nested_total(a: np.ndarray) -> tuple[list[float], int, int]:
    from daglite._job import shared as worker_shared

    before = len(worker_shared._borrowed)  # this job's own argument segment
    # Jobs of a run on threads, in this worker, while its own job is running.
    out = evaluate([total(a=a), total(a=a[:10])], backend="threads")
    return out, before, len(worker_shared._borrowed)


def test_a_run_nested_in_a_task_leaves_the_outer_jobs_segment_to_it(backend):
    for value in (1.0, 2.0):
        out, before, after = evaluate(nested_total(a=np.full(N, value)), backend=backend)
        assert out == [value * N, value * 10]
        # The nested run's jobs released nothing of the outer job's, nor forgot it.
        assert before == after == 1


class _Cycle:
    def __init__(self, a: np.ndarray) -> None:
        self.a = a
        self.me = self  # garbage only the cycle collector frees


@task
def in_a_cycle(a: np.ndarray) -> float:
    return float(_Cycle(a).a.sum())


def test_an_argument_only_a_reference_cycle_still_holds_is_released(backend, monkeypatch):
    made = _count_new_files(monkeypatch)
    assert evaluate(in_a_cycle(a=np.ones(N)), backend=backend) == N
    assert evaluate(in_a_cycle(a=np.ones(N)), backend=backend) == N
    assert len(made) == 1


def test_a_smaller_argument_reuses_a_segment_it_half_fills(backend, monkeypatch):
    made = _count_new_files(monkeypatch)
    evaluate(total(a=np.ones(N)), backend=backend)
    assert evaluate(total(a=np.ones(N * 3 // 4)), backend=backend) == N * 3 // 4
    assert evaluate(total(a=np.ones(N // 4)), backend=backend) == N // 4
    assert len(made) == 2  # 3/4 reused the first file; 1/4 is too small for it


def test_segments_lent_to_a_run_that_fails_are_removed(backend):
    with pytest.raises(Exception, match="no"):
        evaluate([fail(a=np.ones(N)), total(a=np.ones(N))], backend=backend)
    pool = backend.segment_pool()
    assert pool is not None
    assert len(_pool_files(backend)) == len(pool._free)  # free ones only: nothing lent left
    assert not pool._lent


def test_a_segment_lent_to_a_worker_that_dies_is_removed(backend):
    with pytest.raises(WorkerLostError):
        evaluate(crash(a=np.ones(N)), backend=backend)
    pool = backend.segment_pool()
    assert pool is not None and not pool._lent and _pool_files(backend) == []
    assert evaluate(total(a=np.ones(N)), backend=backend) == N  # a fresh pool runs on


def test_shutdown_removes_the_pool():
    backend = ProcessBackend(max_workers=1, shared_memory_threshold=KIB)
    with backend:
        evaluate(total(a=np.ones(N)), backend=backend)
        pool = backend.segment_pool()
        assert pool is not None
        directory = pool._directory
        assert directory is not None and os.listdir(directory)
    assert not os.path.exists(directory)


def test_a_segment_over_the_limit_is_not_kept(monkeypatch):
    made = _count_new_files(monkeypatch)
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB, shared_memory_pool=KIB) as b:
        evaluate(total(a=np.ones(N)), backend=b)
        pool = b.segment_pool()
        assert pool is not None and pool.free_bytes() == 0 and _pool_files(b) == []
        evaluate(total(a=np.ones(N)), backend=b)
    assert len(made) == 2


def test_no_pool_writes_a_segment_per_job_as_before(monkeypatch):
    made = _count_new_files(monkeypatch)
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB, shared_memory_pool=0) as b:
        assert b.segment_pool() is None
        for _ in range(2):
            assert evaluate(total(a=np.ones(N)), backend=b) == N
    assert len(made) == 2
    assert all(os.path.basename(os.path.dirname(p)) != "pool" for p in made)


@pytest.mark.parametrize("value", [-1, 1.5, True, "lots"])
def test_a_bad_pool_size_is_refused(value):
    with pytest.raises(ValueError, match="shared_memory_pool"):
        ProcessBackend(max_workers=1, shared_memory_pool=value)


def test_the_default_pool_is_at_most_a_gib_and_an_eighth_of_shared_memory():
    from daglite._job.segment_pool import DEFAULT_LIMIT

    limit = ProcessBackend(max_workers=1).shared_memory_pool
    stat = os.statvfs(shared._base_directory())
    assert limit == min(DEFAULT_LIMIT, stat.f_blocks * stat.f_frsize // 8)


# -- a result that is its argument, written in place, travels in its segment ------------


@task
def double(a: np.ndarray) -> np.ndarray:
    a *= 2
    return a


@task
def two_views(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a += 1
    return a[N // 2 :], a  # the later buffer first: offsets out of order


def _mapped_from(value: np.ndarray) -> str:
    """The file ``value``'s data is mapped from in this process ('' if none)."""
    address = value.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip().removesuffix(" (deleted)") if len(fields) > 5 else ""
    return ""


def test_an_argument_written_in_place_and_returned_is_not_copied_back(backend, monkeypatch):
    made = _count_new_files(monkeypatch)
    data = np.arange(N, dtype=np.float64)
    result = evaluate(double(a=data), backend=backend)
    assert np.array_equal(result, 2 * np.arange(N))
    assert np.array_equal(data, np.arange(N))  # the caller's array is its own
    assert len(made) == 1
    assert _mapped_from(result) == made[0]  # it came home in its argument's segment
    result[0] = -1.0  # an ordinary, writable array
    pool = backend.segment_pool()
    assert pool is not None and not pool._lent and pool.free_bytes() == 0
    del result
    import gc

    gc.collect()
    assert _pool_files(backend) == []  # the handle took the file over, then unlinked it


def test_several_buffers_of_one_argument_travel_in_its_segment(backend, monkeypatch):
    made = _count_new_files(monkeypatch)
    tail, whole = evaluate(two_views(a=np.zeros(N)), backend=backend)
    assert np.array_equal(whole, np.ones(N)) and np.array_equal(tail, np.ones(N - N // 2))
    assert len(made) == 1
    assert _mapped_from(whole) == _mapped_from(tail) == made[0]


def test_elements_of_a_fan_out_written_in_place_come_back_in_their_segments(monkeypatch):
    made = _count_new_files(monkeypatch)
    arrays = [np.full(N, float(i)) for i in range(12)]
    with ProcessBackend(max_workers=2, shared_memory_threshold=KIB) as b:
        results = evaluate(double.product(a=arrays), backend=b)
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(12)]
    assert all(np.array_equal(a, np.full(N, float(i))) for i, a in enumerate(arrays))
    assert {_mapped_from(r) for r in results} <= set(made)  # each in its job's segment


def test_only_a_jobs_last_outcomes_travel_in_its_arguments_segments(tmp_path):
    settings = shared.SharedMemory(str(tmp_path), KIB)
    path = tmp_path / "borrowed"
    path.write_bytes(b"\0" * (8 * N))
    segment = shared._Segment(str(path), [0], [8 * N], pooled=1 << 30)
    data = pickle_with_buffer(np.zeros(N))
    value = shared.load_segment(data, segment, own=True)
    value += 3
    released, kept = shared.release_borrowed()
    assert released == [] and [k.path for k in kept] == [str(path)]
    outside = shared.dumps(value, settings)
    assert isinstance(outside, tuple) and outside[1].path != str(path)  # copied
    with shared.handing_over(kept) as handed:
        inside = shared.dumps(value, settings)
        half = shared.dumps(value[N // 2 :], settings)
    assert isinstance(inside, tuple) and inside[1].path == str(path)
    assert isinstance(half, tuple) and half[1].path == str(path)
    assert half[1].offsets == [8 * (N // 2)]
    assert handed == [str(path)]  # once, however many results travel in it
    assert np.array_equal(shared.load_segment(*inside, own=False), np.full(N, 3.0))
    # Their handles share the file: it goes with the last of them.
    first, second = shared.SharedValue(*inside), shared.SharedValue(*half)
    del first
    assert path.exists()
    del second
    assert not path.exists()


def pickle_with_buffer(value: np.ndarray) -> bytes:
    import pickle

    return pickle.dumps(value, protocol=5, buffer_callback=lambda b: False)


@task
def double_and_keep(a: np.ndarray) -> np.ndarray:
    import sys

    a *= 2
    sys.daglite_test_cache = a  # type: ignore[attr-defined]  # e.g. a memo cache
    return a


@task
def scribble_on_kept() -> int:
    import sys

    sys.daglite_test_cache[:] = -1.0  # type: ignore[attr-defined]
    return 0


def test_a_handed_over_result_does_not_change_when_the_worker_writes_to_its_argument(backend):
    result = evaluate(double_and_keep(a=np.ones(N)), backend=backend)
    assert evaluate(scribble_on_kept(), backend=backend) == 0  # same worker, later job
    assert np.array_equal(result, np.full(N, 2.0))


@task
def double_then_mark(a: np.ndarray, mark: str) -> np.ndarray:
    a *= 2
    open(mark, "w").close()
    return a


@task
def fail_after(mark: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(mark):  # bounded wait for the other task to finish
        assert time.monotonic() < deadline
        time.sleep(0.01)
    raise ValueError("late")


@task
def pair(a: object, b: object) -> int:
    return 0


def test_a_handed_over_file_goes_when_its_run_ends_even_if_the_run_is_kept(tmp_path):
    mark = str(tmp_path / "doubled")
    with ProcessBackend(max_workers=2, shared_memory_threshold=KIB) as b:
        dag = pair(a=double_then_mark(a=np.ones(N), mark=mark), b=fail_after(mark=mark))
        with pytest.raises(Exception, match="late") as failed:
            evaluate(dag, backend=b)
        # The exception keeps the run's frames, and with them the result's handle.
        assert failed.value is not None
        assert _pool_files(b) == []


def test_a_settled_job_is_not_lent_a_segment_when_pickled_late(tmp_path):
    import pickle

    from daglite._job.channel import _Home
    from daglite._job.job import _Job
    from daglite._job.records import _new_call
    from daglite._job.segment_pool import SegmentPool

    pool = SegmentPool(1 << 30)
    home = _Home("run", lambda message: None)
    home.shared = shared.for_run("late-run", KIB, pool)
    fields = (1, "total", "total", total.func, {"a": np.ones(N)}, None, None, None, None)
    job = _Job(home, [_new_call((*fields, False, None))])
    try:
        pickle.dumps(job)
        assert job.lent and len(pool._lent) == 1
        job.settle(None)  # it failed: the segment is removed
        assert not pool._lent
        pickle.dumps(job)  # a broken pool's feeder pickles it anyway
        assert not pool._lent  # written to a segment of its own, not lent
    finally:
        shared.end_run(home.shared)
        pool.close()


def test_concurrent_runs_on_one_backend_each_get_their_own_data():
    import threading

    rounds, runs = 6, 3
    barrier = threading.Barrier(runs)
    failures: list[str] = []

    def run(k: int) -> None:
        barrier.wait(timeout=60)
        for i in range(rounds):
            value = float(100 * k + i)
            arrays = [np.full(N, value + j) for j in range(4)]
            got = evaluate(double.product(a=arrays), backend=b)
            want = [2 * (value + j) for j in range(4)]
            if [float(g[0]) for g in got] != want or not all(
                np.array_equal(g, np.full(N, w)) for g, w in zip(got, want)
            ):
                failures.append(f"run {k} round {i}: {[float(g[0]) for g in got]} != {want}")
            totals = evaluate(total.product(a=arrays), backend=b)
            if totals != [(value + j) * N for j in range(4)]:
                failures.append(f"run {k} round {i}: totals {totals}")

    with ProcessBackend(max_workers=2, shared_memory_threshold=KIB) as b:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(runs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        pool = b.segment_pool()
        assert pool is not None and not pool._lent
        assert len(_pool_files(b)) == len(pool._free)  # only free segments are left
    assert failures == []


# -- a worker keeps its mappings of the pool's segments warm ---------------------------


@task
def warm_mapping_ids() -> dict[str, int]:
    from daglite._job import shared as worker_shared

    return {path: id(m) for path, m in worker_shared._warm._maps.items()}


@task
def borrowed_mapping_id(a: np.ndarray) -> tuple[float, int]:
    from daglite._job import shared as worker_shared

    return float(a.sum()), id(worker_shared._borrowed[0].mapping)


def test_a_worker_reads_a_segment_lent_again_through_the_mapping_it_kept(backend):
    assert evaluate(total(a=np.ones(N)), backend=backend) == N
    (path,) = _pool_files(backend)
    warm = evaluate(warm_mapping_ids(), backend=backend)
    assert [os.path.basename(p) for p in warm] == [path]
    second = np.arange(N, dtype=np.float64)
    got, mapping = evaluate(borrowed_mapping_id(a=second), backend=backend)
    assert got == float(second.sum())  # the new data, through the old mapping
    assert mapping == next(iter(warm.values()))  # kept alive meanwhile: the id is its own


@pytest.mark.parametrize("holder", [keep, head], ids=["kept-in-a-global", "returned-as-a-view"])
def test_a_mapping_still_viewed_is_not_kept_warm(backend, holder):
    evaluate(holder(a=np.ones(N)), backend=backend)
    assert evaluate(warm_mapping_ids(), backend=backend) == {}


def test_a_worker_unmaps_a_kept_mapping_once_the_pool_removes_its_file(backend):
    evaluate(total(a=np.ones(N)), backend=backend)
    pool = backend.segment_pool()
    assert pool is not None
    with pool._lock:
        pool._trim(0)  # as when the pool is over its limit
    assert _pool_files(backend) == []
    evaluate(total(a=np.ones(10)), backend=backend)  # any job: it looks as it ends
    assert evaluate(warm_mapping_ids(), backend=backend) == {}


def test_a_free_segment_is_emptied_before_it_is_unlinked(backend):
    evaluate(total(a=np.ones(N)), backend=backend)
    pool = backend.segment_pool()
    assert pool is not None and pool._free
    fd = os.open(pool._free[0].path, os.O_RDONLY)  # as a worker's kept mapping holds it
    try:
        assert os.fstat(fd).st_size >= N * 8
        with pool._lock:
            pool._trim(0)
        assert os.fstat(fd).st_size == 0  # its pages are freed, whoever holds it
    finally:
        os.close(fd)


def _released_borrowed(tmp_path, size: int, name: str, limit: int = 1 << 30) -> tuple[str, object]:
    """A borrowed segment of ``size`` bytes, mapped here as a job's argument (pool of ``limit``)."""
    path = tmp_path / name
    path.write_bytes(b"\0" * size)
    segment = shared._Segment(str(path), [0], [size], pooled=limit)
    data = pickle_with_buffer(np.zeros(size // 8))
    value = shared.load_segment(data, segment, own=True)
    return str(path), value


def _warm_for_test(monkeypatch, most: int = 64):
    warm = shared._WarmMappings(1 << 30, most)
    monkeypatch.setattr(shared, "_warm", warm)
    return warm


def _release_new(tmp_path, size: int, name: str, limit: int = 1 << 30) -> str:
    path, value = _released_borrowed(tmp_path, size, name, limit)
    del value  # the job's argument goes: nothing views the mapping
    assert shared.release_borrowed() == ([path], [])
    return path


def test_warm_mappings_keep_the_newest_within_the_pools_limit(tmp_path, monkeypatch):
    warm = _warm_for_test(monkeypatch)
    paths = [_release_new(tmp_path, 8 * KIB, f"seg-{i}", limit=2 * 8 * KIB) for i in range(3)]
    assert warm.limit == 2 * 8 * KIB  # as the segments said
    assert list(warm._maps) == paths[1:]  # the oldest went
    assert warm.take(paths[1], 16 * KIB) is None  # too short for that need: unmapped
    assert list(warm._maps) == paths[2:]
    assert warm.take(paths[2], 8 * KIB) is not None
    assert warm._maps == {} and warm._bytes == 0


def test_warm_mappings_keep_the_newest_within_their_count(tmp_path, monkeypatch):
    warm = _warm_for_test(monkeypatch, most=2)
    paths = [_release_new(tmp_path, KIB, f"seg-{i}") for i in range(3)]
    assert list(warm._maps) == paths[1:]


def test_warm_mappings_go_once_their_files_are_gone(tmp_path, monkeypatch):
    warm = _warm_for_test(monkeypatch)
    paths = [_release_new(tmp_path, KIB, f"seg-{i}") for i in range(2)]
    os.unlink(paths[0])
    shared.sweep_warm()
    assert list(warm._maps) == paths[1:]


def test_a_mapping_that_cannot_be_checked_in_place_is_unmapped(tmp_path, monkeypatch):
    warm = shared._WarmMappings(limit=1 << 20)
    monkeypatch.setattr(shared, "_warm", warm)

    class NoResize:
        closed = False

        def resize(self, size: int) -> None:
            raise SystemError("mmap: resizing not available--no mremap()")

        def close(self) -> None:
            self.closed = True

    mapping = NoResize()
    shared._let_go(shared._Borrowed(str(tmp_path / "x"), mapping, 4096))  # type: ignore[arg-type]
    assert mapping.closed and warm._maps == {}


# -- arguments copied into a reused segment, with numpy or through a memoryview ----------


@task
def checksum(a: np.ndarray) -> tuple[float, float, float]:
    return float(a.sum()), float(a[0]), float(a[-1])


@pytest.mark.parametrize("with_numpy", [True, False], ids=["numpy", "memoryview"])
def test_an_argument_arrives_whole_in_a_reused_segment(backend, monkeypatch, with_numpy):
    import sys

    from daglite._job import segment_pool

    made = _count_new_files(monkeypatch)
    n = 3 * N + 1001
    evaluate(checksum(a=np.ones(n)), backend=backend)
    copies: list[int] = []
    real_copyto = np.copyto
    monkeypatch.setattr(
        np, "copyto", lambda dst, src: copies.append(src.nbytes) or real_copyto(dst, src)
    )
    if not with_numpy:  # a caller that never loaded numpy copies through a memoryview
        without = {k: v for k, v in sys.modules.items() if k != "numpy"}
        monkeypatch.setattr(segment_pool, "sys", type("Sys", (), {"modules": without}))
    data = np.arange(n, dtype=np.float64)
    assert evaluate(checksum(a=data), backend=backend) == (float(data.sum()), 0.0, n - 1.0)
    assert len(made) == 1  # the second went into the first one's file
    assert copies == ([data.nbytes] if with_numpy else [])


@task(memory="4GB")
def warm_count_under_a_memory_limit() -> int:
    from daglite._job import shared as worker_shared

    return len(worker_shared._warm._maps)


def test_a_job_with_a_memory_limit_runs_with_no_mapping_kept_warm(backend):
    # Its worker's resident memory, which the limit watches, would count them.
    evaluate(total(a=np.ones(N)), backend=backend)
    assert len(evaluate(warm_mapping_ids(), backend=backend)) == 1
    assert evaluate(warm_count_under_a_memory_limit(), backend=backend) == 0


def _record_removals(monkeypatch) -> list[bool]:
    from daglite._job import segment_pool

    emptied: list[bool] = []
    real = segment_pool._Pooled.remove

    def spy(self, empty: bool = False) -> None:
        emptied.append(empty)
        real(self, empty)

    monkeypatch.setattr(segment_pool._Pooled, "remove", spy)
    return emptied


@pytest.mark.parametrize(
    ("holder", "empty"), [(total, True), (keep, False)], ids=["let-go", "kept"]
)
def test_a_segment_over_the_limit_is_emptied_only_if_its_worker_let_go(monkeypatch, holder, empty):
    emptied = _record_removals(monkeypatch)
    with ProcessBackend(max_workers=1, shared_memory_threshold=KIB, shared_memory_pool=KIB) as b:
        assert evaluate(holder(a=np.ones(N)), backend=b) == N
        assert emptied == [empty]  # a worker's kept mapping of it then holds no memory
