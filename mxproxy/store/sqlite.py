"""The SQLite back end: one file, one instance, the default.

SQLite runs in WAL mode with ``synchronous=FULL``, so a registration is acknowledged only once its
commit is on disk, and the daemon may be killed at any time. The one connection lives on one
dedicated thread: SQL never runs on the reactor thread, calls run in call order, and a single
writer needs no locking of our own. The file and its statements are in
:mod:`mxproxy.store.sqlitefile`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.python.threadpool import ThreadPool

from mxproxy.store import MAX_DEVICES_PER_USER
from mxproxy.store import sqlitefile as statements
from mxproxy.store.sqlitefile import SCHEMA_VERSION, statement_error
from mxproxy.store.threaded import ThreadedStore, store_threads

T = TypeVar("T")


class SQLiteStore(ThreadedStore):
    """Devices per user in one SQLite file, on one thread of its own."""

    def __init__(self, path: str, connection: sqlite3.Connection, threads: ThreadPool,
                 reactor: Any, clock: IReactorTime,
                 max_devices_per_user: int = MAX_DEVICES_PER_USER) -> None:
        super().__init__(path, statements, threads, reactor, clock, max_devices_per_user)
        self.path = path
        self._connection = connection

    @classmethod
    def open(cls, path: str, clock: IReactorTime | None = None, reactor: Any = None,
             max_devices_per_user: int = MAX_DEVICES_PER_USER) -> SQLiteStore:
        """Open (creating and migrating as needed) the store at ``path``.

        Blocks until the file is checked, so the daemon exits on a bad ``--db`` before anything
        listens. ``clock`` stamps registrations; ``reactor`` receives the results and closes the
        store at shutdown. Raises :class:`mxproxy.store.TokenStoreError`.
        """
        if reactor is None:
            from twisted.internet import reactor
        # Opened on the thread that will use it: an sqlite3 connection stays on its thread.
        threads = store_threads(1, 1)
        opened: Future[tuple[sqlite3.Connection, int]] = Future()

        def settle(ok: bool, result: Any) -> None:
            if ok:
                opened.set_result(result)
            else:
                opened.set_exception(result.value)

        threads.callInThreadWithCallback(settle, statements.connect, path)
        try:
            connection, found = opened.result()
        except BaseException:
            threads.stop()
            raise
        store = cls(path, connection, threads, reactor, reactor if clock is None else clock,
                    max_devices_per_user)
        store.log_schema(found, SCHEMA_VERSION)
        return store

    def _call(self, query: Callable[..., T], *args: Any) -> T:
        try:
            return query(self._connection, *args)
        except sqlite3.Error as error:
            raise statement_error(self.path, error) from error

    def _release(self) -> None:
        self._connection.close()  # the last connection checkpoints the WAL into the file
