"""Loggers whose events pass one level filter, so ``--debug`` can open it at run time.

twistd owns the global log observer, so filtering happens on the way in: every mxproxy logger
sends its events through :data:`FILTERED`, which forwards to the global publisher.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

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
