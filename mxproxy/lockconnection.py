"""The PostgreSQL connection that holds this instance's MX locks, hears token changes and
answers through other instances, and tells the owner of answers through this one.

A session advisory lock belongs to one connection, so this one is dedicated: never pooled,
never shared with the token store's queries. It lives on a thread of its own, which blocks in
``select()`` on the socket between queries: a ``NOTIFY`` is read the moment it arrives, and
PostgreSQL ending the session (a stop, ``pg_terminate_backend``) is noticed at once rather
than at the next heartbeat. psycopg's async API would need the asyncio reactor, which the
daemon does not run; one thread that only ever waits is cheaper than changing reactors.

The reactor never waits for this thread: what it asks returns a Deferred, and the timing rules
(how long an owner may trust an old answer) are in :mod:`mxproxy.ownership`, on the reactor.

Dead peers are noticed on both sides. The server is told, per session, to drop a silent client
after :data:`SERVER_DEAD_AFTER` seconds (keepalives 2 s idle + 3 probes 1 s apart, or 5 s of
unacknowledged data: ``tcp_user_timeout``), which frees a vanished owner's locks; the client
asks the same of its own socket (3 s), and no statement may take over 1 s.
"""

from __future__ import annotations

import os
import select
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from mxproxy.logs import Logger
from mxproxy.store.location import without_secret
from mxproxy.store.pgsql import ANSWERING_CHANNEL, CHANNEL, changed_user

SERVER_DEAD_AFTER = 5.0
"""Seconds of silence (2 + 3 x 1) after which PostgreSQL drops this session and its locks."""
CONNECT_OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 2,
    "application_name": "mxproxy ownership",
    # The client's own socket: a server gone without a word fails the query in ~3 s.
    "keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 1,
    "tcp_user_timeout": 3000,
    # The server's side of the same socket, and a bound on any statement.
    "options": "-c statement_timeout=1000 -c tcp_keepalives_idle=2 "
               "-c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=5000",
}
IDLE_WAKE = 5.0
"""Seconds the thread waits for the socket or a request before looking again."""

Job = Callable[[Any], Any]


class PostgresLocks:
    """:class:`mxproxy.ownership.LockSession` on a psycopg 3 connection of its own."""

    log = Logger()

    def __init__(self, conninfo: str, reactor: Any) -> None:
        self._conninfo = conninfo
        self._reactor = reactor
        self._jobs: deque[tuple[Job, Deferred[Any]] | None] = deque()
        self._wake_read = self._wake_write = -1
        self._on_notify: dict[str, Callable[[str], None]] = {}
        """The observer of each channel listened to."""
        self._on_lost: Callable[[str], None] = lambda _: None
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        """The thread's alone."""
        self._stopped: Deferred[None] | None = None

    def listen(self, on_tokens: Callable[[str], None], on_answering: Callable[[str], None],
               on_lost: Callable[[str], None]) -> None:
        self._on_notify = {CHANNEL: on_tokens, ANSWERING_CHANNEL: on_answering}
        self._on_lost = on_lost
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="mxproxy-locks", daemon=True)
        self._thread.start()

    def try_lock(self, key: int) -> Deferred[bool]:
        return self._ask(_scalar("SELECT pg_try_advisory_lock(%s)", key)).addCallback(bool)

    def unlock(self, key: int) -> Deferred[None]:
        return self._ask(_scalar("SELECT pg_advisory_unlock(%s)", key)).addCallback(_nothing)

    def beat(self) -> Deferred[None]:
        return self._ask(_scalar("SELECT 1")).addCallback(_nothing)

    def tell_answering(self, payload: str) -> Deferred[None]:
        # Autocommit: committed, and so sent to every listener, once the statement returns.
        return self._ask(_scalar("SELECT pg_notify(%s, %s)", ANSWERING_CHANNEL, payload)
                         ).addCallback(_nothing)

    def reset(self) -> None:
        if self._stopped is None:  # closed: the connection is gone already
            self._ask(_reset)

    def close(self) -> Deferred[None]:
        if self._thread is None:
            return succeed(None)
        if self._stopped is None:
            self._stopped = Deferred()
            self._jobs.append(None)
            self._wake()
        return self._stopped

    def _ask(self, job: Job) -> Deferred[Any]:
        """Queue ``job`` for the thread (started by :meth:`listen`); after :meth:`close` it
        fails at once: the thread and its wake-up pipe are gone."""
        assert self._thread is not None, "listen() starts the connection's thread"
        if self._stopped is not None:
            return fail(DatabaseUnavailable("the lock connection is closed"))
        answer: Deferred[Any] = Deferred()
        self._jobs.append((job, answer))
        self._wake()
        return answer

    def _wake(self) -> None:
        os.write(self._wake_write, b"x")

    # -- on the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        import psycopg

        while True:
            connection = self._connection
            waiting = [self._wake_read] + ([connection.fileno()] if connection else [])
            readable, _, _ = select.select(waiting, [], [], IDLE_WAKE)
            if self._wake_read in readable:
                os.read(self._wake_read, 4096)
            while self._jobs:
                item = self._jobs.popleft()
                if item is None:
                    self._drop()
                    self._reactor.callFromThread(self._closed)
                    return
                job, answer = item
                try:
                    result = self._perform(psycopg, job)
                except psycopg.Error as error:
                    self._drop()
                    self._reactor.callFromThread(answer.errback,
                                                 DatabaseUnavailable(self._reason(error)))
                else:
                    self._reactor.callFromThread(answer.callback, result)
            self._read_notifications(psycopg)

    def _perform(self, psycopg: Any, job: Job) -> Any:
        if job is _reset:
            self._drop()
            return None
        if self._connection is None:
            connection = psycopg.connect(self._conninfo, **CONNECT_OPTIONS)
            for channel in self._on_notify:
                connection.execute(f"LISTEN {channel}")
            self._connection = connection
        return job(self._connection)

    def _read_notifications(self, psycopg: Any) -> None:
        """Whatever the server sent meanwhile: notifications, or the end of the session."""
        if self._connection is None:
            return
        try:
            for notify in self._connection.notifies(timeout=0):
                payload = notify.payload
                if notify.channel == CHANNEL:
                    payload = changed_user(payload)
                    if payload is None:
                        continue  # this process's own change, applied as it was made
                self._reactor.callFromThread(self._on_notify[notify.channel], payload)
        except psycopg.Error as error:
            self._drop()
            self._reactor.callFromThread(self._on_lost, self._reason(error))

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _reason(self, error: Exception) -> str:
        """The driver's first line, without the URL's password should it quote it."""
        text = str(error).strip()
        return without_secret(text.splitlines()[0], self._conninfo) if text else \
            type(error).__name__

    def _closed(self) -> None:
        """On the reactor, once the thread is done: the pipe is closed by the side that writes
        to it, so :meth:`close` can never write to a pipe the thread closed meanwhile (the
        thread may see the stop in its queue before the byte that announces it)."""
        os.close(self._wake_read)
        os.close(self._wake_write)
        assert self._stopped is not None
        self._stopped.callback(None)


class DatabaseUnavailable(Exception):
    """The lock connection failed a query or could not be opened; its locks are gone."""


def _scalar(sql: str, *parameters: object) -> Job:
    """The job that runs one query and returns its one value."""
    return lambda connection: connection.execute(sql, parameters).fetchone()[0]


def _nothing(_: object) -> None:
    return None


def _reset(connection: Any) -> None:
    """The job that drops the connection (compared by identity, never run)."""
