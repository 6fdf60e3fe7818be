"""The PostgreSQL back end: several instances sharing one database (psycopg 3).

Concurrency: psycopg's blocking API on a pool of the store's own threads (a
:class:`psycopg_pool.ConnectionPool` of as many connections as threads), not its asyncio API.
The daemon runs Twisted's default reactor, not the asyncio one, so the async API would need a
second event loop on a thread of its own and every result carried across twice; the blocking
API on threads is what the SQLite back end already does, so both share
:class:`mxproxy.store.threaded.ThreadedStore` (coalesced notes, write-failure tracking, closing)
and the reactor thread never waits on the network. Unlike SQLite's one thread, a few threads
let a slow statement (a lock wait behind another instance) not hold up the rest; the statements
take the locks that make that safe (:mod:`mxproxy.store.pgsql`).

Every connection is checked as it leaves the pool, so after a PostgreSQL restart or failover
the first call does not fail on a connection the server already closed; while the server is
unreachable calls fail with :class:`mxproxy.store.StoreUnavailable` (the API's 503) within
:data:`CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool
from twisted.internet.interfaces import IReactorTime
from twisted.python.threadpool import ThreadPool

from mxproxy.store import MAX_DEVICES_PER_USER, StoreUnavailable, TokenStoreError
from mxproxy.store import pgsql as statements
from mxproxy.store.location import masked, without_secret
from mxproxy.store.pgsql import CHANNEL, SCHEMA_VERSION
from mxproxy.store.threaded import THREAD_NAME, ThreadedStore, store_threads

__all__ = ["CHANNEL", "PostgresStore"]

T = TypeVar("T")

CONNECTIONS = 4
"""Threads, and pooled connections: enough that one lock wait does not stall the store."""
CONNECT_TIMEOUT_S = 10
"""How long a call waits for a connection (the server's, then the pool's) before it fails."""


class PostgresStore(ThreadedStore):
    """Devices per user in a PostgreSQL database shared by several instances."""

    def __init__(self, conninfo: str, pool: ConnectionPool, threads: ThreadPool, reactor: Any,
                 clock: IReactorTime, max_devices_per_user: int = MAX_DEVICES_PER_USER) -> None:
        super().__init__(masked(conninfo), statements, threads, reactor, clock,
                         max_devices_per_user)
        self.conninfo = conninfo
        """The libpq URL, password included: for a session connection of its own (LISTEN
        :data:`CHANNEL`, advisory locks). Never log it: :attr:`name` is the masked form."""
        self._pool = pool

    @classmethod
    def open(cls, conninfo: str, clock: IReactorTime | None = None, reactor: Any = None,
             max_devices_per_user: int = MAX_DEVICES_PER_USER,
             timeout: float = CONNECT_TIMEOUT_S) -> PostgresStore:
        """Connect, check and migrate the schema, and start the pool.

        Blocks (before the reactor runs) so that the daemon exits on an unreachable database,
        bad credentials or a schema newer than it knows, before anything listens. ``timeout``:
        how long a call waits for a connection before it fails. Raises
        :class:`mxproxy.store.TokenStoreError`.
        """
        if reactor is None:
            from twisted.internet import reactor
        name = masked(conninfo)
        try:
            with psycopg.connect(conninfo, connect_timeout=max(2, round(timeout)),
                                 autocommit=True) as connection:
                found = statements.migrate(connection, name)
        except psycopg.Error as error:
            raise statement_error(name, conninfo, error) from error
        pool = ConnectionPool(conninfo, min_size=1, max_size=CONNECTIONS, open=False,
                              name=THREAD_NAME, timeout=timeout,
                              check=ConnectionPool.check_connection,
                              kwargs={"autocommit": True,
                                      "connect_timeout": max(2, round(timeout)),
                                      "application_name": "mxproxy"})
        pool.open()
        store = cls(conninfo, pool, store_threads(1, CONNECTIONS), reactor,
                    reactor if clock is None else clock, max_devices_per_user)
        store.log_schema(found, SCHEMA_VERSION)
        return store

    def _call(self, query: Callable[..., T], *args: Any) -> T:
        try:
            with self._pool.connection() as connection:
                return query(connection, *args)
        except psycopg.Error as error:
            raise statement_error(self.name, self.conninfo, error) from error

    def _release(self) -> None:
        self._pool.close()


def statement_error(name: str, conninfo: str, error: psycopg.Error) -> TokenStoreError:
    """Ours for psycopg's ``error``, without the password: :class:`StoreUnavailable` for a
    state of the server or the network (unreachable, shut down, out of disk or connections, a
    read-only standby, no free pooled connection) rather than of the statement."""
    unavailable = isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError,
                                     psycopg.errors.ReadOnlySqlTransaction))
    message = without_secret(str(error).strip(), conninfo)
    return (StoreUnavailable if unavailable else TokenStoreError)(
        f"token store {name}: {message}")
