"""User sessions on an MX: pooled links, the auth cache, and failed-login throttling.

The original opened a TLS connection and logged in for every request. Here a user's link is kept
for later requests and logged out after a quiet minute; a request that only needs to know who
the user is (the address book) is answered from a 30-minute cache of successful logins, which
holds a keyed hash of the password, never the password. Repeated failures are throttled per
login, per login and client address, and per client address, so the proxy can neither be used
to guess passwords nor to get accounts locked on the MX, and one client's failures do not lock
out the logins of others.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mxproxy.csta import commands
from mxproxy.csta.client import CSTAFactory, MXAddress, open_session
from mxproxy.csta.errors import MXUnavailable
from mxproxy.csta.messages import LoginResponse, MonitorStarted
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.logs import Logger

T = TypeVar("T")

AUTH_TTL = 30 * 60.0
IDLE_TIMEOUT = 60.0
FAILURE_LIMIT = 5
ADDRESS_FAILURE_LIMIT = 10 * FAILURE_LIMIT
FAILURE_WINDOW = 60.0
BLOCK_FIRST = 60.0
BLOCK_MAX = 3600.0

_KEY = os.urandom(32)  # per process: hashes in memory are useless anywhere else


def password_hash(login: str, password: str) -> bytes:
    """A keyed hash standing in for the password in caches and pool keys. Keyed BLAKE2b is a
    MAC in its own right, and a third of the cost of an HMAC on every cached request."""
    return hashlib.blake2b(f"{login}\0{password}".encode(), key=_KEY, digest_size=32).digest()


# -- auth cache --------------------------------------------------------------------------------


@attrs.frozen
class Identity:
    """Who a login is on an MX."""

    login: str
    jid: str
    ext: str


@attrs.frozen
class _Cached:
    identity: Identity
    digest: bytes = attrs.field(repr=False)
    expires: float


class AuthCache:
    """Successful logins per (MX, login) for :data:`AUTH_TTL`; another password is a miss."""

    def __init__(self, clock: IReactorTime, ttl: float = AUTH_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._entries: dict[tuple[str, str], _Cached] = {}

    def check(self, mx: str, login: str, password: str) -> Identity | None:
        entry = self._matching(mx, login, password)
        return entry.identity if entry is not None else None

    def expires(self, mx: str, login: str, password: str) -> float | None:
        """When the entry of these credentials lapses (clock seconds): the next check that
        asks the MX. None when they are not the ones cached."""
        entry = self._matching(mx, login, password)
        return entry.expires if entry is not None else None

    def _matching(self, mx: str, login: str, password: str) -> _Cached | None:
        entry = self._live(mx, login)
        if entry is None or not hmac.compare_digest(entry.digest,
                                                    password_hash(login, password)):
            return None
        return entry

    def knows(self, mx: str, login: str) -> bool:
        """Whether a password of this login is cached, so the cache can tell it from others."""
        return self._live(mx, login) is not None

    def _live(self, mx: str, login: str) -> _Cached | None:
        entry = self._entries.get((mx, login))
        if entry is not None and entry.expires <= self._clock.seconds():
            del self._entries[(mx, login)]
            return None
        return entry

    def store(self, mx: str, login: str, password: str, identity: Identity) -> None:
        self._entries[(mx, login)] = _Cached(identity, password_hash(login, password),
                                             self._clock.seconds() + self._ttl)

    def evict(self, mx: str, login: str) -> None:
        self._entries.pop((mx, login), None)


# -- throttling --------------------------------------------------------------------------------


@attrs.frozen
class Attempt:
    """A login as the throttle sees it: which account (a login on an MX), from which address."""

    mx: str
    login: str
    address: str


@attrs.define
class _Failures:
    times: deque[float] = attrs.Factory(deque)
    blocked_until: float = 0.0
    blocks: int = 0


class LoginThrottle:
    """Failed logins spend three budgets; one that runs out within :data:`FAILURE_WINDOW` is
    refused for 60 s, doubling with every further block up to an hour:

    * the account, :data:`FAILURE_LIMIT`: guessing one password from anywhere, and the MX's
      own lockout of the account. Its block refuses even a correct password.
    * the account from one address, :data:`FAILURE_LIMIT`: one client guessing, which a
      success elsewhere (the real user clearing the account's budget) does not reset.
    * the address, :data:`ADDRESS_FAILURE_LIMIT`: password spraying, a few guesses at each
      of many logins. Without it one address could spend every account's budget and lock the
      whole MX out; at ten times the account's limit, people sharing an address (a NAT, a
      reverse proxy not declared with ``--trusted-proxy``) who mistype do not block each other.

    A success clears the account's budgets, not the address's: a client that knows one
    password could otherwise reset its address between guesses at others.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._records: dict[object, _Failures] = {}

    def account_wait(self, mx: str, login: str) -> float | None:
        """Seconds until the account may try again; None if it is not blocked."""
        return self._wait(("account", mx, login))

    def address_wait(self, attempt: Attempt) -> float | None:
        """Seconds until the address's budgets, its own or for this account, allow a try."""
        return self._wait(_from_address(attempt), ("address", attempt.address))

    def failed(self, attempt: Attempt) -> None:
        now = self._clock.seconds()
        self._forget_stale(now)
        self._spend(now, FAILURE_LIMIT, ("account", attempt.mx, attempt.login),
                    _from_address(attempt))
        self._spend(now, ADDRESS_FAILURE_LIMIT, ("address", attempt.address))

    def succeeded(self, attempt: Attempt) -> None:
        self._records.pop(("account", attempt.mx, attempt.login), None)
        self._records.pop(_from_address(attempt), None)

    def _wait(self, *keys: object) -> float | None:
        """Seconds until the most blocked of ``keys`` may try again; None if none is."""
        now = self._clock.seconds()
        waits = [record.blocked_until - now for key in keys
                 if (record := self._records.get(key)) and record.blocked_until > now]
        return max(waits) if waits else None

    def _spend(self, now: float, limit: int, *keys: object) -> None:
        for key in keys:
            record = self._records.setdefault(key, _Failures())
            record.times.append(now)
            while record.times and record.times[0] <= now - FAILURE_WINDOW:
                record.times.popleft()
            if len(record.times) >= limit:
                record.times.clear()
                record.blocked_until = now + min(BLOCK_FIRST * 2 ** record.blocks, BLOCK_MAX)
                record.blocks += 1

    def _forget_stale(self, now: float) -> None:
        """Keys with no recent failure and no block in force (bounded memory under attack)."""
        stale = [key for key, record in self._records.items()
                 if record.blocked_until + BLOCK_MAX <= now
                 and (not record.times or record.times[-1] <= now - FAILURE_WINDOW)]
        for key in stale:
            del self._records[key]


