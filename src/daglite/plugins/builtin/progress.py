"""A live progress bar for evaluations, drawn with rich (the ``rich`` extra).

``evaluate(..., progress=True)`` adds a ``ProgressPlugin`` when stderr is a
terminal (see ``progress_plugin_if_terminal``); register one yourself to draw
on another console. The bar shows finished/total nodes, the tasks running right
now, failures, the elapsed time and an estimate of the time left. Hooks arrive
while tasks run (starts travel back from the workers), so the display is live on
every backend.

This module imports without rich; only creating the plugin needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from daglite.exceptions import DagliteError
from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from daglite.graph.base import GraphMetadata

__all__ = ["ProgressPlugin", "progress_plugin_if_terminal"]

_INSTALL_HINT: Final = (
    "progress bars need the 'rich' package; install it with `pip install daglite[rich]`"
)
# Names of running tasks shown on the bar; more are summarised as "+N" so the
# line stays short on wide fan-outs. Narrower consoles show only the count.
_SHOWN_RUNNING: Final = 3
_WIDTH_FOR_NAMES: Final = 120


class _RichMissingError(DagliteError, ImportError):
    """The ``rich`` package is not installed; install ``daglite[rich]``."""


def _require_rich() -> None:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        raise _RichMissingError(_INSTALL_HINT) from None


class ProgressPlugin:
    """Draws one live progress bar per evaluation (or per group of overlapping ones).

    Args:
        console: The rich ``Console`` to draw on (default: a new one on stderr).
        transient: Remove the bar when the evaluation ends instead of leaving
            its last state on screen.

    Attributes:
        total: Nodes known so far (grows when a fan-out learns its width).
        done: Nodes that finished successfully.
        failed: Nodes that failed for good (after their retries).
        running: Keys of the nodes running now, mapped to their task names.

    Raises:
        ImportError: (also a ``DagliteError``) when rich is not installed.
    """

    def __init__(self, console: Console | None = None, transient: bool = False) -> None:
        _require_rich()
        from rich.console import Console

        self.console: Console = console if console is not None else Console(stderr=True)
        self.transient = transient
        self.total = 0
        self.done = 0
        self.failed = 0
        self.running: dict[str, str] = {}
        self._runs: set[UUID] = set()
        self._progress: Progress | None = None
        self._bar: TaskID | None = None

    @property
    def active(self) -> bool:
        """True while the live display is drawn (between graph start and end)."""
        return self._progress is not None

    def __repr__(self) -> str:
        return f"<ProgressPlugin {self.done + self.failed}/{self.total}>"

    # -- display -----------------------------------------------------------------

    def _start(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("[bold]daglite"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("[dim]elapsed[/dim]"),
            TimeElapsedColumn(),
            TextColumn("[dim]eta[/dim]"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=self.transient,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._bar = progress.add_task("daglite", total=self.total, status="")
        self._progress = progress
        progress.start()

    def _refresh(self) -> None:
        if self._progress is None or self._bar is None:
            return
        self._progress.update(
            self._bar,
            total=max(self.total, self.done + self.failed),
            completed=self.done + self.failed,
            status=self.status(),
        )

    def _stop(self) -> None:
        if self._progress is None:
            return
        self._refresh()  # the final counts reach the screen before the bar freezes
        progress, self._progress = self._progress, None
        progress.stop()

    def status(self) -> str:
        """The text shown after the counts: running tasks and failures (rich markup)."""
        parts = []
        if self.running:
            text = f"[cyan]{len(self.running)} running[/cyan]"
            if self.console.width >= _WIDTH_FOR_NAMES:
                text += f" [dim]{_running_summary(self.running)}[/dim]"
            parts.append(text)
        if self.failed:
            parts.append(f"[red]{self.failed} failed[/red]")
        return " · ".join(parts)

    # -- hooks -------------------------------------------------------------------

    @hook_impl
    def before_graph_execute(self, root_id: UUID, node_count: int) -> None:
        """Start the bar (or add to the one an overlapping evaluation drew)."""
        if not self._runs:
            self.total = self.done = self.failed = 0
            self.running = {}
        self._runs.add(root_id)
        self.total += node_count
        if self._progress is None:
            self._start()
        else:
            self._refresh()

    @hook_impl
    def on_graph_expand(self, added: int) -> None:
        """A fan-out over a future learned its width: grow the total."""
        self.total += added
        self._refresh()

    @hook_impl
    def before_node_execute(self, key: str, metadata: GraphMetadata) -> None:
        """A task started on its worker."""
        self.running[key] = metadata.name
        self._refresh()

    @hook_impl
    def before_node_retry(self, key: str) -> None:
        """An attempt failed and will be re-run: it is not running meanwhile."""
        self.running.pop(key, None)
        self._refresh()

    @hook_impl
    def after_node_execute(self, key: str) -> None:
        """A task finished."""
        self.running.pop(key, None)
        self.done += 1
        self._refresh()

    @hook_impl
    def on_node_error(self, key: str) -> None:
        """A task failed for good."""
        self.running.pop(key, None)
        self.failed += 1
        self._refresh()

    @hook_impl
    def after_graph_execute(self, root_id: UUID) -> None:
        """The evaluation succeeded: stop the bar once no other evaluation uses it."""
        self._graph_ended(root_id)

    @hook_impl
    def on_graph_error(self, root_id: UUID) -> None:
        """The evaluation failed or was interrupted: stop the bar likewise."""
        self._graph_ended(root_id)

    def _graph_ended(self, root_id: UUID) -> None:
        self._runs.discard(root_id)
        if not self._runs:
            self.running.clear()
            self._stop()


def _running_summary(running: dict[str, Any]) -> str:
    keys: Iterable[str] = list(running)[:_SHOWN_RUNNING]
    text = ", ".join(keys)
    extra = len(running) - _SHOWN_RUNNING
    return f"{text} +{extra}" if extra > 0 else text


def progress_plugin_if_terminal() -> ProgressPlugin | None:
    """A ``ProgressPlugin`` drawing on stderr when stderr is a terminal, else None.

    This is what ``evaluate(..., progress=True)`` uses, so progress stays quiet
    in logs, pipes and CI output.

    Raises:
        ImportError: (also a ``DagliteError``) when rich is not installed.
    """
    _require_rich()
    from rich.console import Console

    console = Console(stderr=True)
    return ProgressPlugin(console=console) if console.is_terminal else None
