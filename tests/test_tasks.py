"""``@task``, ``Task`` options and argument binding (nothing here runs a graph)."""

from __future__ import annotations

import pytest

from daglite import GraphError, Task, TaskFuture, task


@task
def add(x: int, y: int) -> int:
    """Add two numbers.

    The second line is not part of the description.
    """
    return x + y


@task
def scale(x: int, factor: int = 2, *, offset: int = 0) -> int:
    return x * factor + offset


# -- the decorator ------------------------------------------------------------------


def test_bare_decorator_makes_a_task_with_defaults():
    assert isinstance(add, Task)
    assert add.name == "add"
    assert add.retries == 0
    assert add.timeout is None
    assert add.backend is None
    assert add.fixed == {}


def test_description_defaults_to_first_docstring_line():
    assert add.description == "Add two numbers."
    assert scale.description == ""


def test_decorator_with_options_sets_them():
    @task(name="fetch", description="Download a page", backend="threads", retries=2, timeout=10)
    def fetch(url: str) -> bytes:
        """Ignored because a description is given."""
        return url.encode()

    assert fetch.name == "fetch"
    assert fetch.description == "Download a page"
    assert fetch.backend == "threads"
    assert fetch.retries == 2
    assert fetch.timeout == 10.0


def test_decorator_accepts_async_functions():
    @task
    async def fetch(url: str) -> bytes:
        return url.encode()

    @task(retries=1)
    async def fetch_again(url: str) -> bytes:
        return url.encode()

    assert isinstance(fetch, Task)
    assert fetch.is_async
    assert fetch_again.is_async and fetch_again.retries == 1
    assert not add.is_async


def test_func_is_the_undecorated_function():
    assert add.func(1, 2) == 3
    assert not isinstance(add.func, Task)


def test_unknown_decorator_option_suggests_the_right_one():
    with pytest.raises(TypeError, match=r"'retry'.*did you mean 'retries'"):
        task(retry=2)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"retries": -1}, "retries"), ({"timeout": 0}, "timeout"), ({"timeout": -2.0}, "timeout")],
)
def test_invalid_option_values_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        task(**options)(lambda: None)


# -- calling binds, never runs --------------------------------------------------------


def test_calling_a_task_runs_nothing_and_returns_a_future():
    calls = []

    @task
    def record(x: int) -> int:
        calls.append(x)
        return x

    future = record(1)
    assert isinstance(future, TaskFuture)
    assert calls == []


def test_binding_fills_positional_keyword_and_default_values():
    future = scale(3, offset=1)
    assert future.kwargs == {"x": 3, "factor": 2, "offset": 1}


def test_future_as_argument_is_kept_as_an_edge():
    first = add(1, 2)
    second = add(first, 10)
    assert second.kwargs["x"] is first


def test_missing_required_argument_names_task_and_parameter():
    with pytest.raises(TypeError, match=r"task 'add'.*'y'"):
        add(1)


def test_unknown_argument_names_task_and_parameter_with_suggestion():
    with pytest.raises(TypeError, match=r"task 'add'.*'yy'.*did you mean 'y'"):
        add(1, yy=2)


def test_too_many_positionals_names_the_task():
    with pytest.raises(TypeError, match=r"task 'add'.*2 positional.*3"):
        add(1, 2, 3)


def test_multiple_values_for_a_parameter_names_it():
    with pytest.raises(TypeError, match=r"task 'add'.*multiple values.*'x'"):
        add(1, x=2)


def test_positional_only_parameter_cannot_be_passed_by_keyword():
    @task
    def collect(a: int, /, *rest: int, **named: int) -> int:
        return a + sum(rest) + sum(named.values())

    collect(1, 2, 3, z=4)  # binds like Python
    # As in Python, a=1 lands in **named, so the positional-only 'a' is missing.
    with pytest.raises(TypeError, match=r"task 'collect'.*'a'"):
        collect(a=1)
    with pytest.raises(TypeError, match=r"task 'collect'.*'a'"):
        collect()


def test_a_future_is_never_truthy_or_falsy():
    with pytest.raises(TypeError, match="evaluate"):
        bool(add(1, 2))


# -- partial ----------------------------------------------------------------------


def test_partial_fixes_parameters():
    add_ten = add.partial(y=10)
    assert add_ten.fixed == {"y": 10}
    assert add_ten(5).kwargs == {"x": 5, "y": 10}
    assert add_ten(x=5).kwargs == {"x": 5, "y": 10}
    assert add.fixed == {}


def test_passing_a_fixed_parameter_again_raises_naming_task_and_parameter():
    add_ten = add.partial(y=10)
    with pytest.raises(TypeError, match=r"task 'add'.*'y'.*partial"):
        add_ten(x=1, y=2)
    with pytest.raises(TypeError, match=r"task 'add'.*'y'.*partial"):
        add_ten.partial(y=3)


def test_partial_with_unknown_parameter_raises():
    with pytest.raises(TypeError, match=r"task 'add'.*'z'"):
        add.partial(z=1)


def test_partial_accepts_a_future():
    base = add(1, 2)
    assert add.partial(y=base)(x=1).kwargs["y"] is base


# -- with_options ----------------------------------------------------------------


def test_with_options_returns_a_new_task_and_leaves_the_original():
    changed = add.with_options(name="plus", retries=3, timeout=5, backend="threads")
    assert changed is not add
    assert (changed.name, changed.retries, changed.timeout, changed.backend) == (
        "plus",
        3,
        5.0,
        "threads",
    )
    assert (add.name, add.retries, add.timeout, add.backend) == ("add", 0, None, None)
    assert changed.func is add.func
    assert changed.description == add.description


def test_with_options_keeps_fixed_parameters():
    changed = add.partial(y=1).with_options(retries=1)
    assert changed.fixed == {"y": 1}


def test_with_options_rejects_unknown_names():
    with pytest.raises(TypeError, match=r"task 'add'.*'timout'.*did you mean 'timeout'"):
        add.with_options(timout=1)


# -- fan-out binding ----------------------------------------------------------------


def test_product_binds_at_call_time():
    with pytest.raises(TypeError, match=r"task 'add'.*'z'"):
        add.product(x=[1], z=[2])
    with pytest.raises(TypeError, match=r"task 'add'.*'y'"):
        add.product(x=[1, 2])


def test_product_needs_a_sequence():
    with pytest.raises(TypeError, match=r"task 'add'.*product"):
        add.product(x=1, y=2)


def test_zip_length_mismatch_names_parameters_and_lengths_at_build_time():
    with pytest.raises(GraphError, match=r"task 'add'.*x=2, y=3"):
        add.zip(x=[1, 2], y=[1, 2, 3])


def test_zip_length_mismatch_is_also_a_value_error():
    with pytest.raises(ValueError):
        add.zip(x=(1,), y=range(2))


def test_then_without_a_free_parameter_raises():
    with pytest.raises(TypeError, match=r"task 'add'.*unbound"):
        add(1, 2).then(add, x=1, y=2)