def _from_address(attempt: Attempt) -> object:
    return ("account from", attempt.address, attempt.mx, attempt.login)


# -- pooled sessions ---------------------------------------------------------------------------


class UserSession:
    """One logged-in user link, shared by that user's requests one command at a time."""

    def __init__(self, protocol: CSTAProtocol, info: LoginResponse, login: str) -> None:
        self.protocol = protocol
        self.info = info
        """The MX's login reply: ``GET user`` answers from it (the SIP password included, which
        is why it lives only as long as the session)."""
        self.identity = Identity(login, info.user_id, info.ext)
        self.lock = DeferredLock()
        self.idle_timer: IDelayedCall | None = None
        self.pooled = True
        """False once the pool has let it go: closed, idle, or not to be trusted again."""
        self._monitoring = False

    @property
    def up(self) -> bool:
        """Connected and not closing: a link being logged out (a call log that did not end
        cleanly) is never handed to another request, even before its socket has closed."""
        return self.protocol.up and self.protocol.close_reason is None

    async def ensure_monitor(self) -> None:
        """Monitor the user's own extension on this session, once: the MX refuses ``Mail*``
        commands without it, and call control (``mxproxy.callcontrol``) needs it too, since
        the events that confirm its commands reach monitors only (mx-protocol.md §1.7)."""
        if not self._monitoring:
            reply = await self.protocol.request(commands.monitor_start(self.identity.ext))
            MonitorStarted.from_xml(reply.element)
            self._monitoring = True


