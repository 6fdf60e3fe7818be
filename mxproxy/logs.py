"""Loggers whose events pass one level filter, so ``--debug`` can open it at run time.

twistd owns the global log observer, so filtering happens on the way in: every mxproxy logger
sends its events through :data:`FILTERED`, which forwards to the global publisher.
``--json-logs`` replaces twistd's text observer with :func:`json_observer`.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
)

from twisted import logger as _logger

LEVELS = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
FILTERED = FilteringLogObserver(_logger.globalLogPublisher, [LEVELS])


class Logger(_logger.Logger):
    """A twisted Logger that goes through the mxproxy level filter; pass the namespace at
    module level (class attributes get theirs from the class)."""

    def __init__(self, namespace: str | None = None, source: Any = None,
                 observer: Any = None) -> None:
        super().__init__(namespace, source, FILTERED if observer is None else observer)


def set_debug(enabled: bool) -> None:
    """Show debug events (``--debug``) or hide them (the default)."""
    LEVELS.setLogLevelForNamespace("", LogLevel.debug if enabled else LogLevel.info)


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """twistd's ``--logger`` under ``--json-logs``: one JSON object per event and line on stdout,
    for log collectors (the systemd journal) that take a line as a record.

    twistd calls this before it turns ``sys.stdout`` into log events, so the real stdout is the
    one kept. Each line is flushed at once: to the journal stdout is a pipe, which Python buffers
    in blocks, so records would otherwise arrive late or die with a killed process.
    """
    return FileLogObserver(sys.stdout if out is None else out, json_record)


def json_record(event: LogEvent) -> str | None:
    """The event as one JSON line: time, level, namespace, the message exactly as the text log
    formats it, and the traceback of a failure. Other event keys are left out: they can hold
    any object, and passwords stay out of the JSON log as they stay out of the text log.
    Returns None, as the text log prints nothing, for an event with no message and no failure.
    """
    message = formatEvent(event)
    moment = datetime.fromtimestamp(event.get("log_time") or time.time(), UTC)
    record = {
        "time": f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z",
        "level": event.get("log_level", LogLevel.info).name,
        "namespace": event.get("log_namespace", "-"),
        "message": message,
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    elif not message:
        return None
    # ensure_ascii=False keeps names readable; JSON escapes newlines, so a record stays one line.
    return json.dumps(record, ensure_ascii=False) + "\n"


class LogRateLimit:
    """Lets a recurring line through at most once per ``interval`` seconds and counts the ones
    it held back, so that what hostile clients cause is logged without flooding the log."""

    def __init__(self, clock: IReactorTime, interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self._next = float("-inf")
        self._held = 0

    def due(self) -> int | None:
        """None while the line must wait; else how many were held back since the last one."""
        now = self._clock.seconds()
        if now < self._next:
            self._held += 1
            return None
        self._next = now + self._interval
        held, self._held = self._held, 0
        return held
