"""``--db``: where the tokens are. A ``postgresql://`` (or ``postgres://``) URL selects PostgreSQL,
anything else is an SQLite file. The URL is libpq's, so what it leaves out (even everything, as
in a bare ``postgresql://``) comes from the PG* environment variables and ``~/.pgpass``, as for
psql. Its password never reaches a log line or an error message: :func:`masked` is the URL as
shown.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime

from mxproxy.store import MAX_DEVICES_PER_USER, TokenStore

SCHEMES = ("postgresql://", "postgres://")

_PASSWORD_PARAMETER = re.compile(r"(?i)(\bpassword=)[^&\s]*")


def is_postgres(db: str) -> bool:
    return db.lower().startswith(SCHEMES)


def password(url: str) -> str | None:
    """The password the URL carries, in its user part or as a parameter, if any."""
    try:
        found = urlsplit(url).password
    except ValueError:
        found = None
    if found:
        return found
    parameter = re.search(r"(?i)\bpassword=([^&\s]+)", url)
    return parameter.group(1) if parameter else None


def masked(db: str) -> str:
    """``db`` for messages: a URL's password replaced by ``***``; a path as it is."""
    if not is_postgres(db):
        return db
    scheme, _, rest = db.partition("://")
    authority, slash, tail = rest.partition("/")
    user, at, hosts = authority.rpartition("@")
    if at and ":" in user:
        authority = f"{user.partition(':')[0]}:***@{hosts}"
    return _PASSWORD_PARAMETER.sub(r"\1***", f"{scheme}://{authority}{slash}{tail}")


def without_secret(message: str, db: str) -> str:
    """``message`` (a driver's error) with the URL's password, should it appear, masked."""
    secret = password(db)
    return message.replace(secret, "***") if secret else message


def check(db: str) -> str | None:
    """What is wrong with ``db`` as a store location, or None: a URL libpq cannot parse (its
    words, without the password). An SQLite path is checked when the store opens."""
    if not db:
        return "--db: empty; give an SQLite file or a postgresql:// URL"
    if not is_postgres(db):
        return None
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(db)
    except ProgrammingError as error:
        reason = without_secret(str(error).strip(), db)
        return f"--db {masked(db)}: not a valid PostgreSQL URL: {reason}"
    return None


def open_store(db: str, reactor: Any = None, clock: IReactorTime | None = None,
               max_devices_per_user: int = MAX_DEVICES_PER_USER) -> TokenStore:
    """Open the store ``db`` names, blocking until it is ready (created or migrated as needed):
    the daemon exits on a bad ``--db`` before anything listens. Raises
    :class:`mxproxy.store.TokenStoreError`."""
    problem = check(db)
    if problem is not None:
        from mxproxy.store import TokenStoreError

        raise TokenStoreError(problem)
    if is_postgres(db):
        from mxproxy.store.postgres import PostgresStore

        return PostgresStore.open(db, clock=clock, reactor=reactor,
                                  max_devices_per_user=max_devices_per_user)
    from mxproxy.store.sqlite import SQLiteStore

    return SQLiteStore.open(db, clock=clock, reactor=reactor,
                            max_devices_per_user=max_devices_per_user)