class SessionPool(Service):
    """The user sessions of one MX, keyed by (login, password hash); stopping the service logs
    them all out."""

    log = Logger()

    def __init__(self, reactor: Any, address: MXAddress, factory: CSTAFactory,
                 clear_text_retry: bool = False, idle_timeout: float = IDLE_TIMEOUT,
                 clock: IReactorTime | None = None) -> None:
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._address = address
        self._factory = factory
        self._clear_text_retry = clear_text_retry
        self.idle_timeout = idle_timeout
        self._sessions: dict[tuple[str, bytes], UserSession] = {}
        self._opening: dict[tuple[str, bytes], list[Deferred[UserSession]]] = {}
        self.logins = 0
        """Logins made, for tests and benchmarks that show the reuse."""

    def __len__(self) -> int:
        return len(self._sessions)

    async def session(self, login: str, password: str) -> UserSession:
        """A live session for these credentials: the pooled one, or a fresh login.

        Concurrent first requests of one user share one login. ``LoginError`` when the MX
        refuses the credentials.
        """
        key = (login, password_hash(login, password))
        session = self._sessions.get(key)
        if session is not None and session.up:
            return session
        if session is not None:
            self._discard(key, session)
        waiters = self._opening.get(key)
        if waiters is None:
            waiters = self._opening[key] = []
            Deferred.fromCoroutine(self._open(key, login, password)).addBoth(self._opened, key)
        waiter: Deferred[UserSession] = Deferred()
        waiters.append(waiter)
        return await waiter

    def logged_in(self, login: str, password: str) -> UserSession | None:
        """The live pooled session for these credentials, if any."""
        session = self._sessions.get((login, password_hash(login, password)))
        return session if session is not None and session.up else None

    async def acquire(self, login: str, password: str) -> UserSession:
        """The session, held for this caller alone until :meth:`release`."""
        session = await self.session(login, password)
        await session.lock.acquire()
        if not session.up:  # it died while we waited for our turn
            session.lock.release()
            session = await self.session(login, password)
            await session.lock.acquire()
        return session

    def release(self, session: UserSession) -> None:
        session.lock.release()
        if session.up and session.pooled:
            self._touch(session)

    async def use(self, login: str, password: str,
                  work: Callable[[UserSession], Awaitable[T]], retry: bool = True) -> T:
        """Run ``work`` holding the session alone.

        ``retry`` only for commands that are safe to repeat: when the link died under them,
        the work runs once more on a fresh login.
        """
        for attempt in (1, 2):
            session = await self.acquire(login, password)
            try:
                return await work(session)
            except MXUnavailable:
                if attempt == 2 or not retry or session.up:
                    raise
                self.log.info("user session of {login} dropped; logging in again", login=login)
            except CancelledError:
                # The caller went away mid-command. What the MX still owes it may not say whose
                # it is (call-log blocks carry no id) and would answer the next request.
                self._retire(session)
                raise
            finally:
                self.release(session)
        raise AssertionError("unreachable")

    def close_all(self) -> None:
        for key, session in list(self._sessions.items()):
            self._discard(key, session)

    def stopService(self) -> None:
        super().stopService()
        self.close_all()

    async def _open(self, key: tuple[str, bytes], login: str, password: str) -> UserSession:
        protocol, info = await open_session(self._reactor, self._address, self._factory, login,
                                            password, clear_text_retry=self._clear_text_retry)
        self.logins += 1
        session = UserSession(protocol, info, login)
        self._sessions[key] = session
        protocol.when_closed().addCallback(lambda _: self._forget(key, session))
        self._touch(session)
        return session

    def _opened(self, result: UserSession | Failure, key: tuple[str, bytes]) -> None:
        for waiter in self._opening.pop(key):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _touch(self, session: UserSession) -> None:
        """(Re)start the idle timer; a session with work in progress is never closed."""
        if session.idle_timer is not None and session.idle_timer.active():
            session.idle_timer.reset(self.idle_timeout)
        else:
            session.idle_timer = self._clock.callLater(self.idle_timeout, self._idle, session)

    def _idle(self, session: UserSession) -> None:
        if session.lock.locked:
            self._touch(session)
        else:
            self._retire(session)

    def _retire(self, session: UserSession) -> None:
        """Log the session out and forget it."""
        for key, pooled in list(self._sessions.items()):
            if pooled is session:
                self._discard(key, session)

    def _discard(self, key: tuple[str, bytes], session: UserSession) -> None:
        self._forget(key, session)
        if session.up:
            session.protocol.logout()

    def _forget(self, key: tuple[str, bytes], session: UserSession) -> None:
        session.pooled = False
        if self._sessions.get(key) is session:
            del self._sessions[key]
        if session.idle_timer is not None and session.idle_timer.active():
            session.idle_timer.cancel()
