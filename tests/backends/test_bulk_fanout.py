"""Wide fan-outs nobody watches element by element travel in slices (the bulk path).

The bulk path is taken when no plugin waits for single elements to start
(``before_node_execute``), answers for them (a cache) or handles events; an
``after_node_execute`` watcher gets each element's hook from the slices
(``test_watched_bulk.py``). These tests check that it is invisible: same results, same order,
same errors naming the element, same retries and logging as the per-element
path, on every backend.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading

import pytest

from daglite import EvaluationError, TaskError, WorkerLostError, evaluate, task
from daglite.backends import ProcessBackend
from daglite.plugins.hooks import hook_impl


@task
def inc(x: int) -> int:
    return x + 1


@task
def affine(x: int, a: int, b: int = 0) -> int:
    return a * x + b


@task
def scaled(k: int, *, x: int) -> int:
    return x * k


@task
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad element {x}")
    return x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


class AfterCounter:
    """Watches every element's end: on threads and processes it is served from slices."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    @hook_impl
    def after_node_execute(self, key):
        self.keys.append(key)


def test_results_keep_order_on_every_backend(backend):
    dag = inc.product(x=list(range(1000)))
    assert evaluate(dag, backend=backend) == [x + 1 for x in range(1000)]


def test_product_of_several_parameters_and_fixed_values(backend):
    dag = affine.product(x=[1, 2, 3], a=[10, 100], b=5)
    expected = [a * x + 5 for x in (1, 2, 3) for a in (10, 100)]
    assert evaluate(dag, backend=backend) == expected


def test_zip_and_map_and_join(backend):
    dag = affine.zip(x=[1, 2, 3], a=[4, 5, 6]).map(inc).join(total)
    assert evaluate(dag, backend=backend) == (4 + 1) + (10 + 1) + (18 + 1)


def test_keyword_only_parameter_and_dynamic_width(backend):
    @task
    def make(n: int) -> list[int]:
        return list(range(n))

    dag = scaled.product(x=make(50), k=3)
    assert evaluate(dag, backend=backend) == [3 * x for x in range(50)]


class StartWatcher:
    """Waits for single elements to start: its presence turns the bulk path off."""

    @hook_impl
    def before_node_execute(self, key):
        pass


def test_same_answers_with_and_without_watching_plugins(backend):
    dag = affine.product(x=list(range(200)), a=[2], b=[1, 2]).join(total)
    counter = AfterCounter()
    watched = evaluate(dag, backend=backend, plugins=[counter])
    per_element = evaluate(dag, backend=backend, plugins=[StartWatcher()])
    assert evaluate(dag, backend=backend) == watched == per_element
    assert len(counter.keys) == 401  # every element seen by the hook, plus the join


def test_failing_element_is_named_by_its_key(backend):
    dag = fail_on.product(x=list(range(100)), bad=[37])
    with pytest.raises(TaskError, match=r"key 'fail_on\[37\]'") as info:
        evaluate(dag, backend=backend)
    assert isinstance(info.value.error, ValueError)
    assert info.value.key == "fail_on[37]"


def test_continue_keeps_every_other_element(backend):
    dag = fail_on.product(x=list(range(60)), bad=[7])
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=backend, on_error="continue")
    err = info.value
    assert list(err.errors) == ["fail_on[7]"]
    assert len(err.results) == 59
    assert err.results["fail_on[8]"] == 8


def test_failing_element_is_retried_alone(backend, tmp_path):
    @task(retries=1)
    def flaky(x: int, directory: str) -> int:
        marker = os.path.join(directory, f"failed-{x}")
        if x % 10 == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first attempt fails")
        return x

    dag = flaky.product(x=list(range(40)), directory=[str(tmp_path)])
    assert evaluate(dag, backend=backend) == list(range(40))
    assert sorted(os.listdir(tmp_path)) == sorted(f"failed-{x}" for x in (3, 13, 23, 33))


def test_log_records_name_the_element(backend, caplog):
    @task
    def chatty(x: int) -> int:
        logging.getLogger("bulk.test").warning("element %d", x)
        return x

    with caplog.at_level(logging.WARNING, logger="bulk.test"):
        assert evaluate(chatty.product(x=list(range(20))), backend=backend) == list(range(20))
    keys = {r.getMessage(): r.daglite_key for r in caplog.records if r.name == "bulk.test"}
    assert keys == {f"element {x}": f"chatty[{x}]" for x in range(20)}


class NoPickle:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


@pytest.fixture
def pool():
    with ProcessBackend(max_workers=2) as backend:
        yield backend


def test_unpicklable_element_fails_only_itself_on_processes(pool):
    @task
    def kind(x: object) -> str:
        return type(x).__name__

    values: list[object] = [1, "a", NoPickle(), 2.5]
    with pytest.raises(EvaluationError) as info:
        evaluate(kind.product(x=values), backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["kind[2]"]
    assert "parameter 'x'" in str(err.errors["kind[2]"])
    assert err.results == {"kind[0]": "int", "kind[1]": "str", "kind[3]": "float"}


def test_unpicklable_result_fails_only_its_element_on_processes(pool):
    @task
    def make(x: int) -> object:
        return threading.Lock() if x == 5 else x

    with pytest.raises(EvaluationError) as info:
        evaluate(make.product(x=list(range(10))), backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["make[5]"]
    assert "result" in str(err.errors["make[5]"])
    assert len(err.results) == 9
    with pytest.raises(TypeError):
        pickle.dumps(threading.Lock())  # the premise of the test


def test_worker_death_in_a_slice_fails_only_the_dying_element(pool):
    @task
    def die_at(x: int) -> int:
        if x == 11:
            os._exit(1)
        return x

    with pytest.raises(EvaluationError) as info:
        evaluate(die_at.product(x=list(range(24))), backend=pool, on_error="continue")
    err = info.value
    assert list(err.errors) == ["die_at[11]"]
    assert isinstance(err.errors["die_at[11]"], WorkerLostError)
    assert sorted(err.results.values()) == [x for x in range(24) if x != 11]
    assert evaluate(inc.product(x=[1, 2]), backend=pool) == [2, 3]  # the pool recovered


def test_keyword_only_fanned_parameter(backend):
    @task
    def kw_first(*, x: int) -> int:
        return 2 * x

    assert evaluate(kw_first.product(x=[1, 2, 3]), backend=backend) == [2, 4, 6]
