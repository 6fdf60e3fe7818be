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

from twisted.internet.interfaces import IDelayedCall, IReactorTime
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
    """A log line that a peer can trigger at will (a malformed frame, a bad event): the first is
    logged, later ones are only counted until ``window`` seconds have passed, and then one line
    says how many were suppressed. A flood costs one line per window instead of one per event,
    and the log still says how big it was.

    While events keep coming, every window ends with such a count; a window without any ends
    the quiet, so the next event is logged in full again. :meth:`stop` reports what is still
    counted and leaves no timer behind; call it when the source goes away.
    """

    def __init__(self, logger: _logger.Logger, clock: IReactorTime, what: str,
                 window: float = 60.0, level: LogLevel = LogLevel.warn) -> None:
        self._logger = logger
        self._clock = clock
        self._what = what
        self._window = window
        self._level = level
        self._quiet: IDelayedCall | None = None
        self._since = 0.0
        self.suppressed = 0
        """Events counted and not logged since the last count was reported."""

    def emit(self, format: str, **kwargs: Any) -> None:
        if self._quiet is not None:
            self.suppressed += 1
            return
        self._logger.emit(self._level, format, **kwargs)
        self._start_quiet()

    def stop(self) -> None:
        if self._quiet is not None and self._quiet.active():
            self._quiet.cancel()
        self._quiet = None
        self._report()

    def _start_quiet(self) -> None:
        self._since = self._clock.seconds()
        self._quiet = self._clock.callLater(self._window, self._window_ended)

    def _window_ended(self) -> None:
        self._quiet = None
        if self._report():
            self._start_quiet()

    def _report(self) -> bool:
        """Log the count of suppressed events, if any; whether there was one."""
        count, self.suppressed = self.suppressed, 0
        if count:
            self._logger.emit(self._level, "{what}: {count} more suppressed in {seconds:.0f} s",
                              what=self._what, count=count,
                              seconds=self._clock.seconds() - self._since)
        return bool(count)


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
