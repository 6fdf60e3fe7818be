"""Who is asking: HTTP Basic credentials, the client's address, failed-login throttling, and
the one check every route makes — the auth cache, else a login to the MX (which pools the
user's session for the commands that follow).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from mxproxy.api.access import MXAccess
from mxproxy.api.errors import HTTPError, not_found
from mxproxy.csta.errors import LoginError
from mxproxy.sessions import AuthCache, Identity, LoginThrottle, UserSession

T = TypeVar("T")


@attrs.frozen
class Caller:
    """An authenticated request's MX and credentials (the password only travels, never stays)."""

    mx: str
    access: MXAccess
    login: str
    password: str = attrs.field(repr=False)
    address: str


class Authenticator:
    """The credential checks of every configured MX, with one auth cache and one throttle."""

    def __init__(self, access: Mapping[str, MXAccess], clock: IReactorTime) -> None:
        self.access = dict(access)
        self.cache = AuthCache(clock)
        self.throttle = LoginThrottle(clock)

    def caller(self, request: Request, mx: str) -> Caller:
        """The request's MX and credentials; 404 for an unknown MX, 401 without credentials,
        429 while the login or the client address is throttled."""
        access = self.access.get(mx)
        if access is None:
            raise not_found(f"unknown MX {mx!r}")
        login, password = basic_credentials(request)
        address = client_address(request)
        wait = self.throttle.retry_after((mx, login), address)
        if wait is not None:
            raise HTTPError(429, "too many failed logins; try again later",
                            {"Retry-After": str(math.ceil(wait))})
        return Caller(mx, access, login, password, address)

    def cached(self, request: Request, mx: str) -> MXAccess | None:
        """The MX when the request's credentials are in the auth cache and nothing throttles
        them; None whenever the full check must decide (it also produces the errors)."""
        access = self.access.get(mx)
        if access is None:
            return None
        try:
            login, password = basic_credentials(request)
        except HTTPError:
            return None
        if (self.cache.check(mx, login, password) is None
                or self.throttle.retry_after((mx, login), client_address(request)) is not None):
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
            self.throttle.failed((caller.mx, caller.login), caller.address)
            raise
        session = caller.access.pool.logged_in(caller.login, caller.password)
        if session is not None:
            self.cache.store(caller.mx, caller.login, caller.password, session.identity)
            self.throttle.succeeded((caller.mx, caller.login))
        return result


def client_address(request: Request) -> str:
    return getattr(request.getClientAddress(), "host", "unknown")


def basic_credentials(request: Request) -> tuple[str, str]:
    """(login, password) of the ``Authorization: Basic`` header; 401 when there is none."""
    header = request.getHeader(b"Authorization") or b""
    scheme, _, encoded = header.partition(b" ")
    try:
        if scheme.lower() != b"basic":
            raise ValueError
        login, colon, password = base64.b64decode(encoded.strip(), validate=True).decode(
            "utf-8").partition(":")
        if not colon or not login:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HTTPError(401, "HTTP Basic credentials of an MX user are required",
                        {"WWW-Authenticate": 'Basic realm="mxproxy"'}) from None
    return login, password
