"""The rich progress bar: counts on every backend, live updates, quiet off a terminal."""

from __future__ import annotations

import io
import multiprocessing
import subprocess
import sys
import textwrap
import threading

import pytest

pytest.importorskip("rich")
from rich.console import Console

from daglite import DagliteError, EvaluationError, TaskError, evaluate, task
from daglite.plugins.builtin import ProgressPlugin
from daglite.plugins.builtin import progress as progress_module
from daglite.plugins.hooks import hook_impl

INSTALL_HINT = "progress bars need the 'rich' package; install it with `pip install daglite[rich]`"


@task
def square(x: int) -> int:
    return x * x


@task
def total(xs: list[int]) -> int:
    return sum(xs)


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    return x


@task(retries=1)
def flaky(marker: str) -> str:
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return "ok"


@task
def wait_for(gate) -> str:
    if not gate.wait(60):
        raise TimeoutError("the test never opened the gate")
    return "released"


def make_plugin(**options) -> tuple[ProgressPlugin, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    return ProgressPlugin(console=console, **options), out


@pytest.fixture
def no_forced_terminal(monkeypatch):
    """rich treats FORCE_COLOR / TTY_COMPATIBLE as 'is a terminal'; tests decide themselves."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)


def test_progress_counts_every_node(backend):
    plugin, out = make_plugin()
    result = evaluate(
        square.product(x=[1, 2, 3, 4, 5]).join(total), backend=backend, plugins=[plugin]
    )
    assert result == 55
    assert (plugin.total, plugin.done, plugin.failed) == (6, 6, 0)
    assert plugin.running == {}
    assert not plugin.active
    assert "6/6" in out.getvalue()


def test_progress_grows_total_for_dynamic_width(backend):
    seen = []

    class Totals(ProgressPlugin):
        @hook_impl
        def before_graph_execute(self, root_id, node_count):
            super().before_graph_execute(root_id, node_count)
            seen.append(self.total)

    out = io.StringIO()
    plugin = Totals(console=Console(file=out, force_terminal=True, width=100, color_system=None))
    dag = square.product(x=numbers(n=7)).join(total)
    assert evaluate(dag, backend=backend, plugins=[plugin]) == sum(i * i for i in range(7))
    assert seen == [2]  # numbers + total; the fan-out's width is unknown at the start
    assert (plugin.total, plugin.done, plugin.failed) == (9, 9, 0)
    assert "9/9" in out.getvalue()


def test_progress_counts_failed_tasks(backend):
    plugin, out = make_plugin()
    with pytest.raises(EvaluationError):
        evaluate(
            fail_on_two.product(x=[1, 2, 3]), backend=backend, plugins=[plugin], on_error="continue"
        )
    assert (plugin.total, plugin.done, plugin.failed) == (3, 2, 1)
    assert plugin.running == {}
    assert not plugin.active
    assert "3/3" in out.getvalue()
    assert "1 failed" in out.getvalue()


def test_progress_stops_when_the_graph_fails_fast(backend):
    plugin, _ = make_plugin()
    with pytest.raises(TaskError):
        evaluate(fail_on_two(x=2), backend=backend, plugins=[plugin])
    assert plugin.failed == 1
    assert not plugin.active


def test_progress_retried_task_counts_once(backend, tmp_path):
    plugin, _ = make_plugin()
    marker = str(tmp_path / "attempted")
    assert evaluate(flaky(marker=marker), backend=backend, plugins=[plugin]) == "ok"
    assert (plugin.total, plugin.done, plugin.failed) == (1, 1, 0)
    assert plugin.running == {}


def test_progress_resets_between_evaluations():
    plugin, _ = make_plugin()
    evaluate(square.product(x=[1, 2, 3]), plugins=[plugin])
    evaluate(square(x=2), plugins=[plugin])
    assert (plugin.total, plugin.done, plugin.failed) == (1, 1, 0)


def test_progress_leaves_the_final_bar_unless_transient():
    kept, kept_out = make_plugin()
    gone, gone_out = make_plugin(transient=True)
    evaluate(square.product(x=[1, 2]), plugins=[kept])
    evaluate(square.product(x=[1, 2]), plugins=[gone])
    final_frame = kept_out.getvalue().rsplit("\r", 1)[-1]
    assert "2/2" in final_frame
    assert final_frame.endswith("\n\x1b[?25h")
    # A transient bar erases itself when it stops: cursor up, erase line.
    assert gone_out.getvalue().endswith("\x1b[1A\x1b[2K")
    assert gone.done == 2


@pytest.mark.parametrize("backend_name", ["threads", "processes"])
def test_progress_shows_running_task_while_it_runs(backend_name):
    started = threading.Event()

    class Signalling(ProgressPlugin):
        @hook_impl
        def before_node_execute(self, key, metadata):
            super().before_node_execute(key, metadata)
            started.set()

    out = io.StringIO()
    plugin = Signalling(console=Console(file=out, force_terminal=True, width=100))
    with multiprocessing.Manager() as manager:
        gate = manager.Event()
        outcome = {}

        def run():
            outcome["value"] = evaluate(wait_for(gate), backend=backend_name, plugins=[plugin])

        runner = threading.Thread(target=run)
        runner.start()
        try:
            assert started.wait(60), "before_node_execute never arrived"
            assert plugin.running == {"wait_for": "wait_for"}
            assert plugin.active
            assert "1 running" in plugin.status()
            assert plugin.done == 0
        finally:
            gate.set()
            runner.join(60)
    assert outcome == {"value": "released"}
    assert (plugin.done, plugin.running) == (1, {})


def test_progress_true_is_quiet_when_not_a_terminal(capsys, no_forced_terminal, backend):
    assert progress_module.progress_plugin_if_terminal() is None
    assert evaluate(square.product(x=[1, 2, 3]), backend=backend, progress=True) == [1, 4, 9]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_progress_true_draws_on_stderr_of_a_terminal(capsys, monkeypatch, no_forced_terminal):
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: treat stderr as a terminal
    assert isinstance(progress_module.progress_plugin_if_terminal(), ProgressPlugin)
    assert evaluate(square.product(x=[1, 2, 3]), progress=True) == [1, 4, 9]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3/3" in captured.err


def test_progress_without_rich_raises_install_hint(monkeypatch):
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(
        ImportError, match="install it with `pip install daglite\\[rich\\]`"
    ) as info:
        ProgressPlugin()
    assert isinstance(info.value, DagliteError)
    assert str(info.value) == INSTALL_HINT
    with pytest.raises(ImportError, match="progress bars need the 'rich' package"):
        progress_module.progress_plugin_if_terminal()
    with pytest.raises(ImportError, match="progress bars need the 'rich' package"):
        evaluate(square(x=1), progress=True)
    # Without progress, nothing needs rich.
    assert evaluate(square(x=3)) == 9


def test_progress_module_imports_without_rich():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["rich"] = None
        import daglite.plugins.builtin as builtin
        from daglite.plugins.builtin.progress import ProgressPlugin
        assert builtin.ProgressPlugin is ProgressPlugin
        try:
            ProgressPlugin()
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == INSTALL_HINT


def test_builtin_package_exports_lazily():
    import daglite.plugins.builtin as builtin

    assert "ProgressPlugin" in builtin.__all__
    assert "CachePlugin" in builtin.__all__
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        builtin.Nope  # noqa: B018
