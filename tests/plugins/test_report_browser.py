"""The HTML run report in a real browser: headless Chromium renders it without errors.

Chromium is driven from the command line only (no network, nothing installed at
run time): ``--dump-dom`` returns the DOM after the page's script ran (it marks
``<body>`` with the number of bars it found), ``--enable-logging=stderr`` shows
console messages, and ``--screenshot`` saves a picture. Without a browser the
tests are skipped; ``DAGLITE_REQUIRE_ALL_BACKENDS=1`` (CI) makes that a failure.
The screenshot stays in the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from daglite import EvaluationError, evaluate, task
from daglite.plugins.builtin import ReportPlugin

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--hide-scrollbars",
)
# What Chromium logs for a page's console message, uncaught error or blocked
# request: "[...:INFO:CONSOLE:1] ..." (older builds: "CONSOLE(1)").
_CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\]")
_TIMEOUT = 90


def _browser() -> str:
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    reason = "no Chromium installed (apt-get install chromium); the report is not rendered"
    if os.environ.get("DAGLITE_REQUIRE_ALL_BACKENDS") == "1":
        pytest.fail(f"DAGLITE_REQUIRE_ALL_BACKENDS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium(tmp_path):
    """Run headless Chromium on a file with extra flags; returns (stdout, stderr)."""
    binary = _browser()
    profile = tmp_path / "chromium-profile"

    def run(page: Path, *flags: str) -> tuple[str, str]:
        done = subprocess.run(
            [binary, *_FLAGS, f"--user-data-dir={profile}", *flags, page.as_uri()],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, done.stderr

    return run


def rendered(chromium, page: Path) -> tuple[dict[str, str], list[str]]:
    """The attributes of the rendered ``<body>`` and the console lines Chromium logged."""
    dom, log = chromium(page, "--dump-dom", "--enable-logging=stderr", "--v=0")
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:500]
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    return attributes, [line for line in log.splitlines() if _CONSOLE.search(line)]


@task
def inc(x: int) -> int:
    return x + 1


@task(retries=1)
def flaky(xs: list[int], marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("tried")
        raise RuntimeError("first attempt fails")
    return sum(xs)


@task
def boom(x: int) -> int:
    raise ValueError("boom")


@task
def after(x: int, y: int) -> int:
    return x + y


def test_console_errors_are_seen(chromium, tmp_path):
    # The check below is only worth something if a console error does show up.
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><body><script>console.error('seen'); nope();</script>")
    attributes, console = rendered(chromium, page)
    assert attributes == {}
    assert any("seen" in line for line in console) and any("nope" in line for line in console)


def test_report_renders_in_chromium(chromium, tmp_path):
    report = ReportPlugin(tmp_path / "run.html")
    dag = after(inc.product(x=[1, 2, 3]).join(flaky, marker=str(tmp_path / "m")), boom(1))
    with pytest.raises(EvaluationError):
        evaluate(dag, backend="threads", plugins=[report], on_error="continue")
    attempts = report.last.attempts
    assert len(attempts) == 6  # 3 inc, flaky twice (a retry), boom once (a failure)

    attributes, console = rendered(chromium, report.path)
    assert console == []
    assert attributes["data-rendered"] == "ok"
    assert attributes["data-bars"] == str(len(attempts))
    assert attributes["data-attempts-drawn"] == str(len(attempts))
    assert attributes["data-nodes"] == "4"

    shot = tmp_path / "report.png"
    chromium(report.path, f"--screenshot={shot}", "--window-size=1400,900")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1400, 900)  # IHDR: width, height


def test_aggregated_report_renders_in_chromium(chromium, tmp_path):
    target = tmp_path / "big.html"
    evaluate(inc.product(x=range(20_000)), report=target)
    attributes, console = rendered(chromium, target)
    assert console == []
    assert attributes["data-rendered"] == "ok"
    assert attributes["data-attempts-drawn"] == "20000"
    assert 0 < int(attributes["data-bars"]) < 20_000
