"""``evaluate`` / ``evaluate_async`` semantics, mostly on the inline backend.

Tests taking the ``backend`` fixture check behaviour that must be identical on
every backend; their tasks are module-level and free of shared state so they
also run in worker processes.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest

from daglite import (
    BackendError,
    EvaluationError,
    GraphError,
    TaskError,
    TaskTimeoutError,
    evaluate,
    evaluate_async,
    task,
)
from daglite.graph.base import GraphMetadata
from daglite.plugins.hooks import hook_impl

# -- tasks (module level, picklable) ----------------------------------------------


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def inc(x: int) -> int:
    """Add one to x."""
    return x + 1


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@task
def pair(a: str, b: int) -> tuple[str, int]:
    return (a, b)


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def fmt(prefix: str, value: int, suffix: str = "") -> str:
    return f"{prefix}{value}{suffix}"


@task
def fail(x: int) -> int:
    raise ValueError(f"bad input {x}")


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


class Recorder:
    """Collects every ``before_node_execute`` call: (key, metadata)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, GraphMetadata]] = []

    @hook_impl
    def before_node_execute(self, key: str, metadata: GraphMetadata) -> None:
        self.seen.append((key, metadata))

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.seen]


def _counting(name: str = "counted"):
    """A task that counts its calls in a list (inline only: shared state)."""
    calls: list[Any] = []

    def body(x: int) -> int:
        calls.append(x)
        return x * 10

    return task(name=name)(body), calls


# -- basics -------------------------------------------------------------------------


def test_evaluate_runs_a_chain(backend):
    assert evaluate(add(add(x=1, y=2), 10), backend=backend) == 13


def test_evaluate_with_a_backend_instance():
    from daglite.backends import InlineBackend

    assert evaluate(inc(1), backend=InlineBackend()) == 2


def test_evaluate_a_task_instead_of_a_future_hints_at_calling_it():
    with pytest.raises(TypeError, match="did you call the task"):
        evaluate(inc)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        (lambda: [inc(1), inc(2)], [2, 3]),
        (lambda: (inc(1), "plain", inc(3)), (2, "plain", 4)),
        (lambda: {"a": inc(1), "b": 5}, {"a": 2, "b": 5}),
    ],
    ids=["list", "tuple", "dict"],
)
def test_evaluate_returns_the_shape_it_was_given(shape, expected):
    result = evaluate(shape())
    assert result == expected
    assert type(result) is type(expected)


def test_evaluate_async_returns_the_result():
    assert asyncio.run(evaluate_async(add(inc(1), 10))) == 12
    assert asyncio.run(evaluate_async({"k": inc(1)})) == {"k": 2}


def test_async_tasks_run_under_evaluate_and_evaluate_async():
    dag = add(async_double(2), async_double(3))
    assert evaluate(dag) == 10
    assert asyncio.run(evaluate_async(dag)) == 10


def test_async_task_on_every_backend(backend):
    assert evaluate(async_double.product(x=[1, 2, 3]), backend=backend) == [2, 4, 6]


def test_positional_only_and_var_args_reach_the_function():
    @task
    def collect(a: int, /, *rest: int, **named: int) -> int:
        return a * 1000 + sum(rest) * 10 + sum(named.values())

    assert evaluate(collect(1, 2, 3, z=4)) == 1054


@task
def gather(name: str, d: int = 5, *rest: int, k: int = 1, **named: int) -> tuple:
    return (name, d, rest, k, named)


def test_parameters_before_var_args_go_positionally_on_every_backend(backend):
    # Passed by keyword, ``name`` and ``d`` would collide with the *rest values.
    dag = [gather("a", 1, 2, 3), gather("b"), gather("c", 2, 3, k=4, z=9)]
    assert evaluate(dag, backend=backend) == [
        ("a", 1, (2, 3), 1, {}),
        ("b", 5, (), 1, {}),
        ("c", 2, (3,), 4, {"z": 9}),
    ]


def test_invalid_on_error_is_rejected():
    with pytest.raises(ValueError, match="on_error"):
        evaluate(inc(1), on_error="ignore")  # type: ignore[arg-type]


# -- composition ----------------------------------------------------------------


def test_then_fills_the_first_unbound_parameter_in_signature_order():
    assert evaluate(inc(1).then(fmt, value=7)) == "27"  # prefix receives 2
    assert evaluate(inc(1).then(fmt, prefix="n=")) == "n=2"
    assert evaluate(inc(1).then(fmt, prefix="<", suffix=">")) == "<2>"


