"""What both back ends share: their SQL runs on threads of the store's own, never on the
reactor's, and the Deferreds, logging, write-failure tracking, note coalescing and closing are
the same whatever runs the SQL.

A back end gives :class:`ThreadedStore` a :class:`Statements` (blocking functions, each taking
a connection) and says how a call gets a connection and how the connections are released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mxproxy.logs import Logger
from mxproxy.store import (
    MAX_DEVICES_PER_USER,
    Device,
    StoreClosed,
    StoreUnavailable,
    WriteFailure,
    canonical_token,
    mask_token,
)

T = TypeVar("T")

Key = tuple[str, str, bool, str]
"""A device's key: (provider, bundle, sandbox, token)."""
Row = tuple[Any, ...]
"""A device row, in the order of :class:`Device`'s fields."""
Note = tuple[Key, float, str | None]
"""Delivery bookkeeping for one device: when, and the error reason (None: a success)."""

THREAD_NAME = "mxproxy-tokens"


class Statements(Protocol):
    """A back end's SQL, blocking, each on a connection the store hands it."""

    def register(self, connection: Any, key: Key, user: str, now: float,
                 cap: int) -> tuple[str | None, list[Row]]:
        """Store or refresh the device for ``user``; the previous owner when it moved, and the
        rows of the devices removed to keep the user within ``cap``."""

    def remove(self, connection: Any, key: Key, user: str | None) -> bool: ...

    def prune(self, connection: Any, key: Key, unless_registered_after: float | None) -> bool: ...

    def notes(self, connection: Any, batch: list[Note]) -> list[bool]:
        """The batch in one transaction; whether each note touched its row."""

    def devices(self, connection: Any, user: str) -> list[Row]: ...

    def has_devices(self, connection: Any, user: str) -> bool: ...

    def count(self, connection: Any) -> int: ...

    def users(self, connection: Any, prefix: str) -> list[str]:
        """Every user id that starts with ``prefix`` (``"<sn>:"``: the users of one MX)."""


