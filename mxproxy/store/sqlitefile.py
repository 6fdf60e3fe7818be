"""The token store's SQLite file, as its one thread sees it: opening, checking and migrating the
file, and every statement the store runs (:class:`mxproxy.store.threaded.Statements`).

Nothing here runs on the reactor thread: :class:`mxproxy.store.sqlite.SQLiteStore` hands each
call to its thread and the result back. Rows come back as tuples; the store makes them devices.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from mxproxy.store import StoreUnavailable, TokenStoreError, pending_migrations
from mxproxy.store.threaded import Key, Note, Row

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock (an admin's sqlite3 shell)."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: one row per registered device.
    (
        """CREATE TABLE devices (
            provider TEXT NOT NULL CHECK (provider IN ('apns', 'gfcm')),
            bundle TEXT NOT NULL,
            sandbox INTEGER NOT NULL CHECK (sandbox IN (0, 1)),
            token TEXT NOT NULL,
            user TEXT NOT NULL,
            created REAL NOT NULL,
            registered REAL NOT NULL,
            last_success REAL,
            last_error REAL,
            last_error_reason TEXT,
            PRIMARY KEY (provider, bundle, sandbox, token)
        )""",
        "CREATE INDEX devices_by_user ON devices (user)",
    ),
    # v2: APNs tokens in lower case, the form the store now keeps (hex: either case is the same
    # device). Of the rows that differed only in case, the last registered one stays.
    (
        """DELETE FROM devices WHERE rowid IN (
            SELECT rowid FROM (
                SELECT rowid, row_number() OVER (
                    PARTITION BY bundle, sandbox, lower(token)
                    ORDER BY registered DESC, created DESC, rowid DESC) AS newest
                FROM devices WHERE provider = 'apns')
            WHERE newest > 1)""",
        "UPDATE devices SET token = lower(token) WHERE provider = 'apns' AND token != lower(token)",
    ),
)
"""Migration N+1 is ``MIGRATIONS[N]``; a new version is a new entry, never an edited one."""

SCHEMA_VERSION = len(MIGRATIONS)

KEY = "provider = ? AND bundle = ? AND sandbox = ? AND token = ?"
"""The WHERE clause of one device; its parameters are (provider, bundle, sandbox, token)."""
COLUMNS = ("provider, bundle, sandbox, token, user, created, registered, last_success,"
           " last_error, last_error_reason")
"""A device row, in the order of :class:`mxproxy.store.Device`'s fields."""


_UNAVAILABLE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY,
                          sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN})
"""Primary result codes of a storage condition rather than of a statement."""


def statement_error(path: str, error: sqlite3.Error) -> TokenStoreError:
    """Ours for SQLite's ``error``: :class:`StoreUnavailable` for a storage condition."""
    code = getattr(error, "sqlite_errorcode", None)
    unavailable = code is not None and code & 0xFF in _UNAVAILABLE  # extended codes: low byte
    return (StoreUnavailable if unavailable else TokenStoreError)(f"token store {path}: {error}")


def connect(path: str) -> tuple[sqlite3.Connection, int]:
    """Open, check and migrate the store at ``path``, or create one if nothing is there; the
    connection and the schema version found (0: created).

    Only a path that does not exist becomes a new store. An existing file that is empty or not
    an mxproxy store is refused, untouched: a lost or misplaced database must stop the start,
    not turn silently into a store without devices.
    """
    created = not os.path.lexists(path)
    if created:
        _create(path)
    elif os.path.isfile(path) and os.path.getsize(path) == 0:
        raise TokenStoreError(
            f"token store {path} is an empty file, not an mxproxy token store: remove it or give"
            " --db a path that does not exist to start a new store")
    # mode=rw: SQLite would create a file that vanished since the check above.
    connection = _open(f"{pathlib.Path(os.path.abspath(path)).as_uri()}?mode=rw", path, "open")
    try:
        found = _prepare(connection, path)
    except BaseException:
        connection.close()
        raise
    return connection, 0 if created else found


