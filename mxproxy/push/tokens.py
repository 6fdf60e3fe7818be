"""The token store: which devices each user registered, kept durably in one SQLite file.

A token belongs to exactly one user per (provider, bundle, sandbox) — registering it for another
user moves it (mx-protocol.md §6.6) — and a user has a bounded number of devices. APNs tokens
are kept in lower case, so that one device is one row. SQLite runs in WAL mode with
``synchronous=FULL``, so a registration is acknowledged only once its commit is on disk, and the
daemon may be killed at any time. The one connection lives on one dedicated thread: SQL never
runs on the reactor thread, and a single writer needs no locking of our own; the statements it
runs are in :mod:`mxproxy.push.tokenfile`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxproxy.logs import Logger
from mxproxy.push import tokenfile
from mxproxy.push.tokenfile import (
    KEY,
    SCHEMA_VERSION,
    Row,
    StoreUnavailable,
    TokenStoreError,
    statement_error,
)

T = TypeVar("T")

MAX_DEVICES_PER_USER = 20
"""Devices one user may have; registering one more replaces the least recently registered."""


class StoreClosed(TokenStoreError):
    """A call came after :meth:`TokenStore.close`."""


def canonical_token(provider: str, token: str) -> str:
    """The one form a token is stored and looked up in. APNs tokens are hex digits, the same
    device in either case: lower case, so that one device is one row. FCM tokens are
    case-sensitive: as given."""
    return token.lower() if provider == "apns" else token


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


@attrs.frozen
class WriteFailure:
    """Why the store could not write, and since when; kept until a write succeeds."""

    since: float
    reason: str


class TokenStore:
    """Devices per user in one SQLite file; every method returns a Deferred and runs its SQL on
    the store's own thread, in call order."""

    log = Logger()

    def __init__(self, path: str, connection: sqlite3.Connection, pool: ThreadPool,
                 reactor: Any, clock: IReactorTime,
                 max_devices_per_user: int = MAX_DEVICES_PER_USER) -> None:
        self.path = path
        self.max_devices_per_user = max_devices_per_user
        self._connection = connection
        self._pool = pool
        self._reactor = reactor
        self._clock = clock
        self._closing: list[Deferred[None]] | None = None
        self._closed = False
        self._pending_notes: list[tuple[str, tuple[Any, ...], Deferred[bool]]] = []
        self._noting = False
        self.write_failure: WriteFailure | None = None
        """Set when a write fails for want of storage (a full disk), cleared by the next write
        that succeeds: the health report shows it."""
        self._shutdown: Any = reactor.addSystemEventTrigger("before", "shutdown",
                                                            self._close_at_shutdown)

    @classmethod
    def open(cls, path: str, clock: IReactorTime | None = None, reactor: Any = None,
             max_devices_per_user: int = MAX_DEVICES_PER_USER) -> TokenStore:
        """Open (creating and migrating as needed) the store at ``path``.

        Blocks until the file is checked, so the daemon exits on a bad ``--db`` before anything
        listens. ``clock`` stamps registrations; ``reactor`` receives the results and closes the
        store at shutdown. Raises :class:`TokenStoreError`.
        """
        if reactor is None:
            from twisted.internet import reactor
        pool = ThreadPool(1, 1, name="mxproxy-tokens")
        pool.threadFactory = _StoreThread
        pool.start()
        opened: Future[tuple[sqlite3.Connection, int]] = Future()

        def settle(ok: bool, result: Any) -> None:
            if ok:
                opened.set_result(result)
            else:
                opened.set_exception(result.value)

        pool.callInThreadWithCallback(settle, tokenfile.connect, path)
        try:
            connection, found = opened.result()
        except BaseException:
            pool.stop()
            raise
        store = cls(path, connection, pool, reactor, reactor if clock is None else clock,
                    max_devices_per_user)
        if found == 0:
            cls.log.info("token store {path} created (schema v{version})",
                         path=path, version=SCHEMA_VERSION)
        elif found < SCHEMA_VERSION:
            cls.log.info("token store {path}: schema v{found} migrated to v{version}",
                         path=path, found=found, version=SCHEMA_VERSION)
        return store

    def register(self, user: str, provider: str, bundle: str, sandbox: bool,
                 token: str) -> Deferred[str | None]:
        """Store the device for ``user``, or refresh its registration time; fires with the
        previous owner when the token moved from another user, else None. A user who had
        :attr:`max_devices_per_user` devices loses the least recently registered one."""
        token = canonical_token(provider, token)
        row = (provider, bundle, int(sandbox), token)
        now = self._clock.seconds()

        def registered(result: tuple[str | None, list[Row]]) -> str | None:
            previous, removed = result
            if previous is not None:
                self.log.info("token {token} ({provider}/{bundle}) moved from {previous} to {user}",
                              token=mask_token(token), provider=provider, bundle=bundle,
                              previous=previous, user=user)
            for device in _as_devices(removed):
                self.log.info("{device} of {user} removed: at most {cap} devices per user "
                              "(push.maxDevicesPerUser), the least recently registered goes",
                              device=device.label, user=user, cap=self.max_devices_per_user)
            return previous

        return self._write(tokenfile.register, row, user, now,
                           self.max_devices_per_user).addCallback(registered)

    def remove(self, provider: str, bundle: str, sandbox: bool, token: str,
               user: str | None = None) -> Deferred[bool]:
        """Forget the device (only if ``user`` owns it, when given); fires with whether it was
        there."""
        return self._write(tokenfile.write,
                           f"DELETE FROM devices WHERE {KEY} AND (? IS NULL OR user = ?)",
                           (provider, bundle, int(sandbox), canonical_token(provider, token),
                            user, user))

    def devices(self, user: str) -> Deferred[list[Device]]:
        """Every device of ``user``."""
        return self._run(_devices, user)

    def has_devices(self, user: str) -> Deferred[bool]:
        """Whether ``user`` has any device left (the last one gone, the monitor can stop)."""
        return self._run(tokenfile.has_devices, user)

    def users(self, sn: str) -> Deferred[list[str]]:
        """Every user id (:func:`user_key`) with a device on the MX ``sn``, to restart
        monitors."""
        return self._run(tokenfile.users, user_key(sn, ""))

    def count(self) -> Deferred[int]:
        """How many devices are registered: a cheap query that shows the store answers."""
        return self._run(tokenfile.count)

    def record_success(self, device: Device, when: float) -> Deferred[bool]:
        """Note a delivery; fires with False if the device is gone meanwhile."""
        return self._note(f"UPDATE devices SET last_success = ? WHERE {KEY}",
                          (when, *_key(device)))

    def record_error(self, device: Device, when: float, reason: str) -> Deferred[bool]:
        """Note a failed delivery; fires with False if the device is gone meanwhile."""
        return self._note(f"UPDATE devices SET last_error = ?, last_error_reason = ? WHERE {KEY}",
                          (when, reason, *_key(device)))

    def _note(self, sql: str, parameters: tuple[Any, ...]) -> Deferred[bool]:
        """Queue a note. One batch is on the store thread at a time and the notes made meanwhile
        form the next, so a burst of pushes costs a few thread round trips, not one per push."""
        if self._closing is not None:
            return fail(StoreClosed(f"token store {self.path} is closed"))
        noted: Deferred[bool] = Deferred()
        self._pending_notes.append((sql, parameters, noted))
        if not self._noting:
            self._write_notes()
        return noted

    def _write_notes(self) -> None:
        batch, self._pending_notes = self._pending_notes, []
        self._noting = True

        def written(result: list[bool] | Failure) -> None:
            self._noting = False
            if isinstance(result, Failure):
                for _, _, noted in batch:
                    noted.errback(result)
            else:
                for (_, _, noted), touched in zip(batch, result, strict=True):
                    noted.callback(touched)
            if self._pending_notes:
                self._write_notes()

        self._write(tokenfile.notes,
                    [(sql, parameters) for sql, parameters, _ in batch]).addBoth(written)

    def prune(self, device: Device,
              unless_registered_after: float | None = None) -> Deferred[bool]:
        """Delete a token the provider rejected, unless it was registered again after
        ``unless_registered_after`` (APNs 410 gives the time the token became invalid; pass the
        send time for other rejections, so a registration racing the push survives)."""
        pruned = self._write(
            tokenfile.write, f"DELETE FROM devices WHERE {KEY} AND (? IS NULL OR registered <= ?)",
            (*_key(device), unless_registered_after, unless_registered_after))

        def report(deleted: bool) -> bool:
            if deleted:
                self.log.info("token {token} ({provider}/{bundle}) of {user} pruned",
                              token=mask_token(device.token), provider=device.provider,
                              bundle=device.bundle, user=device.user)
            return deleted

        return pruned.addCallback(report)

    def close(self) -> Deferred[None]:
        """Finish the calls already made, close the file and stop the thread; later calls fail
        with :class:`StoreClosed`. Safe to call more than once."""
        waiter: Deferred[None] = Deferred()
        if self._closed:
            waiter.callback(None)
            return waiter
        if self._closing is None:
            if self._pending_notes:
                self._write_notes()  # ahead of the close on the store's queue
            self._closing = []
            closed: Deferred[None] = deferToThreadPool(self._reactor, self._pool, self._call,
                                                       sqlite3.Connection.close)
            closed.addBoth(self._stopped)
        self._closing.append(waiter)
        return waiter

    def _close_at_shutdown(self) -> Deferred[None]:
        """Let queued calls finish and the WAL be checkpointed even if the owner never closes."""
        self._shutdown = None  # fired: removing it now would only earn a warning
        return self.close()

    def _stopped(self, result: None | Failure) -> None:
        self._pool.stop()  # the thread is idle: the close was its last job
        self._closed = True
        if self._shutdown is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown)
        waiters, self._closing = self._closing or [], []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    def _run(self, query: Callable[..., T], *args: Any) -> Deferred[T]:
        if self._closing is not None:
            return fail(StoreClosed(f"token store {self.path} is closed"))
        return deferToThreadPool(self._reactor, self._pool, self._call, query, *args)

    def _write(self, query: Callable[..., T], *args: Any) -> Deferred[T]:
        """:meth:`_run` for a statement that writes: its outcome sets or clears
        :attr:`write_failure`, logged once each way rather than once per failed write."""

        def succeeded(result: T) -> T:
            if self.write_failure is not None:
                self.log.info("token store {path}: writing again", path=self.path)
                self.write_failure = None
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreUnavailable) and self.write_failure is None:
                self.log.error("{error}; device registrations answer 503 and /healthz reports "
                               "the store until a write succeeds", error=failure.value)
                self.write_failure = WriteFailure(self._clock.seconds(), str(failure.value))
            return failure

        return self._run(query, *args).addCallbacks(succeeded, failed)

    def _call(self, query: Callable[..., T], *args: Any) -> T:
        """On the store thread: one query, its SQLite errors turned into ours."""
        try:
            return query(self._connection, *args)
        except sqlite3.Error as error:
            raise statement_error(self.path, error) from error


class _StoreThread(threading.Thread):
    """Daemonic, so a store nobody closed cannot keep the process from exiting; SQLite makes
    that as safe as a crash (and the shutdown trigger normally closes the store first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


def _key(device: Device) -> tuple[str, str, int, str]:
    return (device.provider, device.bundle, int(device.sandbox), device.token)


def _devices(connection: sqlite3.Connection, user: str) -> list[Device]:
    """On the store thread, so that a burst of calls does not build its devices on the
    reactor's."""
    return _as_devices(tokenfile.devices(connection, user))


def _as_devices(rows: list[Row]) -> list[Device]:
    return [Device(provider, bundle, bool(sandbox), *rest)
            for provider, bundle, sandbox, *rest in rows]