class ThreadedStore:
    """A :class:`mxproxy.store.TokenStore` whose back end runs ``statements`` on ``threads``."""

    log = Logger()

    def __init__(self, name: str, statements: Statements, threads: ThreadPool, reactor: Any,
                 clock: IReactorTime, max_devices_per_user: int = MAX_DEVICES_PER_USER) -> None:
        self.name = name
        self.max_devices_per_user = max_devices_per_user
        self._statements = statements
        self._threads = threads
        self._reactor = reactor
        self._clock = clock
        self._in_flight = 0
        self._closing: list[Deferred[None]] | None = None
        self._closed = False
        self._pending_notes: list[tuple[Note, Deferred[bool]]] = []
        self._noting = False
        self.write_failure: WriteFailure | None = None
        self._shutdown: Any = reactor.addSystemEventTrigger("before", "shutdown",
                                                            self._close_at_shutdown)

    def log_schema(self, found: int, version: int) -> None:
        """Say what opening did to the schema: created it, migrated it, or nothing."""
        if found == 0:
            self.log.info("token store {name} created (schema v{version})",
                          name=self.name, version=version)
        elif found < version:
            self.log.info("token store {name}: schema v{found} migrated to v{version}",
                          name=self.name, found=found, version=version)

    def _call(self, query: Callable[..., T], *args: Any) -> T:
        """On a store thread: ``query(connection, *args)``, the back end's errors turned into
        :class:`mxproxy.store.TokenStoreError`."""
        raise NotImplementedError

    def _release(self) -> None:
        """On a store thread, once every call is done: close the connections."""
        raise NotImplementedError

    def register(self, user: str, provider: str, bundle: str, sandbox: bool,
                 token: str) -> Deferred[str | None]:
        token = canonical_token(provider, token)
        now = self._clock.seconds()

        def registered(result: tuple[str | None, list[Row]]) -> str | None:
            previous, removed = result
            if previous is not None:
                self.log.info("token {token} ({provider}/{bundle}) moved from {previous} to {user}",
                              token=mask_token(token), provider=provider, bundle=bundle,
                              previous=previous, user=user)
            for device in as_devices(removed):
                self.log.info("{device} of {user} removed: at most {cap} devices per user "
                              "(push.maxDevicesPerUser), the least recently registered goes",
                              device=device.label, user=user, cap=self.max_devices_per_user)
            return previous

        return self._write(self._statements.register, (provider, bundle, sandbox, token), user,
                           now, self.max_devices_per_user).addCallback(registered)

    def remove(self, provider: str, bundle: str, sandbox: bool, token: str,
               user: str | None = None) -> Deferred[bool]:
        return self._write(self._statements.remove,
                           (provider, bundle, sandbox, canonical_token(provider, token)), user)

    def devices(self, user: str) -> Deferred[list[Device]]:
        return self._run(self._devices, user)

    def _devices(self, connection: Any, user: str) -> list[Device]:
        """On a store thread, so that a burst of calls does not build its devices on the
        reactor's."""
        return as_devices(self._statements.devices(connection, user))

    def has_devices(self, user: str) -> Deferred[bool]:
        return self._run(self._statements.has_devices, user)

    def users(self, sn: str) -> Deferred[list[str]]:
        return self._run(self._statements.users, f"{sn}:")

    def count(self) -> Deferred[int]:
        return self._run(self._statements.count)

    def record_success(self, device: Device, when: float) -> Deferred[bool]:
        return self._note((device.key, when, None))

    def record_error(self, device: Device, when: float, reason: str) -> Deferred[bool]:
        return self._note((device.key, when, reason))

    def _note(self, note: Note) -> Deferred[bool]:
        """Queue a note. One batch is on a store thread at a time and the notes made meanwhile
        form the next, so a burst of pushes costs a few round trips, not one per push."""
        if self._closing is not None:
            return fail(StoreClosed(f"token store {self.name} is closed"))
        noted: Deferred[bool] = Deferred()
        self._pending_notes.append((note, noted))
        if not self._noting:
            self._write_notes()
        return noted

    def _write_notes(self) -> None:
        batch, self._pending_notes = self._pending_notes, []
        self._noting = True

        def written(result: list[bool] | Failure) -> None:
            self._noting = False
            if isinstance(result, Failure):
                for _, noted in batch:
                    noted.errback(result)
            else:
                for (_, noted), touched in zip(batch, result, strict=True):
                    noted.callback(touched)
            if self._pending_notes:
                self._write_notes()

        self._write(self._statements.notes, [note for note, _ in batch]).addBoth(written)

    def prune(self, device: Device,
              unless_registered_after: float | None = None) -> Deferred[bool]:
        pruned = self._write(self._statements.prune, device.key, unless_registered_after)

        def report(deleted: bool) -> bool:
            if deleted:
                self.log.info("token {token} ({provider}/{bundle}) of {user} pruned",
                              token=mask_token(device.token), provider=device.provider,
                              bundle=device.bundle, user=device.user)
            return deleted

        return pruned.addCallback(report)

    def close(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._closed:
            waiter.callback(None)
            return waiter
        if self._closing is None:
            if self._pending_notes:
                self._write_notes()  # before the store refuses calls
            self._closing = []
            self._closing.append(waiter)
            if self._in_flight == 0:
                self._release_when_idle()
            return waiter
        self._closing.append(waiter)
        return waiter

    def _release_when_idle(self) -> None:
        """Once the last call made before :meth:`close` is done: release the connections."""
        deferToThreadPool(self._reactor, self._threads, self._release).addBoth(self._stopped)

    def _close_at_shutdown(self) -> Deferred[None]:
        """Let the calls made finish and the connections close even if the owner never
        closes."""
        self._shutdown = None  # fired: removing it now would only earn a warning
        return self.close()

    def _stopped(self, result: None | Failure) -> None:
        self._threads.stop()  # idle: the release was their last job
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
            return fail(StoreClosed(f"token store {self.name} is closed"))
        self._in_flight += 1

        def done(result: T | Failure) -> T | Failure:
            self._in_flight -= 1
            if self._in_flight == 0 and self._closing is not None:
                self._release_when_idle()
            return result

        return deferToThreadPool(self._reactor, self._threads, self._call, query,
                                 *args).addBoth(done)

    def _write(self, query: Callable[..., T], *args: Any) -> Deferred[T]:
        """:meth:`_run` for a statement that writes: its outcome sets or clears
        :attr:`write_failure`, logged once each way rather than once per failed write."""

        def succeeded(result: T) -> T:
            if self.write_failure is not None:
                self.log.info("token store {name}: writing again", name=self.name)
                self.write_failure = None
            return result

        def failed(failure: Failure) -> Failure:
            if failure.check(StoreUnavailable) and not failure.check(StoreClosed) and \
                    self.write_failure is None:  # closed: stopping, nothing to report
                self.log.error("{error}; device registrations answer 503 and /healthz reports "
                               "the store until a write succeeds", error=failure.value)
                self.write_failure = WriteFailure(self._clock.seconds(), str(failure.value))
            return failure

        return self._run(query, *args).addCallbacks(succeeded, failed)


def store_threads(minimum: int, maximum: int) -> ThreadPool:
    """A started pool of daemonic threads named for the store."""
    threads = ThreadPool(minimum, maximum, name=THREAD_NAME)
    threads.threadFactory = _StoreThread
    threads.start()
    return threads


class _StoreThread(threading.Thread):
    """Daemonic, so a store nobody closed cannot keep the process from exiting; the databases
    make that as safe as a crash (and the shutdown trigger normally closes the store first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, daemon=True, **kwargs)


def as_devices(rows: list[Row]) -> list[Device]:
    return [Device(provider, bundle, bool(sandbox), *rest)
            for provider, bundle, sandbox, *rest in rows]
