"""Who is asking: HTTP Basic credentials, the client's address, failed-login throttling, and
the one check every route makes — the auth cache, else a login to the MX (which pools the
user's session for the commands that follow).

Credentials no MX user can have (control characters, a login with spaces at its ends, absurd
lengths) are refused with 401 before any MX connection.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from mxproxy.api.access import MXAccess
from mxproxy.api.clients import ClientAddresses
from mxproxy.api.errors import HTTPError, not_found
from mxproxy.csta.errors import LoginError
from mxproxy.logs import Logger, RateLimitedLog
from mxproxy.sessions import Attempt, AuthCache, Identity, LoginThrottle, UserSession

T = TypeVar("T")

MAX_LOGIN = 256
MAX_PASSWORD = 1024
"""Lengths no MX login or password comes near; longer ones are refused before any MX link."""
_UNUSABLE = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")
"""C0 and C1 control characters (NUL, TAB, CR, LF...), DEL, and the two non-characters XML
cannot carry: no user can type them, and lxml refuses most of them in a login request."""
_REQUIRED = "HTTP Basic credentials of an MX user are required"


@attrs.frozen
class Caller:
    """An authenticated request's MX and credentials (the password only travels, never stays)."""

    mx: str
    access: MXAccess
    login: str
    password: str = attrs.field(repr=False)
    address: str

    @property
    def attempt(self) -> Attempt:
        return Attempt(self.mx, self.login, self.address)


class Authenticator:
    """The credential checks of every configured MX, with one auth cache and one throttle.

    The throttle's address budgets (see :class:`LoginThrottle`) never refuse a password the
    auth cache has verified: people behind one address must not lose their working logins to
    another's failures. While they block, the cache stands in for the MX: a wrong password for
    a login it knows counts as a failed login, else the blocked address could still test
    passwords, against the cache and without limit (429 for a wrong one, 200 for the right
    one). The account's own block refuses cached passwords too, for the same reason.
    """

    log = Logger()

    def __init__(self, access: Mapping[str, MXAccess], clock: IReactorTime,
                 clients: ClientAddresses | None = None) -> None:
        self.access = dict(access)
        self.cache = AuthCache(clock)
        self.throttle = LoginThrottle(clock)
        self.clients = clients if clients is not None else ClientAddresses(clock)
        self._refusals = RateLimitedLog(self.log, clock, "refused unusable credentials")

    def caller(self, request: Request, mx: str) -> Caller:
        """The request's MX and credentials; 404 for an unknown MX, 401 without usable
        credentials, 429 while the login or the client address is throttled."""
        access = self.access.get(mx)
        if access is None:
            raise not_found(f"unknown MX {mx!r}")
        try:
            login, password = basic_credentials(request)
        except UnusableCredentials as error:
            self._refusals.emit("refused credentials no MX user can have: {reason}",
                                reason=error.message)
            raise
        caller = Caller(mx, access, login, password, self.clients.address(request))
        wait = self.throttle.account_wait(mx, login)
        if wait is None:
            wait = self._address_wait(caller)
        if wait is not None:
            raise HTTPError(429, "too many failed logins; try again later",
                            {"Retry-After": str(math.ceil(wait))})
        return caller

    def _address_wait(self, caller: Caller) -> float | None:
        wait = self.throttle.address_wait(caller.attempt)
        if (wait is None
                or self.cache.check(caller.mx, caller.login, caller.password) is not None):
            return None
        if self.cache.knows(caller.mx, caller.login):
            self.throttle.failed(caller.attempt)
        return wait

    def cached(self, request: Request, mx: str) -> MXAccess | None:
        """The MX when the request's credentials are in the auth cache and their account is
        not blocked; None whenever the full check must decide (it also produces the errors)."""
        access = self.access.get(mx)
        if access is None:
            return None
        try:
            login, password = basic_credentials(request)
        except HTTPError:
            return None
        if (self.cache.check(mx, login, password) is None
                or self.throttle.account_wait(mx, login) is not None):
            return None
        return access

    async def identify(self, caller: Caller) -> Identity:
        """Who the caller is: from the auth cache, else by a login (which pools the session)."""
        identity = self.cache.check(caller.mx, caller.login, caller.password)
        if identity is None:
            session = await self.guarded(
                caller, caller.access.pool.session(caller.login, caller.password))
            identity = session.identity
        return identity

    async def reverify(self, caller: Caller) -> Identity:
        """Who the caller still is, for a check the client did not ask for (an open event
        stream's, when the cache's entry lapsed): as :meth:`identify`, but a refusal spends no
        throttle budget and evicts no entry. These credentials were good; their refusal now
        means the password changed, not that someone guesses, and the streams of several
        devices failing together must not block the account under its new password."""
        identity = self.cache.check(caller.mx, caller.login, caller.password)
        if identity is None:
            session = await caller.access.pool.session(caller.login, caller.password)
            identity = session.identity
            self.cache.store(caller.mx, caller.login, caller.password, identity)
        return identity

    async def on_session(self, caller: Caller, work: Callable[[UserSession], Awaitable[T]],
                         retry: bool = True) -> T:
        """Run ``work`` on the caller's pooled session (see ``SessionPool.use``)."""
        return await self.guarded(
            caller, caller.access.pool.use(caller.login, caller.password, work, retry))

    async def guarded(self, caller: Caller, step: Awaitable[T]) -> T:
        """Await a step that may log in: record the outcome in the cache and the throttle."""
        try:
            result = await step
        except LoginError:
            self.cache.evict(caller.mx, caller.login)
            self.throttle.failed(caller.attempt)
            raise
        session = caller.access.pool.logged_in(caller.login, caller.password)
        if session is not None:
            self.cache.store(caller.mx, caller.login, caller.password, session.identity)
            self.throttle.succeeded(caller.attempt)
        return result


