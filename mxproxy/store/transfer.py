"""``mxproxy import-tokens``: copy every device of an SQLite token store into PostgreSQL, to move
a single instance onto a shared database. Blocking and twistd-free: run it while no mxproxy
writes the SQLite file.

Idempotent: a device is one row whatever the number of runs. A device PostgreSQL already has
takes the file's row (owner, times, delivery notes) unless PostgreSQL's was registered later —
an instance already running on PostgreSQL knows better than an old file. Each user imported is
announced on :data:`mxproxy.store.pgsql.CHANNEL`, as a registration would be.
"""

from __future__ import annotations

import os
import sqlite3

import attrs
import psycopg

from mxproxy.store import TokenStoreError, pgsql, sqlitefile
from mxproxy.store.location import check, is_postgres, masked
from mxproxy.store.postgres import CONNECT_TIMEOUT_S, statement_error


@attrs.frozen
class Imported:
    """What one run did."""

    read: int
    users: int
    added: int
    updated: int
    unchanged: int
    """Devices PostgreSQL already had as in the file, or registered later: left as they
    were."""


_UPSERT = (
    f"INSERT INTO mxproxy_devices ({pgsql.COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (provider, bundle, sandbox, token) DO UPDATE SET"
    " user_id = excluded.user_id, created = excluded.created, registered = excluded.registered,"
    " last_success = excluded.last_success, last_error = excluded.last_error,"
    " last_error_reason = excluded.last_error_reason"
    " WHERE mxproxy_devices.registered <= excluded.registered"
    " AND (mxproxy_devices.user_id, mxproxy_devices.created, mxproxy_devices.last_success,"
    " mxproxy_devices.last_error, mxproxy_devices.last_error_reason, mxproxy_devices.registered)"
    " IS DISTINCT FROM (excluded.user_id, excluded.created, excluded.last_success,"
    " excluded.last_error, excluded.last_error_reason, excluded.registered)"
    " RETURNING xmax = 0")
"""One device; returns whether it was inserted (xmax 0: a new row version with no
predecessor), nothing when PostgreSQL's row was newer or already the same."""


def import_tokens(path: str, url: str) -> Imported:
    """Copy the devices of the SQLite store at ``path`` into the PostgreSQL database ``url``
    (migrating both schemas as a start would), in one transaction. Raises
    :class:`TokenStoreError`."""
    if not is_postgres(url):
        raise TokenStoreError(f"{masked(url)}: not a postgresql:// URL")
    problem = check(url)
    if problem is not None:
        raise TokenStoreError(problem)
    if not os.path.isfile(path):
        raise TokenStoreError(f"token store {path}: no such file")
    rows = _read(path)
    name = masked(url)
    added = updated = 0
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S,
                             autocommit=True) as connection:
            pgsql.migrate(connection, name)
            with connection.transaction():
                for row in rows:
                    outcome = connection.execute(_UPSERT, (*row[:2], bool(row[2]),
                                                           *row[3:])).fetchone()
                    if outcome is not None:
                        added += bool(outcome[0])
                        updated += not outcome[0]
                users = sorted({str(row[4]) for row in rows})
                for user in users:
                    pgsql.notify(connection, user)
    except psycopg.Error as error:
        raise statement_error(name, url, error) from error
    return Imported(len(rows), len(users), added, updated, len(rows) - added - updated)


def _read(path: str) -> list[tuple[object, ...]]:
    """Every device row of the file, which is opened, checked and migrated as a start would."""
    connection, _ = sqlitefile.connect(path)
    try:
        return connection.execute(f"SELECT {sqlitefile.COLUMNS} FROM devices").fetchall()
    except sqlite3.Error as error:
        raise sqlitefile.statement_error(path, error) from error
    finally:
        connection.close()
