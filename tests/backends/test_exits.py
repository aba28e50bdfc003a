"""Killing processes by title and waiting for them to exit (``backends._exits``)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psutil
import pytest

from daglite.backends._exits import kill_titled, wait_exited

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="argv[0] as a title: POSIX")


@pytest.fixture(params=["pidfd", "polling"])
def how(request, monkeypatch) -> str:
    """Wait on pidfds (Linux 5.3+), or poll as where the kernel has none."""
    if request.param == "polling":
        monkeypatch.delattr("os.pidfd_open", raising=False)
    elif not hasattr(__import__("os"), "pidfd_open"):
        pytest.skip("no pidfds on this platform")
    return str(request.param)


@pytest.fixture
def titled() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A process titled with a fresh name, alive until its stdin closes."""
    title = f"daglite-test-{uuid.uuid4().hex}"
    # argv[0] is the title, as a Ray worker's setproctitle makes it.
    process = subprocess.Popen([title], executable="cat", stdin=subprocess.PIPE)
    yield title, process
    process.kill()
    process.wait()
    if process.stdin is not None:
        process.stdin.close()


def test_a_process_is_killed_only_while_it_shows_the_title(titled):
    title, process = titled
    watched = psutil.Process(process.pid)
    assert not kill_titled([watched], title + "-other")  # moved on to another task
    assert process.poll() is None
    assert kill_titled([watched], title)
    assert process.wait(timeout=30) == -9


def test_a_running_process_is_returned_as_still_running(titled, how):
    _, process = titled
    assert wait_exited([psutil.Process(process.pid)], timeout=0.05) == [psutil.Process(process.pid)]


def test_an_exited_process_counts_as_gone_before_its_parent_reaps_it(titled, how):
    _, process = titled
    watched = psutil.Process(process.pid)
    assert process.stdin is not None
    process.stdin.close()  # cat exits; nobody has waited for it yet
    assert wait_exited([watched], timeout=30) == []
    assert process.poll() is not None or watched.status() == psutil.STATUS_ZOMBIE


def test_a_process_gone_already_is_not_waited_for(titled, how):
    _, process = titled
    watched = psutil.Process(process.pid)
    process.kill()
    process.wait()
    assert wait_exited([watched], timeout=30) == []
