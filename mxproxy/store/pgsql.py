"""The PostgreSQL back end's schema, migrations and statements
(:class:`mxproxy.store.threaded.Statements`), blocking, on a pooled psycopg connection in
autocommit mode: a statement alone commits, several share an explicit transaction.

Several mxproxy instances share the database, so what SQLite got from having one writer is
explicit here: a transaction-level advisory lock serialises the migrations of instances
starting together, and another, per user, the registrations of one user (its device cap);
a token registered by two instances at once is settled by the primary key. Every change of
who has which device sends ``NOTIFY`` :data:`CHANNEL` with the user's key (never a token) in
the same transaction, so a listener hears of it exactly when it is committed.
"""

from __future__ import annotations

import secrets
from typing import Any

from psycopg import Connection

from mxproxy.store import pending_migrations
from mxproxy.store.threaded import Key, Note, Row

CHANNEL = "mxproxy_tokens"
"""NOTIFY channel of device changes; the payload is the user key (``<sn>:<jid>``) and, after a
space, the :data:`ORIGIN` of the process that made the change."""
ORIGIN = secrets.token_hex(4)
"""This process's mark on the changes it announces: its own listener skips them, since this
process applied them already (an owner's registration monitors the user as it is made)."""
ANSWERING_CHANNEL = "mxproxy_answering"
"""NOTIFY channel of a standby telling the owner that a device answers a pushed call through
it: ``<user key> <call id> <token digest>`` (:func:`mxproxy.store.token_digest`: never the token,
which every listener and the server's log would see)."""

LOCK_CLASS = 0x6D787078
"""The first key of mxproxy's two-key advisory locks (``mxpx``): the second says what is
locked. One-key (bigint) advisory locks are another key space and never collide with these."""
MIGRATION_LOCK = 1
"""Second key of the lock held while checking and migrating the schema."""
USER_LOCK_BASE = 1 << 16
"""Second keys of per-user locks are 20 bits of ``hashtext(user)`` above this, clear of the
fixed keys; two users sharing those bits only wait for each other."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # v1: one row per registered device; APNs tokens in lower case (the SQLite file's v2).
    (
        """CREATE TABLE mxproxy_devices (
            id bigint GENERATED ALWAYS AS IDENTITY,
            provider text NOT NULL CHECK (provider IN ('apns', 'gfcm')),
            bundle text NOT NULL,
            sandbox boolean NOT NULL,
            token text NOT NULL,
            user_id text COLLATE "C" NOT NULL,
            created double precision NOT NULL,
            registered double precision NOT NULL,
            last_success double precision,
            last_error double precision,
            last_error_reason text,
            PRIMARY KEY (provider, bundle, sandbox, token)
        )""",
        "CREATE INDEX mxproxy_devices_by_user ON mxproxy_devices (user_id)",
    ),
)
"""Migration N+1 is ``MIGRATIONS[N]``; a new version is a new entry, never an edited one."""

SCHEMA_VERSION = len(MIGRATIONS)

KEY = "provider = %s AND bundle = %s AND sandbox = %s AND token = %s"
COLUMNS = ("provider, bundle, sandbox, token, user_id, created, registered, last_success,"
           " last_error, last_error_reason")
"""A device row, in the order of :class:`mxproxy.store.Device`'s fields."""


def migrate(connection: Connection[Any], name: str) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction, under the migration
    lock so that instances starting together migrate once; the version found."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, MIGRATION_LOCK))
        connection.execute("CREATE TABLE IF NOT EXISTS mxproxy_schema_version"
                           " (version integer PRIMARY KEY,"
                           " applied timestamptz NOT NULL DEFAULT now())")
        (found,) = _one(connection, "SELECT coalesce(max(version), 0)"
                                    " FROM mxproxy_schema_version")
        for version, statements in pending_migrations(name, found, MIGRATIONS):
            for statement in statements:
                connection.execute(statement)
            connection.execute("INSERT INTO mxproxy_schema_version (version) VALUES (%s)",
                               (version,))
    return int(found)


