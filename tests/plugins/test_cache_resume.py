"""Resume (issue 16): after a run dies, a rerun with the cache runs only what had not finished."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from daglite import TaskError, evaluate
from daglite.plugins.hooks import hook_impl

DAG_SOURCE = '''
import os
import sys

from daglite import task
from daglite.plugins.hooks import hook_impl


def stop_here(name):
    """Block (the caller is then killed), raise, or do nothing: as RESUME_MODE says."""
    if os.environ.get("RESUME_AT") != name:
        return
    mode = os.environ["RESUME_MODE"]
    if mode == "block":
        print("started", name, flush=True)
        sys.stdin.readline()  # until SIGKILL
    elif mode == "raise":
        raise RuntimeError(f"{name} failed")
    elif mode == "interrupt":
        raise KeyboardInterrupt


@task
def load(x: int) -> int:
    return x


@task
def clean(x: int) -> int:
    return x + 1


@task
def side(x: int) -> int:
    return -x


@task
def train(x: int, y: int) -> int:
    stop_here("train")
    return x * 10 + y


@task
def report(x: int) -> str:
    return f"score {x}"


def dag():
    return report(train(clean(load(1)), side(clean(load(2)))))


class Done:
    """Prints each finished node's key (the parent learns what finished)."""

    @hook_impl
    def after_node_execute(self, key):
        print("done", key, flush=True)


if __name__ == "__main__":
    from daglite import evaluate

    print(evaluate(dag(), backend=sys.argv[2], cache=sys.argv[1], plugins=[Done()]))
'''

ALL = {"load", "load-2", "clean", "clean-2", "side", "train", "report"}


class Ran:
    """What the second run did: keys that ran and keys served from the cache."""

    def __init__(self):
        self.ran: set[str] = set()
        self.cached: set[str] = set()

    @hook_impl
    def after_node_execute(self, key, worker):
        (self.cached if worker == "cache" else self.ran).add(key)


@pytest.fixture
def resume_dag(tmp_path, monkeypatch):
    folder = tmp_path / "dag"
    folder.mkdir()
    (folder / "resume_dag_mod.py").write_text(textwrap.dedent(DAG_SOURCE))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("resume_dag_mod", None)
    module = importlib.import_module("resume_dag_mod")
    yield module
    sys.modules.pop("resume_dag_mod", None)


@pytest.mark.parametrize("backend", ["inline", "threads"])
def test_resume_after_the_caller_is_killed(resume_dag, tmp_path, backend):
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "RESUME_AT": "train",
        "RESUME_MODE": "block",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    proc = subprocess.Popen(
        [sys.executable, resume_dag.__file__, str(cache), backend],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    finished = set()
    try:
        for line in proc.stdout:  # until the blocked task says it started
            word, key = line.split()
            if word == "started":
                break
            finished.add(key)
        else:
            pytest.fail(f"the run ended before train started (exit {proc.wait()})")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(60)
        proc.stdin.close()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert {"load", "clean", "load-2", "clean-2", "side"} <= finished
    assert "train" not in finished

    ran = Ran()
    assert evaluate(resume_dag.dag(), cache=cache, plugins=[ran]) == "score 17"
    assert ran.ran == ALL - finished == {"train", "report"}
    assert ran.cached == finished


@pytest.mark.parametrize(
    ("mode", "error"), [("raise", TaskError), ("interrupt", KeyboardInterrupt)]
)
def test_resume_after_a_failure_or_ctrl_c(resume_dag, tmp_path, monkeypatch, mode, error):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESUME_AT", "train")
    monkeypatch.setenv("RESUME_MODE", mode)
    first = Ran()
    with pytest.raises(error):
        evaluate(resume_dag.dag(), cache=cache, plugins=[first])
    assert first.ran == ALL - {"train", "report"}
    monkeypatch.delenv("RESUME_AT")
    second = Ran()
    assert evaluate(resume_dag.dag(), cache=cache, plugins=[second]) == "score 17"
    assert second.ran == {"train", "report"}
    assert second.cached == first.ran
