"""Static proof that ``evaluate()``'s return type follows the task's annotation.

mypy and pyright check the ``assert_type`` calls below; pytest runs the same
functions on the inline backend, so every line is also exercised for real.
"""

from __future__ import annotations

from typing_extensions import assert_type

from daglite import TaskFuture, evaluate, task


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def label(n: int) -> str:
    return f"n={n}"


@task
async def double(x: int) -> float:
    return x * 2.0


@task(name="ratio", retries=1)
def ratio(x: int, y: int) -> float:
    return x / y


@task
def total(xs: list[int]) -> int:
    return sum(xs)


def test_sync_task_result_type() -> None:
    future = add(x=1, y=2)
    assert_type(future, TaskFuture[int])
    result = evaluate(future)
    assert_type(result, int)
    assert result == 3


def test_async_task_result_type_is_unwrapped() -> None:
    future = double(x=2)
    assert_type(future, TaskFuture[float])
    result = evaluate(future)
    assert_type(result, float)
    assert result == 4.0


def test_task_with_options_keeps_result_type() -> None:
    assert_type(evaluate(ratio(x=1, y=2)), float)
    assert_type(evaluate(add.with_options(name="plus")(x=1, y=2)), int)


def test_product_and_zip_give_lists() -> None:
    products = add.product(x=[1, 2], y=[10, 20])
    assert_type(products, TaskFuture[list[int]])
    result = evaluate(products)
    assert_type(result, list[int])
    assert result == [11, 21, 12, 22]
    assert_type(evaluate(label.zip(n=[1, 2])), list[str])


def test_then_map_join_follow_the_next_task() -> None:
    chained = add(x=1, y=2).then(label)
    assert_type(chained, TaskFuture[str])
    assert_type(evaluate(chained), str)
    mapped = add.product(x=[1, 2], y=[0]).map(label)
    assert_type(mapped, TaskFuture[list[str]])
    assert evaluate(mapped) == ["n=1", "n=2"]
    joined = add.product(x=[1, 2], y=[0]).join(total)
    assert_type(joined, TaskFuture[int])
    assert evaluate(joined) == 3


def test_tuple_list_dict_shapes() -> None:
    pair = evaluate((add(x=1, y=1), label(n=1)))
    assert_type(pair, tuple[int, str])
    assert pair == (2, "n=1")
    triple = evaluate((add(x=1, y=1), label(n=1), double(x=1)))
    assert_type(triple, tuple[int, str, float])
    many = evaluate([add(x=1, y=1), add(x=2, y=2)])
    assert_type(many, list[int])
    assert many == [2, 4]
    named = evaluate({"a": label(n=1), "b": label(n=2)})
    assert_type(named, dict[str, str])
    assert named == {"a": "n=1", "b": "n=2"}


def test_partial_keeps_result_type() -> None:
    add_one = add.partial(y=1)
    assert_type(evaluate(add_one(x=1)), int)