def register(connection: Connection[Any], key: Key, user: str, now: float,
             cap: int) -> tuple[str | None, list[Row]]:
    """Store or refresh the device for ``user``; the previous owner when it moved, and the
    rows of the devices removed to keep the user within ``cap``."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s + (hashtext(%s) & 1048575))",
                           (LOCK_CLASS, USER_LOCK_BASE, user))
        row = connection.execute(
            f"SELECT user_id FROM mxproxy_devices WHERE {KEY} FOR UPDATE", key).fetchone()
        if row is None:
            inserted = connection.execute(
                "INSERT INTO mxproxy_devices (provider, bundle, sandbox, token, user_id, created,"
                " registered) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (*key, user, now, now)).rowcount
            if not inserted:  # another instance's registration of it committed meanwhile
                row = connection.execute(
                    f"SELECT user_id FROM mxproxy_devices WHERE {KEY} FOR UPDATE",
                    key).fetchone()
        previous = None
        if row is not None and row[0] == user:
            connection.execute(f"UPDATE mxproxy_devices SET registered = %s WHERE {KEY}",
                               (now, *key))
            return None, []
        if row is not None:
            # A new owner starts a new record: the old owner's delivery history is not theirs.
            connection.execute(
                "UPDATE mxproxy_devices SET user_id = %s, created = %s, registered = %s,"
                " last_success = NULL, last_error = NULL, last_error_reason = NULL"
                f" WHERE {KEY}", (user, now, now, *key))
            previous = str(row[0])
            notify(connection, previous)
        notify(connection, user)
        return previous, _beyond_cap(connection, key, user, cap)


def _beyond_cap(connection: Connection[Any], key: Key, user: str, cap: int) -> list[Row]:
    """Delete the user's least recently registered devices beyond ``cap`` (never ``key``, the
    one just registered); their rows."""
    rows = connection.execute(
        f"DELETE FROM mxproxy_devices WHERE id IN (SELECT id FROM mxproxy_devices"
        f" WHERE user_id = %s AND NOT ({KEY})"
        " ORDER BY registered DESC, created DESC, id DESC OFFSET %s)"
        f" RETURNING {COLUMNS}", (user, *key, cap - 1)).fetchall()
    return sorted(rows, key=lambda row: (row[6], row[5]), reverse=True)


def remove(connection: Connection[Any], key: Key, user: str | None) -> bool:
    return _delete(connection, "%s::text IS NULL OR user_id = %s", (user, user), key)


def prune(connection: Connection[Any], key: Key, unless_registered_after: float | None) -> bool:
    return _delete(connection, "%s::float8 IS NULL OR registered <= %s",
                   (unless_registered_after, unless_registered_after), key)


def _delete(connection: Connection[Any], condition: str, parameters: tuple[Any, ...],
            key: Key) -> bool:
    """Delete the device if ``condition`` holds, telling its user's listeners."""
    with connection.transaction():
        row = connection.execute(
            f"DELETE FROM mxproxy_devices WHERE {KEY} AND ({condition}) RETURNING user_id",
            (*key, *parameters)).fetchone()
        if row is not None:
            notify(connection, row[0])
        return row is not None


def notify(connection: Connection[Any], user: str) -> None:
    """Announce a change of ``user``'s devices, when the transaction commits."""
    connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{user} {ORIGIN}"))


def changed_user(payload: str) -> str | None:
    """The user of a :data:`CHANNEL` payload; None for a change this process made."""
    user, _, origin = payload.partition(" ")
    return None if origin == ORIGIN else user


_SUCCESS = f"UPDATE mxproxy_devices SET last_success = %s WHERE {KEY}"
_ERROR = f"UPDATE mxproxy_devices SET last_error = %s, last_error_reason = %s WHERE {KEY}"


def notes(connection: Connection[Any], batch: list[Note]) -> list[bool]:
    """Delivery bookkeeping, a batch in one transaction committed without waiting for the
    server's disk (``synchronous_commit = off``, for this transaction only): losing the last
    notes in a crash costs nothing; registrations commit durably. Whether each note touched
    its row."""
    with connection.transaction():
        connection.execute("SET LOCAL synchronous_commit = off")
        return [connection.execute(_SUCCESS, (when, *key)).rowcount > 0 if reason is None
                else connection.execute(_ERROR, (when, reason, *key)).rowcount > 0
                for key, when, reason in batch]


def devices(connection: Connection[Any], user: str) -> list[Row]:
    """The rows (:data:`COLUMNS`) of every device of ``user``."""
    return connection.execute(
        f"SELECT {COLUMNS} FROM mxproxy_devices WHERE user_id = %s"
        " ORDER BY provider, bundle, sandbox, created, token", (user,)).fetchall()


def has_devices(connection: Connection[Any], user: str) -> bool:
    return bool(_one(connection, "SELECT EXISTS (SELECT 1 FROM mxproxy_devices"
                                 " WHERE user_id = %s)", (user,))[0])


def count(connection: Connection[Any]) -> int:
    return int(_one(connection, "SELECT count(*) FROM mxproxy_devices")[0])


def users(connection: Connection[Any], prefix: str) -> list[str]:
    """Every user id that starts with ``prefix`` (``"<sn>:"``: the users of one MX)."""
    # user_id is in the C collation: byte order, so [prefix, prefix with its last character's
    # successor) holds exactly the ids that start with it, and the index is used.
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = connection.execute(
        "SELECT DISTINCT user_id FROM mxproxy_devices WHERE user_id >= %s AND user_id < %s"
        " ORDER BY user_id", (prefix, end)).fetchall()
    return [row[0] for row in rows]


def _one(connection: Connection[Any], query: str, parameters: tuple[Any, ...] = ()) -> Row:
    row = connection.execute(query, parameters).fetchone()
    assert row is not None  # an aggregate always has its row
    return tuple(row)
