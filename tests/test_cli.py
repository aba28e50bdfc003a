"""The ``daglite`` command, run in-process through ``main([...])`` and once as ``python -m``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import daglite
from daglite.cli import main

TARGET = "clidag_target"

TARGET_SOURCE = textwrap.dedent(
    '''
    from __future__ import annotations

    import sys
    from pathlib import Path
    from typing import Optional

    from daglite import task
    from daglite.plugins.hooks import hook_impl


    @task
    def square(x: int) -> int:
        return x * x


    @task
    def total(xs: list[int]) -> int:
        return sum(xs)


    @task
    def echo(values: dict) -> dict:
        return values


    @task
    def shout(word: str) -> str:
        return word.upper()


    @task
    def boom(x: int) -> int:
        raise ValueError(f"boom on {x}\\nsecond line")


    @task
    def numbers(n: int) -> list[int]:
        return list(range(n))


    def squares(n: int, offset: int = 0):
        """Sum of squares below n, plus offset."""
        return total(square.product(x=list(range(offset, offset + n))))


    def dynamic(n: int):
        return square.product(x=numbers(n=n)).join(total)


    def typed(
        count: int,
        ratio: float,
        flag: bool,
        name: str,
        path: Path,
        items: list[int],
        maybe: Optional[int] = None,
        either: int | None = 5,
    ):
        return echo(values=dict(count=count, ratio=ratio, flag=flag, name=name, path=path,
                                items=items, maybe=maybe, either=either))


    def failing(x: int = 1):
        return boom(x=x)


    def not_a_dag():
        return 42


    ready = square(x=3)


    class CountingPlugin:
        def __init__(self):
            self.nodes = 0

        @hook_impl
        def after_node_execute(self, key):
            self.nodes += 1

        @hook_impl
        def after_graph_execute(self):
            print(f"plugin saw {self.nodes} nodes", file=sys.stderr)
    '''
)


@pytest.fixture
def target(tmp_path, monkeypatch):
    """A module of DAG functions, importable as ``clidag_target``; cwd is its directory."""
    (tmp_path / f"{TARGET}.py").write_text(TARGET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, TARGET, raising=False)
    monkeypatch.delenv("DAGLITE_BACKEND", raising=False)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    sys.modules.pop(TARGET, None)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("daglite: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -- run ----------------------------------------------------------------------------------


def test_run_function_prints_result(target, capsys):
    code, out, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=4", "-p", "offset=1")
    assert (code, out, err) == (0, "30\n", "")


def test_run_converts_parameters_with_annotations(target, capsys):
    code, out, err = run_cli(
        capsys,
        "run",
        f"{TARGET}:typed",
        "-p", "count=3",
        "-p", "ratio=0.5",
        "-p", "flag=yes",
        "-p", "name=a=b",
        "-p", "path=data/in.csv",
        "-p", "items=1, 2,3",
        "-p", "maybe=7",
        "-p", "either=none",
    )  # fmt: skip
    assert code == 0, err
    expected = dict(
        count=3,
        ratio=0.5,
        flag=True,
        name="a=b",
        path=Path("data/in.csv"),
        items=[1, 2, 3],
        maybe=7,
        either=None,
    )
    assert out == repr(expected) + "\n"


def test_run_empty_list_and_false_flag(target, capsys):
    code, out, _ = run_cli(
        capsys,
        "run",
        f"{TARGET}:typed",
        *("-p", "count=0", "-p", "ratio=1", "-p", "flag=off", "-p", "name="),
        *("-p", "path=.", "-p", "items="),
    )
    assert code == 0
    values = eval(out, {"PosixPath": Path, "WindowsPath": Path})
    assert values["flag"] is False
    assert values["items"] == []
    assert values["ratio"] == 1.0
    assert values["maybe"] is None
    assert values["either"] == 5


def test_run_task_target_is_called_with_params(target, capsys):
    assert run_cli(capsys, "run", f"{TARGET}:square", "-p", "x=7") == (0, "49\n", "")


def test_run_prints_strings_as_is(target, capsys):
    assert run_cli(capsys, "run", f"{TARGET}:shout", "-p", "word=hi there") == (
        0,
        "HI THERE\n",
        "",
    )


def test_run_future_target(target, capsys):
    assert run_cli(capsys, "run", f"{TARGET}:ready") == (0, "9\n", "")


def test_run_dynamic_fan_out_on_threads(target, capsys):
    code, out, _ = run_cli(
        capsys, "run", f"{TARGET}:dynamic", "--backend", "threads", "--workers", "2", "-p", "n=5"
    )
    assert (code, out) == (0, "30\n")


def test_run_with_plugin(target, capsys):
    code, out, err = run_cli(
        capsys, "run", f"{TARGET}:squares", "-p", "n=3", "--plugin", f"{TARGET}:CountingPlugin"
    )
    assert (code, out) == (0, "5\n")
    assert err == "plugin saw 4 nodes\n"


def test_run_progress_is_quiet_off_a_terminal(target, capsys):
    code, out, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=3", "--progress")
    assert (code, out, err) == (0, "5\n", "")


def test_run_progress_draws_on_a_terminal(target, capsys, monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setenv("FORCE_COLOR", "1")
    code, out, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=3", "--progress")
    assert (code, out) == (0, "5\n")
    assert "4/4" in err


# -- errors -------------------------------------------------------------------------------


def test_error_module_not_found(target, capsys):
    code, out, err = run_cli(capsys, "run", "no_such_module_xyz:dag")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "module 'no_such_module_xyz' not found")


def test_error_import_fails_inside_module(target, capsys):
    (target / "broken_target.py").write_text("import no_such_dependency_xyz\n")
    try:
        code, _, err = run_cli(capsys, "run", "broken_target:dag")
    finally:
        sys.modules.pop("broken_target", None)
    assert code == 1
    assert_one_error_line(err, "importing 'broken_target' failed", "no_such_dependency_xyz")


def test_error_attribute_missing(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:squars", "-p", "n=1")
    assert code == 2
    assert_one_error_line(err, "has no attribute 'squars'", "did you mean 'squares'?")


def test_error_target_without_colon(target, capsys):
    code, _, err = run_cli(capsys, "run", TARGET)
    assert code == 2
    assert_one_error_line(err, "must look like 'package.module:name'")


def test_error_bad_parameter_value(target, capsys):
    code, out, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=many")
    assert (code, out) == (2, "")
    assert_one_error_line(err, "parameter 'n'", "expects int", "'many'")


@pytest.mark.parametrize(
    ("param", "fragment"),
    [("flag=maybe", "expects bool"), ("items=1,x", "expects list[int]"), ("maybe=x", "'maybe'")],
)
def test_error_bad_typed_values(target, capsys, param, fragment):
    base = ["count=1", "ratio=1", "flag=1", "name=n", "path=p", "items=1"]
    params = [p for p in base if p.split("=")[0] != param.split("=")[0]] + [param]
    argv = ["run", f"{TARGET}:typed"] + [x for p in params for x in ("-p", p)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_error_line(err, fragment)


def test_error_unknown_parameter(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=2", "-p", "ofset=1")
    assert code == 2
    assert_one_error_line(err, "no parameter 'ofset'", "did you mean 'offset'?")


def test_error_unknown_task_parameter(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:square", "-p", "y=2")
    assert code == 2
    assert_one_error_line(err, "task 'square' has no parameter 'y'")


def test_error_missing_parameter(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:squares")
    assert code == 2
    assert_one_error_line(err, "needs parameter 'n'", "-p n=...")


def test_error_malformed_parameter(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n")
    assert code == 2
    assert_one_error_line(err, "key=value", "'n'")


def test_error_function_returns_no_future(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:not_a_dag")
    assert code == 2
    assert_one_error_line(err, "must return a TaskFuture", "int")


def test_error_unknown_backend(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:squares", "-p", "n=1", "--backend", "thread")
    assert code == 2
    assert_one_error_line(err, "unknown backend 'thread'")


def test_error_unknown_plugin(target, capsys):
    code, _, err = run_cli(
        capsys, "run", f"{TARGET}:squares", "-p", "n=1", "--plugin", f"{TARGET}:Nope"
    )
    assert code == 2
    assert_one_error_line(err, "has no attribute 'Nope'")


def test_error_task_failure_is_one_line(target, capsys):
    code, out, err = run_cli(capsys, "run", f"{TARGET}:failing", "-p", "x=3")
    assert (code, out) == (1, "")
    assert_one_error_line(err, "task 'boom'", "ValueError: boom on 3 second line")
    assert "Traceback" not in err


def test_error_task_failure_with_traceback(target, capsys):
    code, _, err = run_cli(capsys, "run", f"{TARGET}:failing", "--traceback")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert 'raise ValueError(f"boom on {x}\\nsecond line")' in err
    assert err.splitlines()[-1].startswith("daglite: error: task 'boom'")


def test_usage_error_exit_code(capsys):
    code, _, err = run_cli(capsys, "run")
    assert code == 2
    assert "the following arguments are required: target" in err


def test_no_command_prints_help(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2
    assert "usage: daglite" in err


# -- other commands -----------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out) == (0, f"daglite {daglite.__version__}\n")


def test_backends_lists_names(capsys, monkeypatch):
    monkeypatch.delenv("DAGLITE_BACKEND", raising=False)
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert {"inline", "threads", "processes", "dask"} <= set(lines)
    assert lines["inline"].split()[1:] == ["available", "(default)"]
    assert lines["processes"].split()[1:] == ["available"]


def test_backends_marks_dask_without_distributed(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    code, out, _ = run_cli(capsys, "backends")
    assert code == 0
    dask_line = next(line for line in out.splitlines() if line.startswith("dask"))
    assert "unavailable" in dask_line
    assert "pip install daglite[dask]" in dask_line


def test_describe_prints_nodes_and_edges(target, capsys):
    code, out, err = run_cli(capsys, "describe", f"{TARGET}:dynamic", "-p", "n=4")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "3 nodes, 2 edges, 2 calls + dynamic fan-outs"
    assert ["square", "square", "map", "inline", "dynamic"] in [line.split() for line in lines]
    assert "  numbers -> square" in lines
    assert "  square -> total" in lines


def test_describe_known_width_and_backend(target, capsys):
    code, out, _ = run_cli(
        capsys, "describe", f"{TARGET}:squares", "-p", "n=5", "--backend", "processes"
    )
    assert code == 0
    assert ["square", "square", "map", "processes", "5"] in [
        line.split() for line in out.splitlines()
    ]


def test_describe_writes_dot(target, capsys):
    dot_file = target / "graph.dot"
    code, out, _ = run_cli(
        capsys, "describe", f"{TARGET}:squares", "-p", "n=2", "--dot", str(dot_file)
    )
    assert code == 0
    assert "roots: total" in out
    dot = dot_file.read_text()
    assert dot.startswith("digraph daglite {")
    assert '"square" -> "total";' in dot


def test_describe_dot_to_stdout(target, capsys):
    code, out, _ = run_cli(capsys, "describe", f"{TARGET}:squares", "-p", "n=2", "--dot", "-")
    assert code == 0
    assert out.startswith("digraph daglite {")


def test_describe_errors_are_one_line(target, capsys):
    code, _, err = run_cli(capsys, "describe", f"{TARGET}:squares", "-p", "n=x")
    assert code == 2
    assert_one_error_line(err, "expects int")


# -- as a real process --------------------------------------------------------------------


def _subprocess_env(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("DAGLITE_BACKEND", None)
    env.pop("FORCE_COLOR", None)
    return env


def test_python_m_daglite_runs_on_processes(target):
    done = subprocess.run(
        [sys.executable, "-m", "daglite", "run", f"{TARGET}:dynamic", "--backend", "processes"]
        + ["--workers", "2", "-p", "n=6", "--progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=target,
        env=_subprocess_env(target),
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "55\n", "")


def test_python_m_daglite_task_failure(target):
    done = subprocess.run(
        [sys.executable, "-m", "daglite", "run", f"{TARGET}:failing", "--backend", "processes"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=target,
        env=_subprocess_env(target),
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert_one_error_line(done.stderr, "task 'boom'", "ValueError: boom on 1")


def test_console_script_finds_modules_in_cwd(target):
    script = Path(sys.executable).parent / "daglite"
    if not script.exists():
        pytest.skip("the daglite console script is not installed next to this interpreter")
    env = _subprocess_env(target)
    env.pop("PYTHONPATH")  # the current directory alone must be enough
    done = subprocess.run(
        [str(script), "run", f"{TARGET}:squares", "-p", "n=3"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=target,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "5\n", "")