class UnusableCredentials(HTTPError):
    """Basic credentials no MX user can have: refused without asking the MX, and without
    spending any throttle budget (the answer does not depend on the password, so it tells a
    guesser nothing)."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, reason, _CHALLENGE)


_CHALLENGE = {"WWW-Authenticate": 'Basic realm="mxproxy"'}


def basic_credentials(request: Request) -> tuple[str, str]:
    """(login, password) of the ``Authorization: Basic`` header; 401 when there is none, or
    ``UnusableCredentials`` when they cannot be an MX user's."""
    header = request.getHeader(b"Authorization") or b""
    scheme, _, encoded = header.partition(b" ")
    try:
        if scheme.lower() != b"basic":
            raise ValueError
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise HTTPError(401, _REQUIRED, _CHALLENGE) from None
    try:
        text = decoded.decode("utf-8")  # strict: lone surrogates are refused here too
    except UnicodeDecodeError:
        raise UnusableCredentials("the credentials are not UTF-8") from None
    login, colon, password = text.partition(":")
    if not colon or not login:
        raise HTTPError(401, _REQUIRED, _CHALLENGE)
    problem = _unusable(login, password)
    if problem is not None:
        raise UnusableCredentials(problem)
    return login, password


def _unusable(login: str, password: str) -> str | None:
    """Why no MX user can have these credentials, or None. Spaces at either end of a login
    would make ``"bob "`` a login of its own (another session, another throttle budget); a
    password may have them, as any character a user can type."""
    if len(login) > MAX_LOGIN:
        return f"the login is longer than {MAX_LOGIN} characters"
    if len(password) > MAX_PASSWORD:
        return f"the password is longer than {MAX_PASSWORD} characters"
    if _UNUSABLE.search(login):
        return "the login contains a control character"
    if _UNUSABLE.search(password):
        return "the password contains a control character"
    if login != login.strip():
        return "the login starts or ends with white space"
    return None
