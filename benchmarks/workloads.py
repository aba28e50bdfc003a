"""Workload definitions: one function per (workload, system, mode).

Every case function takes ``(size, param)`` and returns a ``Timing``:

* ``startup``: seconds from "no pool" to the first result of a warm-up run
  (pool or cluster start, worker spawn, first round trip): "time to first result";
* ``measured``: seconds of the measured section only, with the pool warm;
* ``result``: what the measured section computed, checked against ``expected``.

``benchmarks/_case.py`` runs exactly one case in a fresh interpreter, so no
case inherits warm caches, pools or imports from another.

Systems: ``daglite``, ``cf`` (raw ``concurrent.futures``, or a plain loop for
``inline``), ``loky``, ``dask`` (``dask.delayed``/``dask.bag`` with the local
schedulers, or ``dask.delayed`` on a distributed ``LocalCluster`` in mode
``dask``), ``client`` (raw ``Client.submit`` on the same ``LocalCluster``) and
``pipe`` (a plain pickle round trip through a ``multiprocessing`` pipe).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import gc
import inspect
import multiprocessing
import queue
import time
import tracemalloc
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, NamedTuple

from daglite import evaluate, task
from daglite.plugins.hooks import hook_impl

WORKERS = 2  # the reference machine has 2 cores; every pool gets the same count
EVENTS_TASKS = 100
DATA_HOPS = 4
CPU_TASKS = 8
MATMUL_TASKS = 8
MATMUL_N = 1_500
# The sweep's data: 6,000 x 20 with 3 classes makes GridSearchCV(n_jobs=2) take
# about 1 s here (0.4-0.6 s when nothing else runs). Three classes add work per
# fit, not bytes: each daglite call ships X (960 kB) to its worker, so a bigger
# X would time pickling rather than native pools (joblib memmaps X over 1 MB).
SWEEP_SIZE = 6_000
SWEEP_FEATURES = 20
SWEEP_CLASSES = 3
SWEEP_FOLDS = 3
# 6 x 2 x 2 = 24 combinations of LogisticRegression's parameters, 3 folds each.
SWEEP_GRID: dict[str, list[Any]] = {
    "C": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
    "fit_intercept": [True, False],
    "class_weight": [None, "balanced"],
}

WORKLOADS = (
    "fanout",
    "mapped",
    "watched",
    "chain",
    "cpu",
    "events",
    "build",
    "data",
    "sklearn",
    "matmul",
)
MODES: dict[str, tuple[str, ...]] = {
    "fanout": ("inline", "threads", "processes", "dask"),
    "mapped": ("inline", "threads", "processes"),
    "chain": ("inline", "threads", "processes", "dask"),
    "cpu": ("inline", "threads", "processes", "dask"),
    "events": ("inline", "threads", "processes", "dask"),
    "build": ("calls", "product"),
    "data": ("bytes", "numpy"),
    "watched": ("processes",),
    "sklearn": ("processes",),
    "matmul": ("processes",),
}
SYSTEMS = ("daglite", "cf", "loky", "dask", "client", "pipe")
# Sizes some peers are measured at instead, with the reason printed beside the figure.
SIZE_CAPS: dict[tuple[str, str], tuple[int, str]] = {
    ("build", "dask"): (
        5_000,
        "dask.delayed measured at 5,000 nodes: joining N delayed objects is superlinear here",
    ),
}


class Timing(NamedTuple):
    """What one case reports."""

    measured: float
    startup: float
    result: Any
    extra: dict[str, Any] = {}


class Skip(Exception):
    """The case cannot run here (missing optional dependency); the message says why."""


# -- the work itself (module level: importable by every kind of worker) ---------------


def inc(x: int) -> int:
    return x + 1


def total(xs: list[int]) -> int:
    return sum(xs)


def nap(x: int) -> int:
    time.sleep(0.05)
    return x


def nap_ident(x: Any) -> Any:
    time.sleep(0.05)
    return x


def spin_base(k: int) -> int:
    """Pure-Python CPU work: about ``k`` loop iterations."""
    s = 0
    for j in range(k):
        s += j * j % 7
    return s


def spin(i: int, k: int) -> int:
    return i + spin_base(k)


def ident(x: Any) -> Any:
    return x


def pairs(xs: list[tuple[int, int]]) -> tuple[int, int]:
    return sum(a for a, _ in xs), sum(b for _, b in xs)


inc_t = task(inc)
total_t = task(total)
nap_t = task(nap)
nap_ident_t = task(nap_ident)
spin_t = task(spin)
ident_t = task(ident)


@task
def chatty(i: int, m: int) -> int:
    from daglite.plugins.reporters import get_reporter

    reporter = get_reporter()
    for e in range(m):
        reporter.report("tick", {"e": e})
    return i


# -- expected results -----------------------------------------------------------------


def expected(workload: str, size: int, param: int) -> Any:
    """The value every system must compute for this workload and size."""
    if workload in ("fanout", "mapped", "watched"):
        return size * (size + 1) // 2
    if workload == "chain":
        return size
    if workload == "cpu":
        return sum(range(size)) + size * spin_base(param)
    if workload == "events":
        return [sum(range(size)), size * param]
    if workload == "build":
        return size + 1
    if workload == "data":
        return [True, param]
    if workload == "sklearn":
        return _sweep_reference(size, param)
    if workload == "matmul":
        return size
    raise ValueError(f"unknown workload {workload!r}")


# -- registry ---------------------------------------------------------------------------

CASES: dict[tuple[str, str, str], Callable[[int, int], Timing]] = {}
APIS: dict[tuple[str, str, str], str] = {}


def case(workload: str, system: str, modes: tuple[str, ...], api: str) -> Callable[[Any], Any]:
    """Register ``fn(size, param, mode[, system])`` as the cases ``(workload, system, mode)``."""

    def register(fn: Callable[..., Timing]) -> Callable[..., Timing]:
        takes_system = "system" in inspect.signature(fn).parameters
        for mode in modes:
            opts = {"system": system} if takes_system else {}
            CASES[(workload, system, mode)] = functools.partial(fn, mode=mode, **opts)
            APIS[(workload, system, mode)] = api.format(mode=mode)
        return fn

    return register


def _clock(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


# -- daglite ------------------------------------------------------------------------------


def _daglite_backend(mode: str) -> Any:
    if mode == "inline":
        from daglite.backends import InlineBackend

        return InlineBackend()
    if mode == "threads":
        from daglite.backends import ThreadBackend

        return ThreadBackend(max_workers=WORKERS)
    if mode == "processes":
        from daglite.backends import ProcessBackend

        return ProcessBackend(max_workers=WORKERS)
    raise ValueError(mode)


@contextmanager
def _daglite(mode: str, sample: Any = None) -> Any:
    """A started daglite backend, warm; yields (backend, startup seconds).

    ``sample``: a small value of the type the measured section will pass, sent
    through every worker during the warm-up (workers import numpy then, not later).
    """
    cluster = None
    try:
        t0 = time.perf_counter()
        if mode == "dask":
            cluster = _local_cluster()
            backend = _daglite_dask_backend(cluster)
        else:
            backend = _daglite_backend(mode)
        with backend:
            if sample is None:
                warm = nap_t.product(x=list(range(2 * WORKERS))).join(total_t)
                assert evaluate(warm, backend=backend) == sum(range(2 * WORKERS))
            else:
                warm_data = nap_ident_t.product(x=[sample] * (2 * WORKERS))
                assert len(evaluate(warm_data, backend=backend)) == 2 * WORKERS
            startup = time.perf_counter() - t0
            yield backend, startup
    finally:
        if cluster is not None:
            cluster.close()


def _daglite_dask_backend(cluster: Any) -> Any:
    try:
        from daglite.backends.dask import DaskBackend
    except Exception as exc:  # not written yet, or broken
        raise Skip(f"daglite.backends.dask unavailable: {type(exc).__name__}: {exc}") from exc
    try:
        return DaskBackend(address=cluster.scheduler_address)
    except Exception as exc:
        raise Skip(f"DaskBackend(address=...) failed: {type(exc).__name__}: {exc}") from exc


ALL_MODES = ("inline", "threads", "processes", "dask")


@case("fanout", "daglite", ALL_MODES, "inc(i) x N, total(list) on backend={mode!r}")
def _daglite_fanout(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        dag = total_t([inc_t(i) for i in range(size)])
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


@case("mapped", "daglite", ALL_MODES[:3], "inc.product(x=range(N)).join(total), backend={mode!r}")
def _daglite_mapped(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        dag = inc_t.product(x=range(size)).join(total_t)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


class _NoOpTimer:
    """The guide's TimingPlugin shape, doing nothing: what watching costs daglite."""

    @hook_impl
    def after_node_execute(self, key, metadata, inputs, result, duration, reporter=None):
        pass