def test_then_skips_parameters_fixed_by_partial():
    assert evaluate(inc(1).then(fmt.partial(prefix="#"))) == "#2"


def test_product_order_is_itertools_product_in_keyword_order(backend):
    letters, digits = ["x", "y", "z"], [1, 2]
    got = evaluate(pair.product(b=digits, a=letters), backend=backend)
    expected = [(a, b) for b, a in itertools.product(digits, letters)]
    assert got == expected


def test_product_fans_out_lists_tuples_ranges_and_fixes_other_values():
    assert evaluate(add.product(x=(1, 2), y=range(10, 30, 10))) == [11, 21, 12, 22]
    assert evaluate(pair.product(a="ab", b=[1, 2])) == [("ab", 1), ("ab", 2)]
    assert evaluate(fmt.product(prefix=["<", "("], value=3)) == ["<3", "(3"]


def test_product_over_a_future_has_a_run_time_width():
    assert evaluate(inc.product(x=numbers(4))) == [1, 2, 3, 4]
    assert evaluate(inc.product(x=numbers(0))) == []
    assert evaluate(add.product(x=numbers(2), y=[10, 20])) == [10, 20, 11, 21]


def test_zip_pairs_by_position(backend):
    assert evaluate(add.zip(x=[1, 2, 3], y=(10, 20, 30)), backend=backend) == [11, 22, 33]


def test_zip_with_fixed_values():
    assert evaluate(fmt.zip(prefix=["a", "b"], value=range(2), suffix="!")) == ["a0!", "b1!"]


def test_zip_mismatch_over_a_future_fails_at_run_time_with_task_error():
    dag = add.zip(x=numbers(2), y=[1, 2, 3])
    with pytest.raises(TaskError, match=r"task 'add'") as info:
        evaluate(dag)
    assert isinstance(info.value.error, GraphError)
    assert "x=2" in str(info.value.error) and "y=3" in str(info.value.error)


def test_fan_out_over_a_non_list_result_is_a_task_error():
    with pytest.raises(TaskError, match=r"task 'inc'.*'x'"):
        evaluate(inc.product(x=inc(1)))


def test_map_applies_a_task_to_each_element():
    assert evaluate(numbers(3).map(inc)) == [1, 2, 3]
    assert evaluate(numbers(3).map(fmt, prefix="#")) == ["#0", "#1", "#2"]
    assert evaluate(inc.product(x=[1, 2]).map(inc).map(inc)) == [4, 5]


def test_join_passes_the_whole_list(backend):
    assert evaluate(inc.product(x=range(5)).join(total), backend=backend) == 15


def test_join_with_extra_keywords():
    @task
    def weighted(xs: list[int], weight: int) -> int:
        return sum(xs) * weight

    assert evaluate(numbers(4).map(inc).join(weighted, weight=2)) == 20


def test_mapped_results_keep_input_order(backend):
    size = 200
    assert evaluate(inc.product(x=range(size)), backend=backend) == list(range(1, size + 1))
    assert evaluate(numbers(size).map(inc), backend=backend) == list(range(1, size + 1))


def test_futures_nested_in_list_and_dict_arguments():
    @task
    def summarize(parts: dict[str, list[int]]) -> dict[str, int]:
        return {k: sum(v) for k, v in parts.items()}

    dag = summarize({"a": [inc(1), inc(2), 100], "b": [inc(0)]})
    assert evaluate(dag) == {"a": 105, "b": 1}
    assert evaluate(total([inc(i) for i in range(4)])) == 10
    assert evaluate(total((inc(1), 5))) == 7  # type: ignore[arg-type]


def test_a_future_used_twice_runs_once():
    counted, calls = _counting()
    shared = counted(1)
    assert evaluate([add(shared, shared), inc(shared), shared]) == [20, 11, 10]
    assert calls == [1]


def test_a_task_called_twice_with_same_arguments_runs_twice():
    counted, calls = _counting()
    assert evaluate(add(counted(1), counted(1))) == 20
    assert calls == [1, 1]


def test_partial_task_evaluates_with_fixed_values():
    add_ten = add.partial(y=10)
    assert evaluate(add_ten(1)) == 11
    assert evaluate(add_ten.product(x=[1, 2])) == [11, 12]
    assert evaluate(add.partial(y=inc(1))(x=1)) == 3


# -- failures --------------------------------------------------------------------


def test_task_error_names_task_and_key_and_keeps_the_original(backend):
    with pytest.raises(TaskError) as info:
        evaluate(inc(fail(3)), backend=backend)
    err = info.value
    assert (err.task_name, err.key) == ("fail", "fail")
    assert "'fail'" in str(err)
    assert type(err.error) is ValueError
    assert str(err.error) == "bad input 3"
    assert err.__cause__ is err.error


