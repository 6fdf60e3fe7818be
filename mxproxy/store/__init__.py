"""The token store: which devices each user registered, behind one interface with two back ends.

A token belongs to exactly one user per (provider, bundle, sandbox) — registering it for another
user moves it (mx-protocol.md §6.6) — and a user has a bounded number of devices. APNs tokens
are kept in lower case, so that one device is one row.

The push code depends on :class:`TokenStore` only. The back ends are SQLite
(:mod:`mxproxy.store.sqlite`: one file, one instance, the default) and PostgreSQL
(:mod:`mxproxy.store.postgres`: several instances sharing one database);
:func:`mxproxy.store.location.open_store` picks one from ``--db``. This module is the shared
vocabulary and imports neither.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

MAX_DEVICES_PER_USER = 20
"""Devices one user may have; registering one more replaces the least recently registered."""


class TokenStoreError(Exception):
    """The store cannot be opened or a statement failed; the message names the store (never
    with a password)."""


class StoreUnavailable(TokenStoreError):
    """The store cannot be used now: disk full, an I/O error, read-only, locked past the busy
    timeout, or the database server unreachable. A state of the machine, not of the request,
    that may pass: the API answers 503."""


class StoreClosed(StoreUnavailable):
    """A call came after :meth:`TokenStore.close`: the daemon is stopping, a state that passes
    as the others do (a restart, another instance), so the API answers 503 too."""


def pending_migrations(name: str, found: int, migrations: tuple[tuple[str, ...], ...],
                       ) -> list[tuple[int, tuple[str, ...]]]:
    """(version, statements) of each migration a store at schema version ``found`` still
    needs; a store newer than ``migrations`` know is refused (an older mxproxy must not write
    a schema it does not understand)."""
    if found > len(migrations):
        raise TokenStoreError(
            f"token store {name} has schema version {found}, newer than this mxproxy"
            f" supports ({len(migrations)}): upgrade mxproxy or use another --db")
    return [(version, migrations[version - 1])
            for version in range(found + 1, len(migrations) + 1)]


def canonical_token(provider: str, token: str) -> str:
    """The one form a token is stored and looked up in. APNs tokens are hex digits, the same
    device in either case: lower case, so that one device is one row. FCM tokens are
    case-sensitive: as given."""
    return token.lower() if provider == "apns" else token


def token_digest(token: str) -> str:
    """What names a token where others read it (a ``NOTIFY`` payload, seen by every listener
    and in the server's log): its SHA-256, which a token's 128+ random bits make
    irreversible. Of the token in lower case, whatever the provider: whoever names it (an
    answering app) may not say which provider it is of, and an APNs token is stored in lower
    case; two FCM tokens of one user differing in case alone do not occur."""
    return hashlib.sha256(token.lower().encode()).hexdigest()


def user_key(sn: str, jid: str) -> str:
    """The store's id of a user, ``<sn>:<jid>`` as in the original (mx-protocol.md §6.6): a
    JID is unique on one MX only."""
    return f"{sn}:{jid}"


def parse_user_key(user: str) -> tuple[str, str]:
    """The (sn, jid) of a :func:`user_key`."""
    sn, _, jid = user.partition(":")
    return sn, jid


def mask_token(token: str) -> str:
    """The first 6 and last 4 characters, or nothing for a token too short to hide anything."""
    if len(token) < 20:
        return "…"
    return f"{token[:6]}…{token[-4:]}"


@attrs.frozen
class Device:
    """One registered device: where to push (provider, bundle, sandbox, token) and for whom."""

    provider: str
    """``apns`` or ``gfcm``."""
    bundle: str
    """The APNs topic or the FCM app name."""
    sandbox: bool
    """APNs development environment (always False for FCM)."""
    token: str = attrs.field(repr=mask_token)
    user: str
    """:func:`user_key`."""
    created: float
    """First registration by this user, Unix seconds."""
    registered: float
    """Last (re-)registration, Unix seconds."""
    last_success: float | None = None
    last_error: float | None = None
    last_error_reason: str | None = None

    @property
    def label(self) -> str:
        """A short name for log lines: provider, bundle, environment and the masked token."""
        environment = " sandbox" if self.sandbox else ""
        return f"{self.provider}/{self.bundle}{environment} {mask_token(self.token)}"

    @property
    def key(self) -> tuple[str, str, bool, str]:
        """What identifies the device in the store: (provider, bundle, sandbox, token)."""
        return (self.provider, self.bundle, self.sandbox, self.token)


@attrs.frozen
class WriteFailure:
    """Why the store could not write, and since when; kept until a write succeeds."""

    since: float
    reason: str


class TokenStore(Protocol):
    """Devices per user. Every method returns a Deferred and never blocks the reactor; errors
    are :class:`TokenStoreError` (:class:`StoreUnavailable` for a state that may pass)."""

    name: str
    """The store in messages: the SQLite path or the PostgreSQL URL without its password."""
    max_devices_per_user: int
    write_failure: WriteFailure | None
    """Set when a write fails with :class:`StoreUnavailable`, cleared by the next write that
    succeeds: the health report shows it."""

    def register(self, user: str, provider: str, bundle: str, sandbox: bool,
                 token: str) -> Deferred[str | None]:
        """Store the device for ``user``, or refresh its registration time; fires with the
        previous owner when the token moved from another user, else None. A user who had
        :attr:`max_devices_per_user` devices loses the least recently registered one."""

    def remove(self, provider: str, bundle: str, sandbox: bool, token: str,
               user: str | None = None) -> Deferred[bool]:
        """Forget the device (only if ``user`` owns it, when given); fires with whether it was
        there."""

    def devices(self, user: str) -> Deferred[list[Device]]:
        """Every device of ``user``."""

    def has_devices(self, user: str) -> Deferred[bool]:
        """Whether ``user`` has any device left (the last one gone, the monitor can stop)."""

    def users(self, sn: str) -> Deferred[list[str]]:
        """Every user id (:func:`user_key`) with a device on the MX ``sn``, to restart
        monitors."""

    def count(self) -> Deferred[int]:
        """How many devices are registered: a cheap query that shows the store answers."""

    def record_success(self, device: Device, when: float) -> Deferred[bool]:
        """Note a delivery; fires with False if the device is gone meanwhile."""

    def record_error(self, device: Device, when: float, reason: str) -> Deferred[bool]:
        """Note a failed delivery; fires with False if the device is gone meanwhile."""

    def prune(self, device: Device,
              unless_registered_after: float | None = None) -> Deferred[bool]:
        """Delete a token the provider rejected, unless it was registered again after
        ``unless_registered_after`` (APNs 410 gives the time the token became invalid; pass the
        send time for other rejections, so a registration racing the push survives)."""

    def close(self) -> Deferred[None]:
        """Finish the calls already made and release the database; later calls fail with
        :class:`StoreClosed`. Safe to call more than once."""