@case("watched", "daglite", ("processes",), "mapped, with a no-op after_node_execute plugin")
def _daglite_watched(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        dag = inc_t.product(x=range(size)).join(total_t)
        plugins = [_NoOpTimer()]
        measured, result = _clock(lambda: evaluate(dag, backend=backend, plugins=plugins))
        gc.collect()
        tracemalloc.start()
        evaluate(dag, backend=backend, plugins=plugins)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Timing(measured, startup, result, {"peak_bytes_per_element": peak / size})


@case("chain", "daglite", ALL_MODES, "inc(inc(...inc(0))) N deep, backend={mode!r}")
def _daglite_chain(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        dag = inc_t(0)
        for _ in range(size - 1):
            dag = inc_t(dag)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


@case("cpu", "daglite", ALL_MODES, "spin.product(i=range(8), k=K).join(total), backend={mode!r}")
def _daglite_cpu(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        dag = spin_t.product(i=range(size), k=param).join(total_t)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


class _Counter:
    """A plugin whose handler counts events, in the caller's process."""

    def __init__(self) -> None:
        self.count = 0

    def register_event_handlers(self, registry: Any) -> None:
        registry.on("tick", self.on_tick)

    def on_tick(self, event: dict[str, Any]) -> None:
        self.count += 1


@case("events", "daglite", ALL_MODES, "report('tick') x M in N tasks, registry.on handler")
def _daglite_events(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode) as (backend, startup):
        counter = _Counter()
        dag = chatty.product(i=range(size), m=param).join(total_t)
        measured, result = _clock(lambda: evaluate(dag, backend=backend, plugins=[counter]))
    return Timing(measured, startup, [result, counter.count])


def _build_daglite(size: int, mode: str) -> Any:
    from daglite.graph.builder import build_graph

    if mode == "calls":
        root = total_t([inc_t(i) for i in range(size)])
    else:
        root = inc_t.product(x=range(size)).join(total_t)
    return build_graph([root], lambda t: "inline")


def _graph_nodes(graph: Any) -> int:
    return int(graph.node_count) if graph.node_count else len(graph)


def _build_case(build: Callable[[], Any], count: Callable[[Any], int], size: int) -> Timing:
    build()  # warm-up: imports, signature caches
    startup = 0.0
    measured, graph = _clock(build)
    nodes = count(graph)
    del graph
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    graph = build()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del graph
    extra = {"bytes_per_node": (after - before) / size, "peak_bytes_per_node": peak / size}
    return Timing(measured, startup, nodes, extra)


@case("build", "daglite", ("calls", "product"), "{mode}: futures + build_graph (no run)")
def _daglite_build(size: int, param: int, mode: str) -> Timing:
    return _build_case(lambda: _build_daglite(size, mode), _graph_nodes, size)


def _data_value(kind: str, nbytes: int) -> Any:
    if kind == "numpy":
        try:
            import numpy as np
        except ImportError as exc:
            raise Skip("numpy is not installed") from exc
        return np.arange(nbytes // 8, dtype=np.float64)
    block = bytes(range(256))
    return block * (nbytes // 256)


def _same(a: Any, b: Any) -> bool:
    if type(a).__module__ == "numpy":
        import numpy as np

        return bool(np.array_equal(a, b))
    return bool(a == b)


@case("data", "daglite", ("bytes", "numpy"), "ident() chain of 4 on backend='processes'")
def _daglite_data(size: int, param: int, mode: str) -> Timing:
    value = _data_value(mode, param)
    with _daglite("processes", value[:16]) as (backend, startup):
        dag = ident_t(value)
        for _ in range(DATA_HOPS - 1):
            dag = ident_t(dag)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, [_same(result, value), param])


# -- concurrent.futures and loky ---------------------------------------------------------


@contextmanager
def _pool(system: str, mode: str, sample: Any = None) -> Any:
    """A warm executor; yields (executor or None for inline, startup seconds)."""
    t0 = time.perf_counter()
    if mode == "inline":
        yield None, 0.0
        return
    if system == "loky":
        from loky import get_reusable_executor

        pool = get_reusable_executor(max_workers=WORKERS, reuse=False)
    elif mode == "threads":
        pool = cf.ThreadPoolExecutor(WORKERS)
    else:
        pool = cf.ProcessPoolExecutor(WORKERS)
    try:
        warm = [pool.submit(nap, i) for i in range(2 * WORKERS)]
        assert sum(f.result() for f in warm) == sum(range(2 * WORKERS))
        if sample is not None:
            warm_data = [pool.submit(nap_ident, sample) for _ in range(2 * WORKERS)]
            assert all(_same(f.result(), sample) for f in warm_data)
        yield pool, time.perf_counter() - t0
    finally:
        pool.shutdown(wait=True)


CF_MODES = ("inline", "threads", "processes")


@case("fanout", "cf", CF_MODES, "{mode}: [submit(inc, i)] then sum of results")
@case("fanout", "loky", ("processes",), "loky reusable executor: [submit(inc, i)], sum")
def _pool_fanout(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    with _pool(system, mode) as (pool, startup):
        if pool is None:
            measured, result = _clock(lambda: total([inc(i) for i in range(size)]))
        else:
            measured, result = _clock(
                lambda: total([f.result() for f in [pool.submit(inc, i) for i in range(size)]])
            )
    return Timing(measured, startup, result)


def _chunksize(size: int) -> int:
    return max(1, -(-size // (4 * WORKERS)))


@case("watched", "cf", ("processes",), "Executor.map(inc, range(N), chunksize=N/(4*workers))")
@case("mapped", "cf", CF_MODES, "{mode}: Executor.map(inc, range(N), chunksize=N/(4*workers))")
@case("mapped", "loky", ("processes",), "loky: map(inc, range(N), chunksize=N/(4*workers))")
def _pool_mapped(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    with _pool(system, mode) as (pool, startup):
        if pool is None:
            measured, result = _clock(lambda: total(list(map(inc, range(size)))))
        else:
            chunk = _chunksize(size)
            measured, result = _clock(
                lambda: total(list(pool.map(inc, range(size), chunksize=chunk)))
            )
    return Timing(measured, startup, result)


@case("chain", "cf", CF_MODES, "{mode}: x = submit(inc, x).result(), N times")
@case("chain", "loky", ("processes",), "loky: x = submit(inc, x).result(), N times")
def _pool_chain(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    def run() -> int:
        x = 0
        for _ in range(size):
            x = inc(x) if pool is None else pool.submit(inc, x).result()
        return x

    with _pool(system, mode) as (pool, startup):
        measured, result = _clock(run)
    return Timing(measured, startup, result)


@case("cpu", "cf", CF_MODES, "{mode}: [submit(spin, i, K)], sum")
@case("cpu", "loky", ("processes",), "loky: [submit(spin, i, K)], sum")
def _pool_cpu(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    with _pool(system, mode) as (pool, startup):
        if pool is None:
            measured, result = _clock(lambda: total([spin(i, param) for i in range(size)]))
        else:
            measured, result = _clock(
                lambda: total(
                    [f.result() for f in [pool.submit(spin, i, param) for i in range(size)]]
                )
            )
    return Timing(measured, startup, result)


@case("data", "cf", ("bytes", "numpy"), "ProcessPoolExecutor: x = submit(ident, x).result() x4")
@case("data", "loky", ("bytes", "numpy"), "loky: x = submit(ident, x).result() x4")
def _pool_data(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    value = _data_value(mode, param)

    def run() -> Any:
        x = value
        for _ in range(DATA_HOPS):
            x = pool.submit(ident, x).result()
        return x

    with _pool(system, "processes", value[:16]) as (pool, startup):
        measured, result = _clock(run)
    return Timing(measured, startup, [_same(result, value), param])


# Events without daglite: the user's own channel from worker to caller.

_EVENT_QUEUE: Any = None


def _set_event_queue(q: Any) -> None:
    global _EVENT_QUEUE
    _EVENT_QUEUE = q


def chatty_plain(i: int, m: int) -> int:
    put = _EVENT_QUEUE.put
    for e in range(m):
        put({"type": "tick", "e": e})
    return i


@case(
    "events",
    "cf",
    CF_MODES,
    "{mode}: tasks put each event on a queue (mp.Queue for processes); caller drains it",
)
def _cf_events(size: int, param: int, mode: str) -> Timing:
    counter = _Counter()
    want = size * param
    t0 = time.perf_counter()
    if mode == "inline":

        class _Direct:
            put = staticmethod(counter.on_tick)

        _set_event_queue(_Direct)
        measured, result = _clock(lambda: total([chatty_plain(i, param) for i in range(size)]))
        return Timing(measured, 0.0, [result, counter.count])
    if mode == "threads":
        q: Any = queue.SimpleQueue()
        _set_event_queue(q)
        pool: Any = cf.ThreadPoolExecutor(WORKERS)
    else:
        ctx = multiprocessing.get_context()
        q = ctx.Queue()
        pool = cf.ProcessPoolExecutor(
            WORKERS, mp_context=ctx, initializer=_set_event_queue, initargs=(q,)
        )
    try:
        warm = [pool.submit(nap, i) for i in range(2 * WORKERS)]
        assert sum(f.result() for f in warm) == sum(range(2 * WORKERS))
        startup = time.perf_counter() - t0

        def run() -> int:
            futures = [pool.submit(chatty_plain, i, param) for i in range(size)]
            while counter.count < want:
                try:
                    counter.on_tick(q.get(timeout=30))
                except queue.Empty:
                    break  # lost events: the count will say so
            return total([f.result() for f in futures])

        measured, result = _clock(run)
    finally:
        pool.shutdown(wait=True)
    return Timing(measured, startup, [result, counter.count])


# -- plain pickle through a pipe -----------------------------------------------------------


def _echo(conn: Any) -> None:
    while True:
        item = conn.recv()
        if item is None:
            return
        conn.send(item)


@case("data", "pipe", ("bytes", "numpy"), "Pipe: send(x); x = recv(), x4 (a child echoes)")
def _pipe_data(size: int, param: int, mode: str) -> Timing:
    value = _data_value(mode, param)
    t0 = time.perf_counter()
    ctx = multiprocessing.get_context()
    here, there = ctx.Pipe()
    child = ctx.Process(target=_echo, args=(there,))
    child.start()
    try:
        here.send(value[:16])
        assert _same(here.recv(), value[:16])
        startup = time.perf_counter() - t0

        def run() -> Any:
            x = value
            for _ in range(DATA_HOPS):
                here.send(x)
                x = here.recv()
            return x

        measured, result = _clock(run)
    finally:
        here.send(None)
        child.join(30)
    return Timing(measured, startup, [_same(result, value), param])


# -- dask: local schedulers -----------------------------------------------------------------


def _dask() -> Any:
    try:
        import dask
    except ImportError as exc:
        raise Skip("dask is not installed") from exc
    return dask


_DASK_SCHEDULER = {"inline": "sync", "threads": "threads", "processes": "processes"}


@contextmanager
def _dask_local(mode: str) -> Any:
    """Yields (compute(obj) -> value, startup seconds), warm, for a local scheduler."""
    dask = _dask()
    t0 = time.perf_counter()
    scheduler = _DASK_SCHEDULER[mode]
    pool: Any = None
    if mode == "threads":
        pool = cf.ThreadPoolExecutor(WORKERS)
    elif mode == "processes":
        # Reuse one pool across computes (dask would otherwise start one per call).
        ctx = multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn"))
        pool = cf.ProcessPoolExecutor(WORKERS, mp_context=ctx)

    def compute(obj: Any) -> Any:
        opts: dict[str, Any] = {"scheduler": scheduler}
        if pool is not None:
            opts.update(pool=pool, num_workers=WORKERS)
        return dask.compute(obj, **opts)[0]

    try:
        delayed = dask.delayed
        warm = delayed(total)([delayed(nap)(i) for i in range(2 * WORKERS)])
        assert compute(warm) == sum(range(2 * WORKERS))
        yield compute, time.perf_counter() - t0
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


@case("fanout", "dask", CF_MODES, "dask.delayed, scheduler={mode}")
def _dask_fanout(size: int, param: int, mode: str) -> Timing:
    with _dask_local(mode) as (compute, startup):
        d = _dask().delayed
        dag = d(total)([d(inc)(i) for i in range(size)])
        measured, result = _clock(lambda: compute(dag))
    return Timing(measured, startup, result)


@case("mapped", "dask", CF_MODES, "dask.bag.from_sequence(npartitions=4*workers).map(inc).sum()")
def _dask_mapped(size: int, param: int, mode: str) -> Timing:
    with _dask_local(mode) as (compute, startup):
        import dask.bag as db

        bag = db.from_sequence(range(size), npartitions=min(size, 4 * WORKERS)).map(inc).sum()
        measured, result = _clock(lambda: compute(bag))
    return Timing(measured, startup, result)


@case("chain", "dask", CF_MODES, "dask.delayed chain, scheduler={mode}")
def _dask_chain(size: int, param: int, mode: str) -> Timing:
    with _dask_local(mode) as (compute, startup):
        d = _dask().delayed
        dag = d(inc)(0)
        for _ in range(size - 1):
            dag = d(inc)(dag)
        measured, result = _clock(lambda: compute(dag))
    return Timing(measured, startup, result)


@case("cpu", "dask", CF_MODES, "dask.delayed spin x8, scheduler={mode}")
def _dask_cpu(size: int, param: int, mode: str) -> Timing:
    with _dask_local(mode) as (compute, startup):
        d = _dask().delayed
        dag = d(total)([d(spin)(i, param) for i in range(size)])
        measured, result = _clock(lambda: compute(dag))
    return Timing(measured, startup, result)


def _build_dask(size: int) -> Any:
    d = _dask().delayed
    root = d(total)([d(inc)(i) for i in range(size)])
    return dict(root.__dask_graph__())


@case("build", "dask", ("calls", "product"), "dask.delayed: N calls + join, graph as dict")
def _dask_build(size: int, param: int, mode: str) -> Timing:
    return _build_case(lambda: _build_dask(size), len, size)


# -- dask distributed ---------------------------------------------------------------------


def _local_cluster() -> Any:
    try:
        from distributed import LocalCluster
    except ImportError as exc:
        raise Skip("dask[distributed] is not installed") from exc
    import logging

    return LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )


@contextmanager
def _client() -> Any:
    """Yields (client, startup seconds) on a fresh, warm 2-worker LocalCluster."""
    from distributed import Client

    t0 = time.perf_counter()
    cluster = _local_cluster()
    client = Client(cluster)
    try:
        warm = client.submit(total, [client.submit(nap, i, pure=False) for i in range(2 * WORKERS)])
        assert warm.result() == sum(range(2 * WORKERS))
        yield client, time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()


@case("fanout", "client", ("dask",), "client.submit(inc, i) x N, submit(total, futures)")
def _client_fanout(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):

        def run() -> int:
            futures = [client.submit(inc, i, pure=False) for i in range(size)]
            return int(client.submit(total, futures, pure=False).result())

        measured, result = _clock(run)
    return Timing(measured, startup, result)


@case("chain", "client", ("dask",), "x = client.submit(inc, x) N times (deps on the cluster)")
def _client_chain(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):

        def run() -> int:
            x: Any = 0
            for _ in range(size):
                x = client.submit(inc, x, pure=False)
            return int(x.result())

        measured, result = _clock(run)
    return Timing(measured, startup, result)


@case("cpu", "client", ("dask",), "client.submit(spin, i, K) x8, gather, sum")
def _client_cpu(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):

        def run() -> int:
            futures = [client.submit(spin, i, param, pure=False) for i in range(size)]
            return total(client.gather(futures))

        measured, result = _clock(run)
    return Timing(measured, startup, result)


@case("fanout", "dask", ("dask",), "dask.delayed computed on the LocalCluster client")
def _dist_fanout(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):
        d = _dask().delayed
        dag = d(total)([d(inc)(i) for i in range(size)])
        measured, result = _clock(lambda: client.compute(dag).result())
    return Timing(measured, startup, result)


@case("chain", "dask", ("dask",), "dask.delayed chain computed on the LocalCluster client")
def _dist_chain(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):
        d = _dask().delayed
        dag = d(inc)(0)
        for _ in range(size - 1):
            dag = d(inc)(dag)
        measured, result = _clock(lambda: client.compute(dag).result())
    return Timing(measured, startup, result)


@case("cpu", "dask", ("dask",), "dask.delayed spin x8 computed on the LocalCluster client")
def _dist_cpu(size: int, param: int, mode: str) -> Timing:
    with _client() as (client, startup):
        d = _dask().delayed
        dag = d(total)([d(spin)(i, param) for i in range(size)])
        measured, result = _clock(lambda: client.compute(dag).result())
    return Timing(measured, startup, result)


# -- native thread pools: a scikit-learn sweep and numpy matmuls (issue 12) -----------------
# Both time what BLAS/OpenMP pools cost when every worker starts one thread per
# core. Peers: GridSearchCV(n_jobs=2) and loky, which cap each worker's pools;
# ProcessPoolExecutor, which does not.


def _sklearn() -> Any:
    try:
        import sklearn
    except ImportError as exc:
        raise Skip("scikit-learn is not installed") from exc
    return sklearn


def _sweep_data(size: int, features: int) -> tuple[Any, Any]:
    from sklearn.datasets import make_classification

    return make_classification(
        n_samples=size,
        n_features=features,
        n_informative=features // 2,
        n_classes=SWEEP_CLASSES,
        random_state=0,
    )


def _sweep_params() -> list[dict[str, Any]]:
    from sklearn.model_selection import ParameterGrid

    return list(ParameterGrid(SWEEP_GRID))  # GridSearchCV's own order


def _sweep_search(n_jobs: int | None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    model = LogisticRegression(max_iter=1000)
    return GridSearchCV(model, SWEEP_GRID, cv=SWEEP_FOLDS, n_jobs=n_jobs, refit=False)


def _sweep_reference(size: int, features: int) -> dict[str, Any]:
    """Best parameters found by a sequential GridSearchCV on the same data."""
    _sklearn()
    X, y = _sweep_data(size, features)
    return dict(_sweep_search(None).fit(X, y).best_params_)


def fit_fold(params: dict[str, Any], fold: int, X: Any, y: Any) -> float:
    """Accuracy of LogisticRegression(**params) on one of GridSearchCV's cv folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    train, test = list(StratifiedKFold(SWEEP_FOLDS).split(X, y))[fold]
    model = LogisticRegression(max_iter=1000, **params).fit(X[train], y[train])
    return float(model.score(X[test], y[test]))


def best_params(scores: list[float], params: list[dict[str, Any]]) -> dict[str, Any]:
    """The first combination with the highest mean score (GridSearchCV's rule)."""
    folds = SWEEP_FOLDS
    means = [sum(scores[i : i + folds]) / folds for i in range(0, len(scores), folds)]
    return dict(params[means.index(max(means))])


def warm_sklearn(i: int) -> int:
    """Warm-up call: imports scikit-learn in the worker and fits once."""
    X, y = _sweep_data(90, 8)
    fit_fold({"C": 1.0}, 0, X, y)
    return nap(i)


fit_fold_t = task(fit_fold)
best_params_t = task(best_params)
warm_sklearn_t = task(warm_sklearn)


@case("sklearn", "daglite", ("processes",), "fit_fold.product(params=24, fold=3), best")
def _daglite_sklearn(size: int, param: int, mode: str) -> Timing:
    _sklearn()
    X, y = _sweep_data(size, param)
    params = _sweep_params()
    with _daglite(mode) as (backend, startup):
        warm = warm_sklearn_t.product(i=list(range(2 * WORKERS)))
        assert evaluate(warm, backend=backend) == list(range(2 * WORKERS))
        scores = fit_fold_t.product(params=params, fold=list(range(SWEEP_FOLDS)), X=X, y=y)
        dag = best_params_t(scores, params)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


@case("sklearn", "loky", ("processes",), "GridSearchCV(n_jobs=2, cv=3, refit=False) (joblib/loky)")
def _gridsearch_sklearn(size: int, param: int, mode: str) -> Timing:
    _sklearn()
    X, y = _sweep_data(size, param)
    t0 = time.perf_counter()
    _sweep_search(WORKERS).fit(*_sweep_data(90, 8))  # starts joblib's workers, imports
    startup = time.perf_counter() - t0
    measured, search = _clock(lambda: _sweep_search(WORKERS).fit(X, y))
    return Timing(measured, startup, dict(search.best_params_))


def matmul(i: int, n: int) -> bool:
    """One n x n product of random matrices, checked on a corner."""
    import numpy as np

    rng = np.random.default_rng(i)
    a, b = rng.random((n, n)), rng.random((n, n))
    c = a @ b
    corner = np.array([[a[r] @ b[:, k] for k in range(4)] for r in range(4)])
    return bool(np.allclose(c[:4, :4], corner))


matmul_t = task(matmul)


def _matmul_sample() -> Any:
    try:
        import numpy as np
    except ImportError as exc:
        raise Skip("numpy is not installed") from exc
    return np.zeros(2)


@case("matmul", "daglite", ("processes",), "matmul.product(i=range(8), n=1500), count")
def _daglite_matmul(size: int, param: int, mode: str) -> Timing:
    with _daglite(mode, _matmul_sample()) as (backend, startup):
        dag = matmul_t.product(i=list(range(size)), n=param).join(total_t)
        measured, result = _clock(lambda: evaluate(dag, backend=backend))
    return Timing(measured, startup, result)


@case("matmul", "cf", ("processes",), "ProcessPoolExecutor: [submit(matmul, i, 1500)], count")
def _pool_matmul(size: int, param: int, mode: str, system: str = "cf") -> Timing:
    with _pool(system, mode, _matmul_sample()) as (pool, startup):
        measured, result = _clock(
            lambda: sum(f.result() for f in [pool.submit(matmul, i, param) for i in range(size)])
        )
    return Timing(measured, startup, result)


def _joblib() -> Any:
    try:
        import joblib
    except ImportError as exc:
        raise Skip("joblib is not installed (it comes with scikit-learn)") from exc
    return joblib


@case("matmul", "loky", ("processes",), "joblib.Parallel(n_jobs=2) on loky: matmul x8, count")
def _joblib_matmul(size: int, param: int, mode: str) -> Timing:
    # joblib, not a bare loky executor: joblib is what caps the workers' pools
    # (it hands loky OMP_NUM_THREADS and friends = cores // n_jobs).
    joblib = _joblib()
    _matmul_sample()
    parallel = joblib.Parallel(n_jobs=WORKERS)  # reuses loky's executor across calls
    t0 = time.perf_counter()
    assert sum(parallel(joblib.delayed(nap)(i) for i in range(2 * WORKERS))) == sum(
        range(2 * WORKERS)
    )
    assert all(parallel(joblib.delayed(matmul)(i, 8) for i in range(2 * WORKERS)))  # numpy
    startup = time.perf_counter() - t0
    measured, result = _clock(
        lambda: sum(parallel(joblib.delayed(matmul)(i, param) for i in range(size)))
    )
    return Timing(measured, startup, result)


__all__ = [
    "APIS",
    "CASES",
    "MODES",
    "SIZE_CAPS",
    "SYSTEMS",
    "WORKLOADS",
    "Skip",
    "Timing",
    "expected",
]
