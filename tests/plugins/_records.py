"""Picking daglite's own log records out of what a test captured."""

from __future__ import annotations

import logging

import pytest


def daglite_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The records of ``level`` or worse that daglite logged.

    Not those a library's background thread logged meanwhile: Dask's ioloop,
    say, logs a stray connection to one of its ports as an error, whatever
    the test is doing.
    """
    return [
        r
        for r in caplog.records
        if r.levelno >= level and (r.name == "daglite" or r.name.startswith("daglite."))
    ]


def daglite_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ERROR (or worse) records daglite logged."""
    return daglite_records(caplog, logging.ERROR)
