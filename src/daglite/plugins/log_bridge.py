"""The logging bridge: ``logging`` calls inside tasks reach the caller's handlers.

* Every record created while a task runs carries ``record.daglite_task`` (the
  task's name) and ``record.daglite_key`` (its node key), on every backend,
  through a wrapping log-record factory installed once per process.
* In the caller's own process (inline, threads) records go to the handlers as
  usual. In a worker process, a handler on the root logger turns each record
  made inside a task into a ``daglite.log`` event; it travels home on the
  reporter channel with the task's other events (so in order, and all delivered
  before ``evaluate`` returns), where ``emit_in_caller`` rebuilds the record and
  hands it to the logger of the same name.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from daglite._job import channel
from daglite.plugins import reporters

__all__ = ["emit_in_caller", "forward_worker_logs", "install_record_factory"]

_lock = threading.Lock()
_factory_installed = False
_forwarder: logging.Handler | None = None


def install_record_factory() -> None:
    """Attach ``daglite_task``/``daglite_key`` to records made inside tasks (idempotent)."""
    global _factory_installed
    if _factory_installed:
        return
    with _lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            ctx = reporters._current.get()
            if ctx is not None:
                record.daglite_task = ctx.name
                record.daglite_key = ctx.key
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


class _ForwardToCaller(logging.Handler):
    """Worker-side handler: ships records made inside a task to the caller."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = reporters._current.get()
        if not isinstance(ctx, channel._NodeContext) or ctx.direct:
            return  # outside a task, or in the caller's process: handled in place
        try:
            ctx.send_event(reporters.LOG_EVENT, _record_data(record))
        except Exception:
            self.handleError(record)


def _record_data(record: logging.LogRecord) -> dict[str, Any]:
    data = dict(record.__dict__)
    data["msg"] = record.getMessage()
    data["args"] = None
    if record.exc_info:
        data["exc_text"] = logging.Formatter().formatException(record.exc_info)
    data["exc_info"] = None
    data.pop("message", None)
    return {k: v for k, v in data.items() if _plain(v)}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, tuple))


def forward_worker_logs(level: int) -> None:
    """In a worker process: forward task records at ``level`` and above (idempotent)."""
    global _forwarder
    install_record_factory()
    root = logging.getLogger()
    if _forwarder is None:
        with _lock:
            if _forwarder is None:
                _forwarder = _ForwardToCaller()
                root.addHandler(_forwarder)
    if root.level != level:
        root.setLevel(level)


def emit_in_caller(data: dict[str, Any]) -> None:
    """Rebuild a forwarded record and pass it to the caller's logger of that name."""
    record = logging.makeLogRecord(data)
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


install_record_factory()