def _open(target: str, path: str, verb: str) -> sqlite3.Connection:
    """A connection to ``target`` (a file name or a ``file:`` URI) for the store at ``path``."""
    try:
        connection = sqlite3.connect(target, uri=target.startswith("file:"),
                                     isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as error:
        raise TokenStoreError(f"token store {path}: cannot {verb}: {error}") from error
    return connection


def _create(path: str) -> None:
    """Build a new store beside ``path`` and link it into place, so that ``path`` is a complete
    store or nothing: a crash while creating never leaves the empty file a restart refuses."""
    partial = path + ".new"
    _remove(partial)  # what an earlier crash while creating left
    try:
        connection = _open(partial, path, "create")
        try:
            _configure(connection, path)
            _migrate(connection, path)
        finally:
            connection.close()  # the last connection checkpoints the WAL into the file
        os.link(partial, path)  # unlike a rename, never replaces a file that appeared meanwhile
        _sync_directory(path)
    except (sqlite3.Error, OSError) as error:
        raise TokenStoreError(f"token store {path}: cannot create: {error}") from error
    finally:
        _remove(partial)


def _remove(database: str) -> None:
    """Delete a database file and its WAL and shared-memory files, those that exist."""
    for name in (database, database + "-wal", database + "-shm"):
        with suppress(FileNotFoundError):
            os.unlink(name)


def _sync_directory(path: str) -> None:
    """Make the new directory entry durable, as the commit inside the file already is."""
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _prepare(connection: sqlite3.Connection, path: str) -> int:
    """Check an existing file, then configure and migrate it; the version found."""
    try:
        # Read before anything is written: another program's file stays as it was.
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            raise TokenStoreError(f"{path} is an SQLite file but not an mxproxy token store"
                                  + ("" if tables else " (it has no tables)"))
        _configure(connection, path)
        problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise TokenStoreError(f"token store {path} is corrupt: {'; '.join(problems[:3])}")
        return _migrate(connection, path)
    except sqlite3.Error as error:
        raise TokenStoreError(f"token store {path} is unusable: {error}") from error


def _configure(connection: sqlite3.Connection, path: str) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise TokenStoreError(f"token store {path}: WAL mode unavailable (got {mode!r})")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")


def _migrate(connection: sqlite3.Connection, path: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction; the version found."""
    with transaction(connection):
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version"
                           " (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
        (found,) = connection.execute(
            "SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        for version, statements in pending_migrations(path, found, MIGRATIONS):
            for statement in statements:
                connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?, datetime('now'))",
                               (version,))
    return int(found)


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error (unless SQLite already did)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def register(connection: sqlite3.Connection, key: Key, user: str,
             now: float, cap: int) -> tuple[str | None, list[Row]]:
    """Store or refresh the device for ``user``; the previous owner when it moved, and the
    rows of the devices removed to keep the user within ``cap``."""
    with transaction(connection):
        row = connection.execute(f"SELECT user FROM devices WHERE {KEY}", key).fetchone()
        if row is None:
            connection.execute(
                "INSERT INTO devices (provider, bundle, sandbox, token, user, created, registered)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, user, now, now))
            previous = None
        elif row[0] == user:
            connection.execute(f"UPDATE devices SET registered = ? WHERE {KEY}", (now, *key))
            return None, []
        else:
            # A new owner starts a new record: the old owner's delivery history is not theirs.
            connection.execute(
                "UPDATE devices SET user = ?, created = ?, registered = ?, last_success = NULL,"
                f" last_error = NULL, last_error_reason = NULL WHERE {KEY}",
                (user, now, now, *key))
            previous = str(row[0])
        return previous, _beyond_cap(connection, key, user, cap)


def _beyond_cap(connection: sqlite3.Connection, key: Key, user: str,
                cap: int) -> list[Row]:
    """Delete the user's least recently registered devices beyond ``cap`` (never ``key``, the
    one just registered); their rows."""
    rows = connection.execute(
        f"SELECT {COLUMNS} FROM devices WHERE user = ? AND NOT ({KEY})"
        " ORDER BY registered DESC, created DESC, rowid DESC LIMIT -1 OFFSET ?",
        (user, *key, cap - 1)).fetchall()
    connection.executemany(f"DELETE FROM devices WHERE {KEY}", [row[:4] for row in rows])
    return rows


def remove(connection: sqlite3.Connection, key: Key, user: str | None) -> bool:
    return _write(connection, f"DELETE FROM devices WHERE {KEY} AND (? IS NULL OR user = ?)",
                  (*key, user, user))


def prune(connection: sqlite3.Connection, key: Key, unless_registered_after: float | None) -> bool:
    return _write(connection,
                  f"DELETE FROM devices WHERE {KEY} AND (? IS NULL OR registered <= ?)",
                  (*key, unless_registered_after, unless_registered_after))


def _write(connection: sqlite3.Connection, statement: str, parameters: tuple[Any, ...]) -> bool:
    """One autocommitted statement; whether it touched a row."""
    return connection.execute(statement, parameters).rowcount > 0


_SUCCESS = f"UPDATE devices SET last_success = ? WHERE {KEY}"
_ERROR = f"UPDATE devices SET last_error = ?, last_error_reason = ? WHERE {KEY}"


def notes(connection: sqlite3.Connection, batch: list[Note]) -> list[bool]:
    """Delivery bookkeeping, a batch in one transaction committed without waiting for the disk:
    a push burst writes one note per device, and an fsync each would queue the next calls'
    device lookups behind them. Losing the last notes in a power cut costs nothing;
    registrations stay synchronous=FULL. Whether each note touched its row."""
    connection.execute("PRAGMA synchronous=NORMAL")
    try:
        with transaction(connection):
            return [_write(connection, _SUCCESS, (when, *key)) if reason is None
                    else _write(connection, _ERROR, (when, reason, *key))
                    for key, when, reason in batch]
    finally:
        connection.execute("PRAGMA synchronous=FULL")


def devices(connection: sqlite3.Connection, user: str) -> list[Row]:
    """The rows (:data:`COLUMNS`) of every device of ``user``."""
    return connection.execute(
        f"SELECT {COLUMNS} FROM devices WHERE user = ? ORDER BY provider, bundle, sandbox,"
        " created, token", (user,)).fetchall()


def has_devices(connection: sqlite3.Connection, user: str) -> bool:
    (found,) = connection.execute(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE user = ?)", (user,)).fetchone()
    return bool(found)


def count(connection: sqlite3.Connection) -> int:
    (found,) = connection.execute("SELECT count(*) FROM devices").fetchone()
    return int(found)


def users(connection: sqlite3.Connection, prefix: str) -> list[str]:
    """Every user id that starts with ``prefix`` (``"<sn>:"``: the users of one MX)."""
    # The range [prefix, prefix with its last character's successor) holds exactly the ids that
    # start with it ("AB:" then ends before "AB;", so "AB:" never matches "ABC:…"), and the
    # index on user is used.
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = connection.execute(
        "SELECT DISTINCT user FROM devices WHERE user >= ? AND user < ? ORDER BY user",
        (prefix, end))
    return [row[0] for row in rows]