def test_task_error_of_a_mapped_element_has_an_indexed_key():
    with pytest.raises(TaskError) as info:
        evaluate(fail.product(x=[1]))
    assert info.value.key == "fail[0]"
    assert "fail[0]" in str(info.value)


def test_dependents_of_a_failed_task_do_not_run():
    counted, calls = _counting()
    with pytest.raises(TaskError):
        evaluate(counted(fail(1)))
    assert calls == []


def test_retries_rerun_a_failing_task_until_it_succeeds():
    attempts: list[int] = []

    @task(retries=2)
    def flaky(x: int) -> int:
        attempts.append(x)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return x

    assert evaluate(flaky(5)) == 5
    assert attempts == [5, 5, 5]


def test_exceeding_retries_raises_task_error_with_the_last_error():
    attempts: list[int] = []

    @task(retries=1)
    def always_fails() -> int:
        attempts.append(1)
        raise ConnectionError(f"attempt {len(attempts)}")

    with pytest.raises(TaskError) as info:
        evaluate(always_fails())
    assert len(attempts) == 2
    assert isinstance(info.value.error, ConnectionError)
    assert str(info.value.error) == "attempt 2"


def test_with_options_retries_apply_to_the_copy_only():
    attempts: list[int] = []

    def flaky() -> int:
        attempts.append(1)
        if len(attempts) <= 2:
            raise ConnectionError(f"attempt {len(attempts)}")
        return len(attempts)

    plain = task(flaky)
    with pytest.raises(TaskError):
        evaluate(plain())
    assert evaluate(plain.with_options(retries=1)()) == 3


def test_timeout_raises_task_timeout_error():
    release = threading.Event()

    @task(timeout=0.2)
    def blocked() -> int:
        release.wait(30)
        return 1

    try:
        with pytest.raises(TaskTimeoutError) as info:
            evaluate(blocked())
    finally:
        release.set()
    err = info.value
    assert isinstance(err, TaskError)
    assert (err.task_name, err.key) == ("blocked", "blocked")
    assert isinstance(err.error, TimeoutError)
    assert err.__cause__ is err.error
    _join_abandoned_threads("daglite-task-blocked")


def test_timeout_of_an_async_task():
    release = asyncio.Event()  # never set: wait_for cancels the coroutine

    @task(timeout=0.2)
    async def stuck() -> int:
        await release.wait()
        return 1

    with pytest.raises(TaskTimeoutError, match="stuck"):
        evaluate(stuck())


def test_a_fast_task_with_a_timeout_succeeds():
    assert evaluate(inc.with_options(timeout=30)(1)) == 2


def _join_abandoned_threads(name: str) -> None:
    for thread in threading.enumerate():
        if thread.name == name:
            thread.join(30)
            assert not thread.is_alive()


# -- on_error="continue" ----------------------------------------------------------


def test_on_error_continue_reports_everything_together():
    counted, calls = _counting("unrelated")
    dag = {
        "ok": inc(1),
        "bad": inc(fail(1)),
        "other": counted(7),
        "mapped": fail.product(x=[1, 2]),
        "partly": inc.product(x=[1, 2]),
    }
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, on_error="continue")
    err = info.value
    assert calls == [7]  # an unrelated branch still ran
    assert set(err.errors) == {"fail", "fail-2[0]", "fail-2[1]"}
    assert all(isinstance(e, TaskError) for e in err.errors.values())
    assert err.errors["fail"].key == "fail"
    assert isinstance(err.errors["fail-2[1]"].error, ValueError)
    assert err.exceptions == list(err.errors.values())
    assert err.skipped == ["inc-2"]
    assert err.results == {"inc": 2, "unrelated": 70, "inc-3[0]": 2, "inc-3[1]": 3}
    assert "3 task(s) failed" in str(err)


def test_on_error_continue_skips_everything_downstream_of_a_failure():
    with pytest.raises(EvaluationError) as info:
        evaluate(total([inc(inc(fail(1))), inc(2)]), on_error="continue")
    err = info.value
    assert list(err.errors) == ["fail"]
    assert sorted(err.skipped) == ["inc", "inc-2", "total"]
    assert err.results == {"inc-3": 3}


def test_on_error_continue_without_failures_returns_normally():
    assert evaluate([inc(1), inc(2)], on_error="continue") == [2, 3]


