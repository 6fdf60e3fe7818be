"""Loggers whose events pass one level filter, so ``--debug`` can open it at run time.

twistd owns the global log observer, so filtering happens on the way in: every mxproxy logger
sends its events through :data:`FILTERED`, which forwards to the global publisher.
``--json-logs`` replaces twistd's text observer with :func:`json_observer`. A line that a peer
can repeat at will goes through a :class:`RateLimitedLog`.
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


class RateLimitedLog:
    """A log line that a peer can trigger at will (a malformed frame, unusable credentials): the
    first is logged, later ones are only counted until ``window`` seconds have passed; the next
    one after that is logged again, after a line saying how many were suppressed. A flood costs
    two lines per window instead of one per event, and the log still says how big it was.

    No timer: the objects that own one live as long as the daemon or a connection, and
    :meth:`stop` reports a count still held when the source goes away.
    """

    def __init__(self, logger: _logger.Logger, clock: IReactorTime, what: str,
                 window: float = 60.0, level: LogLevel = LogLevel.warn) -> None:
        self._logger = logger
        self._clock = clock
        self._what = what
        self._window = window
        self._level = level
        self._quiet_until: float | None = None
        self._since = 0.0
        self.suppressed = 0
        """Events counted and not logged since the last count was reported."""

    def emit(self, format: str, **kwargs: Any) -> None:
        now = self._clock.seconds()
        if self._quiet_until is not None and now < self._quiet_until:
            self.suppressed += 1
            return
        self._report()
        self._logger.emit(self._level, format, **kwargs)
        self._since, self._quiet_until = now, now + self._window

    def stop(self) -> None:
        self._report()
        self._quiet_until = None

    def _report(self) -> None:
        count, self.suppressed = self.suppressed, 0
        if count:
            self._logger.emit(self._level, "{what}: {count} more suppressed in {seconds:.0f} s",
                              what=self._what, count=count,
                              seconds=self._clock.seconds() - self._since)


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
