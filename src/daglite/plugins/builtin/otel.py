"""OpenTelemetry spans of each evaluation and of every task attempt.

``OpenTelemetryPlugin`` opens a ``daglite.evaluate`` span when an evaluation
starts, as a child of the span current in the caller at that moment, and ends
it when the evaluation ends. Each task attempt becomes a child span of it,
named after the task, made when the attempt's hook runs in the caller, with
the start and end the attempt had where it ran. Needs ``opentelemetry-api``
(the ``otel`` extra); spans go wherever the tracer provider sends them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from daglite.plugins.hooks import hook_impl

if TYPE_CHECKING:
    from uuid import UUID

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from daglite.graph.base import GraphMetadata

__all__ = ["OpenTelemetryPlugin"]

_INSTALL_HINT: Final = (
    "OpenTelemetryPlugin needs the 'opentelemetry-api' package; "
    "install it with `pip install daglite[otel]`"
)
_NS: Final = 1_000_000_000  # OpenTelemetry time stamps are integer nanoseconds


def _tracer(provider: TracerProvider | None) -> Tracer:
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    import daglite

    return trace.get_tracer("daglite", str(daglite.__version__), tracer_provider=provider)


class OpenTelemetryPlugin:
    """Emits an OpenTelemetry span per evaluation and a child span per task attempt.

    Task spans carry ``daglite.key``, ``daglite.task``, ``daglite.backend``,
    ``daglite.worker`` and ``daglite.attempt``; a failed attempt's span has
    status ERROR, an ``exception`` event and ``daglite.error``
    (``"TypeName: message"``), and ``daglite.retried`` when the task ran again.

    Node hooks do not say which evaluation they belong to: task spans go to the
    evaluation that started last, so give an evaluation started inside a task
    (a nested ``evaluate``) a plugin of its own.

    Args:
        tracer_provider: Where spans go; None for the global provider
            (``opentelemetry.trace.set_tracer_provider``).

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (the ``otel`` extra).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = _tracer(tracer_provider)
        # Open evaluation spans by root id, with the context their children get.
        self._runs: dict[UUID, tuple[Span, Context]] = {}
        self._parent: Context | None = None
        self._tries: dict[str, int] = {}

    # -- graph hooks -------------------------------------------------------------------

    @hook_impl
    def before_graph_execute(self, root_id: UUID, node_count: int, is_async: bool) -> None:
        """Open the evaluation's span under the caller's current span."""
        from opentelemetry import context, trace

        span = self._tracer.start_span(
            "daglite.evaluate",
            context=context.get_current(),
            attributes={
                "daglite.root_id": str(root_id),
                "daglite.node_count": node_count,
                "daglite.is_async": is_async,
            },
        )
        self._parent = trace.set_span_in_context(span)
        self._runs[root_id] = (span, self._parent)
        self._tries = {}

    @hook_impl
    def after_graph_execute(self, root_id: UUID) -> None:
        """End the evaluation's span."""
        self._end_run(root_id, None)

    @hook_impl
    def on_graph_error(self, root_id: UUID, error: BaseException) -> None:
        """End the evaluation's span with status ERROR."""
        self._end_run(root_id, error)

    # -- node hooks --------------------------------------------------------------------

    @hook_impl
    def after_node_execute(
        self, key: str, metadata: GraphMetadata, duration: float, started: float, worker: str
    ) -> None:
        """An attempt returned: its span."""
        span, start = self._start(key, metadata, worker, started)
        _end(span, start, duration, None)

    @hook_impl
    def before_node_retry(
        self,
        key: str,
        metadata: GraphMetadata,
        error: BaseException,
        duration: float,
        started: float,
        worker: str,
    ) -> None:
        """An attempt failed and the task runs again: its span, in error."""
        span, start = self._start(key, metadata, worker, started)
        span.set_attribute("daglite.retried", True)
        _end(span, start, duration, error)

    @hook_impl
    def on_node_error(
        self,
        key: str,
        metadata: GraphMetadata,
        error: BaseException,
        duration: float,
        started: float,
        worker: str,
    ) -> None:
        """The last attempt failed: its span, in error."""
        span, start = self._start(key, metadata, worker, started)
        _end(span, start, duration, error)

    # -- helpers -----------------------------------------------------------------------

    def _start(
        self, key: str, metadata: GraphMetadata, worker: str, started: float
    ) -> tuple[Span, int]:
        """Open the span of an attempt at the time it started where it ran."""
        tries = self._tries[key] = self._tries.get(key, 0) + 1
        # An attempt that never started (its worker died first) is an instant, now.
        start = int(started * _NS) if started else time.time_ns()
        attributes: dict[str, Any] = {
            "daglite.key": key,
            "daglite.task": metadata.name,
            "daglite.backend": metadata.backend_name or "",
            "daglite.worker": worker,
            "daglite.attempt": tries,
        }
        span = self._tracer.start_span(
            metadata.name, context=self._parent, attributes=attributes, start_time=start
        )
        return span, start

    def _end_run(self, root_id: UUID, error: BaseException | None) -> None:
        span, _ = self._runs.pop(root_id, (None, None))
        if span is None:
            return
        if error is not None:
            _fail(span, error, None)
        span.end()
        latest = next(reversed(self._runs.values()), None)
        self._parent = None if latest is None else latest[1]
        if latest is None:
            self._tries = {}  # keep nothing between evaluations


def _end(span: Span, start: int, duration: float, error: BaseException | None) -> None:
    """End an attempt's span ``duration`` seconds after it started, failed if ``error``."""
    end = start + int(duration * _NS)
    if error is not None:
        _fail(span, error, end)
    span.end(end_time=end)


def _fail(span: Span, error: BaseException, when: int | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    text = f"{type(error).__name__}: {error}"
    span.set_attribute("daglite.error", text)
    span.record_exception(error, timestamp=when, escaped=True)
    span.set_status(Status(StatusCode.ERROR, text))
