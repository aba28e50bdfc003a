"""gh-15: memory= and resources= options, and bad input caught before anything runs."""

from __future__ import annotations

import pytest

from daglite import task
from daglite._limits import format_bytes, parse_memory
from daglite._run.resources import ResourceGate, check_requests
from daglite.engine import evaluate


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2GB", 2 * 10**9),
        ("2 gb", 2 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("100kB", 100_000),
        ("3G", 3 * 10**9),
        (4096, 4096),
        (1e6, 1_000_000),
    ],
)
def test_parse_memory_accepts_sizes(given: object, expected: int) -> None:
    assert parse_memory(given, "memory") == expected


@pytest.mark.parametrize("bad", ["2XB", "", "GB", "-1GB", "0", 0, -5, True, "1e3", float("nan")])
def test_parse_memory_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="memory must be a positive size"):
        parse_memory(bad, "memory")


def test_format_bytes_is_readable() -> None:
    assert format_bytes(2 * 10**9) == "2 GB"
    assert format_bytes(150 * 10**6) == "150 MB"
    assert format_bytes(12) == "12 B"


def test_task_memory_option_is_parsed_and_copied() -> None:
    @task(memory="2GB")
    def fit(x: int) -> int:
        return x

    assert fit.memory == 2 * 10**9
    assert fit.with_options(memory="1MiB").memory == 2**20
    assert fit.with_options(name="other").memory == 2 * 10**9
    assert task(fit.func).memory is None


@pytest.mark.parametrize("bad", ["2XB", 0, -1, "-3MB"])
def test_task_memory_option_rejects_bad_input_naming_task_and_parameter(bad: object) -> None:
    def fit(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=r"task 'fit': memory must be a positive size"):
        task(memory=bad)(fit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task 'fit': memory"):
        task(fit).with_options(memory=bad)


def test_task_resources_option_is_checked_and_copied() -> None:
    @task(resources={"gpu": 1, "licence": 0.5})
    def train(x: int) -> int:
        return x

    assert train.resources == {"gpu": 1, "licence": 0.5}
    assert train.with_options(retries=1).resources == {"gpu": 1, "licence": 0.5}
    assert train.with_options(resources={}).resources is None


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"gpu": 0}, r"task 'train': resources\['gpu'\] must be a positive number, got 0"),
        ({"gpu": -1}, r"task 'train': resources\['gpu'\] must be a positive number"),
        ({"gpu": "1"}, r"task 'train': resources\['gpu'\] must be a positive number"),
        ({"gpu": True}, r"task 'train': resources\['gpu'\] must be a positive number"),
        ({"": 1}, r"task 'train': resources: a resource name must be a non-empty str"),
        (["gpu"], r"task 'train': resources must be a dict"),
    ],
)
def test_task_resources_option_rejects_bad_input(bad: object, match: str) -> None:
    def train(x: int) -> int:
        return x

    with pytest.raises(ValueError, match=match):
        task(resources=bad)(train)  # type: ignore[arg-type]


def _runs_nothing() -> tuple[list[int], object]:
    ran: list[int] = []

    @task
    def first(x: int) -> int:
        ran.append(x)
        return x

    @task(resources={"gpu": 3})
    def train(x: int) -> int:
        ran.append(x)
        return x

    return ran, train(first(1))


@pytest.mark.parametrize("backend", ["inline", "threads"])
def test_request_over_capacity_fails_before_anything_runs(backend: str) -> None:
    ran, future = _runs_nothing()
    with pytest.raises(ValueError, match=r"task 'train'.* 3 of 'gpu'.*capacity of 2"):
        evaluate(future, backend=backend, resources={"gpu": 2})  # type: ignore[call-overload]
    assert ran == []


def test_unknown_resource_fails_before_anything_runs() -> None:
    ran, future = _runs_nothing()
    with pytest.raises(ValueError, match=r"task 'train'.*unknown resource 'gpu'.*: cpu\)"):
        evaluate(future, resources={"cpu": 4})  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"task 'train'.*unknown resource 'gpu'.*: none\)"):
        evaluate(future)  # type: ignore[call-overload]
    assert ran == []


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"memory_per_task": "lots"}, r"evaluate\(\): memory_per_task must be a positive size"),
        ({"memory_per_task": 0}, r"evaluate\(\): memory_per_task must be a positive size"),
        ({"resources": {"gpu": 0}}, r"evaluate\(\): resources\['gpu'\] must be a positive"),
        ({"resources": 2}, r"evaluate\(\): resources must be a dict"),
    ],
)
def test_bad_evaluate_limits_fail_before_anything_runs(
    options: dict[str, object], match: str
) -> None:
    ran: list[int] = []

    @task
    def first(x: int) -> int:
        ran.append(x)
        return x

    with pytest.raises(ValueError, match=match):
        evaluate(first(1), **options)  # type: ignore[arg-type]
    assert ran == []


class _Call:
    def __init__(self, resources: dict[str, float] | None) -> None:
        self.task = task(lambda: None, resources=resources)  # type: ignore[call-overload]


def test_gate_admits_up_to_capacity_and_in_order() -> None:
    gate = ResourceGate({"gpu": 2})
    a, b, c, d = (_Call({"gpu": 1}) for _ in range(4))
    free = _Call(None)
    assert gate.admit([a, b, c, free]) == [a, b, free]  # type: ignore[list-item]
    assert gate.admit([d]) == []  # type: ignore[list-item]  # c waits before it
    assert list(gate.waiting) == [c, d]
    assert gate.release(a) == [c]  # type: ignore[arg-type]
    assert gate.release(a) == []  # type: ignore[arg-type]  # twice: nothing more
    assert gate.release(b) == [d]  # type: ignore[arg-type]
    assert gate.used == {"gpu": 2}


def test_gate_lets_smaller_requests_pass_a_big_one_that_does_not_fit() -> None:
    gate = ResourceGate({"gpu": 2})
    small, big, other = _Call({"gpu": 1}), _Call({"gpu": 2}), _Call({"gpu": 1})
    assert gate.admit([small, big, other]) == [small]  # type: ignore[list-item]
    done = gate.release(small)  # type: ignore[arg-type]
    assert done == [big]
    assert list(gate.waiting) == [other]


def test_check_requests_names_task_and_resource() -> None:
    t = task(lambda: None, name="t", resources={"gpu": 1})  # type: ignore[call-overload]
    check_requests([t], {"gpu": 1})
    with pytest.raises(ValueError, match="task 't'.*'gpu'"):
        check_requests([t], {"gpu": 0.5})
