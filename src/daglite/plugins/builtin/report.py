"""A self-contained HTML run report: ``ReportPlugin`` (``evaluate(..., report=...)``).

The plugin is a ``TimelinePlugin`` that, when an evaluation ends, writes one
HTML file showing the run: a timeline (a row per worker, a bar per attempt),
the DAG coloured by state, a table per task and the run's totals, including the
peak resident memory of the caller and its child processes (sampled with psutil
in a daemon thread of the caller while the run lasts). The page needs no network:
its CSS, SVG and JavaScript are inline. Large runs are drawn aggregated (see
``daglite.plugins.builtin._report_svg``), so the file stays small.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final
from uuid import UUID

from daglite.plugins.builtin._files import checked_path, write_atomically
from daglite.plugins.builtin._report_html import render_report
from daglite.plugins.builtin.timeline import RunTimeline, TimelinePlugin
from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from daglite.describe import GraphDescription

__all__ = ["ReportPlugin", "report_plugin"]

# How often the memory sampler looks at the process tree: often enough to see
# short peaks of a long run, rare enough that walking the tree costs nothing.
SAMPLE_INTERVAL: Final = 0.1


@final
class _MemorySampler:
    """Samples the RSS of this process and all its children in a daemon thread.

    The engine's thread does no sampling work of its own (gh-19): finding the
    process tree means reading every process of the machine (~0.6 ms with 75
    of them), so only the sampler's thread walks it, first as it starts and
    then every ``SAMPLE_INTERVAL``; ``stop`` reads the memory of the tree last
    walked once more (~10 µs a process), to catch the run's end.

    Attributes:
        peak: The largest sum seen, in bytes (None when psutil could see nothing).
    """

    def __init__(self) -> None:
        self.peak: int | None = None
        self._tree: list[Any] = []  # psutil.Process objects, as last walked
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="daglite-report-memory", daemon=True
        )

    def start(self) -> None:
        """Start sampling: now (in the thread), then every ``SAMPLE_INTERVAL`` seconds."""
        self._thread.start()

    def stop(self) -> int | None:
        """Stop sampling (joins the thread), sample the tree once more and return the peak."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._add(_rss(self._tree))
        return self.peak

    def _loop(self) -> None:
        while True:
            self._tree = _process_tree()
            self._add(_rss(self._tree))
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def _add(self, total: int | None) -> None:
        if total is not None and (self.peak is None or total > self.peak):
            self.peak = total


def _process_tree() -> list[Any]:
    """This process and every descendant it can see (empty if psutil cannot look)."""
    import psutil

    try:
        me = psutil.Process()
        return [me, *me.children(recursive=True)]
    except (psutil.Error, OSError):
        return []


def _rss(procs: list[Any]) -> int | None:
    """The summed RSS of ``procs`` still running, in bytes (None if none could be read)."""
    import psutil

    total, seen = 0, 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            seen += 1
        except (psutil.Error, OSError):
            continue  # it exited or is not ours to read
    return total if seen else None


def _tree_rss() -> int | None:
    """RSS of this process plus every descendant it can see, in bytes."""
    return _rss(_process_tree())


class ReportPlugin(TimelinePlugin):
    """Writes a self-contained HTML report of each evaluation to ``path``.

    The file is written when the evaluation ends, whether it succeeded or
    failed; a later evaluation with the same plugin overwrites it. It opens
    offline in any browser. Like ``TimelinePlugin``, one instance follows one
    evaluation at a time.

    Args:
        path: Where to write the report (``str`` or ``os.PathLike``); its
            directory must exist.

    Attributes:
        path: The report's path.
        peak_memory: Peak RSS in bytes of the caller and its child processes
            during the latest evaluation (None if psutil could not read it).

    Raises:
        TypeError: If ``path`` is not a ``str`` or ``os.PathLike``.
        ValueError: If ``path`` is empty, a directory, or in a missing directory.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path: Path = checked_path(path, "path")
        self.peak_memory: int | None = None
        self._samplers: dict[UUID, _MemorySampler] = {}

    @hook_impl
    def before_graph_execute(self, root_id: UUID, graph: GraphDescription | None) -> None:
        """An evaluation starts: open its timeline and start sampling memory."""
        super().before_graph_execute(root_id, graph)
        sampler = _MemorySampler()
        self._samplers[root_id] = sampler
        sampler.start()

    def run_ended(self, run: RunTimeline) -> None:
        """Stop the memory sampler and write the report of ``run``."""
        sampler = self._samplers.pop(run.root_id, None)
        self.peak_memory = sampler.stop() if sampler is not None else None
        write_atomically(self.path, render_report(run, self.peak_memory))


def report_plugin(report: object, name: str = "report") -> ReportPlugin:
    """A ``ReportPlugin`` for ``report``, with errors that name the ``name`` parameter.

    Raises:
        TypeError: If ``report`` is not a ``str`` or ``os.PathLike``.
        ValueError: If it is empty, a directory, or in a missing directory.
    """
    return ReportPlugin(checked_path(report, name))