def test_on_error_continue_has_the_same_shape_on_every_backend(backend):
    dag = [inc(1), inc(fail(2)), fail.product(x=[3])]
    with pytest.raises(EvaluationError) as info:
        evaluate(dag, backend=backend, on_error="continue")
    err = info.value
    assert set(err.errors) == {"fail", "fail-2[0]"}
    assert err.results == {"inc": 2}
    assert err.skipped == ["inc-2"]
    assert str(err.errors["fail-2[0]"].error) == "bad input 3"


def test_evaluation_error_is_not_a_task_error():
    with pytest.raises(EvaluationError) as info:
        evaluate(fail(1), on_error="continue")
    assert not isinstance(info.value, TaskError)


# -- backends by name ------------------------------------------------------------


def test_unknown_backend_lists_the_available_names():
    with pytest.raises(BackendError) as info:
        evaluate(inc(1), backend="no-such-backend")
    message = str(info.value)
    assert "no-such-backend" in message
    for name in ("inline", "threads", "processes"):
        assert name in message


def test_unknown_backend_suggests_a_close_name():
    with pytest.raises(BackendError, match="did you mean 'threads'"):
        evaluate(inc(1), backend="thread")


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("sequential", "inline"),
        ("synchronous", "inline"),
        ("threading", "threads"),
        ("multiprocessing", "processes"),
    ],
)
def test_backend_aliases(alias, canonical):
    recorder = Recorder()
    assert evaluate(add(1, 2), backend=alias, plugins=[recorder]) == 3
    assert [m.backend_name for _, m in recorder.seen] == [canonical]


def test_daglite_backend_environment_variable_selects_the_default(monkeypatch):
    monkeypatch.setenv("DAGLITE_BACKEND", "threads")
    recorder = Recorder()
    assert evaluate(inc(1), plugins=[recorder]) == 2
    assert recorder.seen[0][1].backend_name == "threads"
    monkeypatch.setenv("DAGLITE_BACKEND", "no-such-backend")
    with pytest.raises(BackendError, match="no-such-backend"):
        evaluate(inc(1))


def test_default_backend_is_inline(monkeypatch):
    monkeypatch.delenv("DAGLITE_BACKEND", raising=False)
    recorder = Recorder()
    evaluate(inc(1), plugins=[recorder])
    assert recorder.seen[0][1].backend_name == "inline"


def test_a_tasks_own_backend_wins_over_the_evaluate_backend():
    on_threads = inc.with_options(name="on_threads", backend="threads")
    recorder = Recorder()
    assert evaluate(add(on_threads(1), inc(1)), backend="inline", plugins=[recorder]) == 4
    names = {m.name: m.backend_name for _, m in recorder.seen}
    assert names == {"on_threads": "threads", "inc": "inline", "add": "inline"}


def test_backend_options_need_a_backend_name():
    from daglite.backends import InlineBackend

    with pytest.raises(TypeError, match="backend name"):
        evaluate(inc(1), backend=InlineBackend(), max_workers=2)


# -- keys and metadata -----------------------------------------------------------


def _keyed_dag():
    shared = inc(0)
    return total([inc(shared), add(shared, 1), *[inc(i) for i in range(3)]]), inc.product(
        x=numbers(2)
    )


def test_keys_are_unique_and_stable_across_runs(backend):
    first, second = Recorder(), Recorder()
    evaluate(_keyed_dag(), backend=backend, plugins=[first])
    evaluate(_keyed_dag(), backend=backend, plugins=[second])
    assert len(first.keys) == len(set(first.keys)) == 10
    assert sorted(first.keys) == sorted(second.keys)


def test_mapped_nodes_are_keyed_name_index():
    recorder = Recorder()
    evaluate(inc.product(x=[5, 6, 7]), plugins=[recorder])
    assert sorted(recorder.keys) == ["inc[0]", "inc[1]", "inc[2]"]
    assert {m.kind for _, m in recorder.seen} == {"map"}


def test_metadata_names_describes_and_places_each_node():
    recorder = Recorder()
    renamed = add.with_options(name="plus", description="Adds")
    evaluate(renamed(inc(1), 2), plugins=[recorder])
    meta = dict(recorder.seen)
    assert meta["inc"].name == "inc"
    assert meta["inc"].description == "Add one to x."
    assert meta["inc"].kind == "task"
    assert meta["inc"].backend_name == "inline"
    assert (meta["plus"].name, meta["plus"].description) == ("plus", "Adds")


def test_a_shared_future_is_one_key():
    recorder = Recorder()
    shared = inc(0)
    evaluate([add(shared, shared), shared], plugins=[recorder])
    assert sorted(recorder.keys) == ["add", "inc"]
