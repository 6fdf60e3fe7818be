"""``GET /mx/<mx>/events``: the caller's live events as Server-Sent Events (see
:mod:`mxproxy.events` for what they are, their ids and the resume with ``Last-Event-ID``).

The response is a push producer's: the hub's subscriber writes to it while the connection takes
what it is given, and holds what comes meanwhile, up to the hub's limit; past it the connection
is aborted (a client that reads nothing would never take a graceful end). Nothing times a
stream out: twisted.web suspends a connection's idle timeout while it answers a request, and
the metrics time a stream until it opened (``APIRequest.stream_opened``).

Credentials are checked as for any route when the stream opens, and again each time the auth
cache's entry for them lapses, at most every 30 minutes (another request of the user may have
renewed it meanwhile): a password changed on the MX ends the stream then. For that the stream
holds the password in memory, as long as it is open and no longer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from mxproxy.api.auth import Authenticator, Caller
from mxproxy.api.errors import HTTPError
from mxproxy.api.request import APIRequest
from mxproxy.api.routing import Endpoints, app
from mxproxy.csta.errors import LoginError, MXError
from mxproxy.events import OVERFLOW, QUEUE_LIMIT, Cut, Subscriber, Write
from mxproxy.logs import Logger
from mxproxy.sessions import AUTH_TTL

log = Logger(__name__)

OPENING = b": mxproxy events\n\n"
"""The first bytes of every stream: the headers leave with them, without waiting for an event."""
RECHECK_RETRY = 60.0
"""Seconds before the credentials are checked again when the MX could not say (unreachable,
no answer): only its refusal ends a stream."""
MAX_EVENT_ID = 64
"""A ``Last-Event-ID`` longer than this is no id of ours: not even read."""


class EventRoutes(Endpoints):
    """``/mx/<mx>/events``."""

    @app.route("/mx/<mx>/events", methods=["GET"])  # and HEAD: the headers, no stream
    async def events(self, request: Request, mx: str) -> bytes | EventStream:
        caller = self.auth.caller(request, mx)
        identity = await self.auth.identify(caller)
        hub = caller.access.events
        if hub is None:
            raise HTTPError(501, "live events are not available for this MX")
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx in front: pass each event on
        if request.method == b"HEAD":
            return b""
        cast(APIRequest, request).stream_opened = self.clock.seconds()
        return EventStream(hub.subscribe, identity.jid, last_event_id(request), self.auth,
                           caller, self.clock)


def last_event_id(request: Request) -> str | None:
    """The ``Last-Event-ID`` a reconnecting client sends; what is not ASCII cannot be ours."""
    value = request.getHeader(b"Last-Event-ID")
    if value is None:
        return None
    return value[:MAX_EVENT_ID + 1].decode("ascii", "replace")


Subscribe = Callable[[str, Write, Cut, str | None], Subscriber]


@implementer(IResource, IPushProducer)
class EventStream:
    """One stream: the resource the route answers with, which renders by subscribing to the
    caller's events (so that the route, and Klein's machinery around it, are done with once
    the stream is open: an idle stream costs only what it holds); then the producer of the
    response, paused and resumed by the connection, and the timer of the next credential
    check."""

    isLeaf = True
    __slots__ = ("_subscribe", "_jid", "_last_event_id", "_auth", "_caller", "_clock",
                 "_request", "_subscriber", "_paused", "_check", "_over")

    def __init__(self, subscribe: Subscribe, jid: str, last_event_id: str | None,
                 auth: Authenticator, caller: Caller, clock: IReactorTime) -> None:
        self._subscribe = subscribe
        self._jid = jid
        self._last_event_id = last_event_id
        self._auth = auth
        self._caller = caller
        self._clock = clock
        self._request: Request | None = None
        self._subscriber: Subscriber | None = None
        self._paused = False
        self._check: IDelayedCall | None = None
        self._over = False

    def render(self, request: Request) -> int:
        """Open the stream: what was missed since the ``Last-Event-ID``, then live events."""
        self._request = request
        request.notifyFinish().addBoth(self._gone)
        request.registerProducer(self, True)
        request.write(OPENING)
        self._subscriber = self._subscribe(self._jid, request.write, self._cut,
                                           self._last_event_id)
        if self._paused:
            self._subscriber.pause()
        self._schedule_check()
        return NOT_DONE_YET

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self  # a leaf: never asked

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError("a stream has no children")

    # -- IPushProducer ------------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._subscriber is not None:
            self._subscriber.pause()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._subscriber is not None:
            self._subscriber.resume()

    def stopProducing(self) -> None:
        """The connection is gone; :meth:`_gone` follows."""

    # -- the end ------------------------------------------------------------------------------

    def _cut(self, reason: str) -> None:
        """The hub gave the stream up: a client that does not read loses its connection, any
        other gets the end of the response (and reconnects as it sees fit)."""
        request = self._request
        if self._over or request is None:
            return
        request.unregisterProducer()
        if reason == OVERFLOW:
            log.info("events: a stream of {login} cut: its client left more than {limit} "
                     "bytes unread", login=self._caller.login, limit=QUEUE_LIMIT)
            cast(ITCPTransport, request.transport).abortConnection()
        else:
            request.finish()

    def _end(self) -> None:
        """End the response from this side (the credentials no longer hold)."""
        request = self._request
        if not self._over and request is not None:
            if self._subscriber is not None:
                self._subscriber.close()
            request.unregisterProducer()
            request.finish()

    def _gone(self, result: object) -> None:
        """The response is over, whoever ended it."""
        self._over = True
        if self._subscriber is not None:
            self._subscriber.close()
        if self._check is not None and self._check.active():
            self._check.cancel()
        self._check = None

    # -- credentials --------------------------------------------------------------------------

    def _schedule_check(self, delay: float | None = None) -> None:
        if delay is None:
            caller = self._caller
            expires = self._auth.cache.expires(caller.mx, caller.login, caller.password)
            delay = AUTH_TTL if expires is None else max(expires - self._clock.seconds(), 0.0)
        self._check = self._clock.callLater(delay, self._recheck)

    def _recheck(self) -> None:
        self._check = None
        Deferred.fromCoroutine(self._verify())

    async def _verify(self) -> None:
        retry = None
        try:
            await self._auth.reverify(self._caller)
        except LoginError as error:
            log.info("events: the MX no longer accepts the credentials of {login} ({error}); "
                     "stream ended", login=self._caller.login, error=error)
            self._end()
            return
        except MXError as error:
            log.info("events: cannot check the credentials of {login} again ({error}); next "
                     "try in {delay:g} s", login=self._caller.login, error=error,
                     delay=RECHECK_RETRY)
            retry = RECHECK_RETRY
        except Exception:
            log.failure("events: checking the credentials of {login} again",
                        login=self._caller.login)
            retry = RECHECK_RETRY
        if not self._over:
            self._schedule_check(retry)
