"""``GET /mx/<mx>/events``: the user's live events as Server-Sent Events.

A stream is a push producer on its response: while Twisted pauses it (the client does not read
and the socket buffer is full), frames wait in a queue of its own, and once :data:`MAX_WAITING`
bytes wait the stream is cut: memory never grows with a slow client, and the others go on. A
comment line every :data:`KEEPALIVE` seconds keeps proxies and NATs from closing an idle
stream. The credentials are proven when the stream starts and again every
:data:`RECHECK` seconds (the auth cache's life): a password changed on the MX ends the stream.
While a user has a stream their calls are monitored (:data:`mxproxy.monitors.STREAM`).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from mxproxy.api.auth import Caller
from mxproxy.api.errors import HTTPError
from mxproxy.api.routing import Endpoints, app
from mxproxy.csta.errors import LoginError, MXError
from mxproxy.events import EventHub
from mxproxy.logs import Logger
from mxproxy.monitors import STREAM

MAX_WAITING = 1 << 20
KEEPALIVE = 15.0
RECHECK = 30 * 60.0
MAX_STREAMS_PER_USER = 8
"""Streams one user may hold open (a phone, a tablet, a desktop, a few tabs); one more is
refused with 429 rather than letting one login hold unbounded memory."""

log = Logger(__name__)


@implementer(IPushProducer)
class EventStream:
    """One open stream: frames to the response, a queue while paused, a keep-alive timer."""

    def __init__(self, request: Request, clock: IReactorTime,
                 max_waiting: int = MAX_WAITING, keepalive: float = KEEPALIVE) -> None:
        self._request = request
        self._clock = clock
        self._max_waiting = max_waiting
        self._keepalive = keepalive
        self._waiting: deque[bytes] = deque()
        self._waiting_bytes = 0
        self._paused = False
        self._timer: IDelayedCall | None = None
        self.done: Deferred[None] = Deferred()

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addBoth(lambda _: self._end())
        self._timer = self._clock.callLater(self._keepalive, self._ping)

    def send(self, frame: bytes) -> None:
        if self.done.called:
            return
        if not self._paused:
            self._request.write(frame)
            return
        self._waiting.append(frame)
        self._waiting_bytes += len(frame)
        if self._waiting_bytes > self._max_waiting:
            log.info("event stream of {path}: the client reads nothing, {count} bytes wait; "
                     "closing it", path=self._request.path.decode("utf-8", "replace"),
                     count=self._waiting_bytes)
            self.close()

    def close(self) -> None:
        """End the stream from this side (a slow client, changed credentials, shutdown)."""
        if not self.done.called:
            transport = self._request.transport
            if transport is not None:
                transport.loseConnection()
            self._end()

    def _ping(self) -> None:
        self.send(b": keep-alive\n\n")
        self._timer = self._clock.callLater(self._keepalive, self._ping)

    def _end(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._waiting.clear()
        if self._request.producer is not None and self._request.channel is not None:
            self._request.unregisterProducer()  # before the request finishes, as it must
        if not self.done.called:
            self.done.callback(None)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while self._waiting and not self._paused and not self.done.called:
            frame = self._waiting.popleft()
            self._waiting_bytes -= len(frame)
            self._request.write(frame)

    def stopProducing(self) -> None:
        self._end()


class EventRoutes(Endpoints):
    """``/mx/<mx>/events``."""

    @app.route("/mx/<mx>/events", methods=["GET"])
    async def events(self, request: Request, mx: str) -> None:
        caller = self.auth.caller(request, mx)
        identity = await self.auth.identify(caller)
        access = caller.access
        hub: EventHub = access.events
        if hub.streams(identity.jid) >= MAX_STREAMS_PER_USER:
            raise HTTPError(429, f"this user has {MAX_STREAMS_PER_USER} event streams open "
                                 "already", {"Retry-After": "60"})
        await access.calls.monitors.want(identity.jid, STREAM)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: pass each frame on at once
        request.write(b": mxproxy events\n\n")  # the headers go out now, not with the first event
        stream = EventStream(request, self.clock)
        last = request.getHeader(b"Last-Event-ID")
        unsubscribe = hub.subscribe(identity.jid, stream,
                                    None if last is None else last.decode("ascii", "replace"))
        stream.start()
        recheck = self.clock.callLater(RECHECK, self._recheck, caller, stream)
        stream.done.addCallback(lambda _: recheck.cancel() if recheck.active() else None)
        try:
            await stream.done
        finally:
            unsubscribe()
            if hub.streams(identity.jid) == 0:
                await access.calls.monitors.release(identity.jid, STREAM)

    def _recheck(self, caller: Caller, stream: EventStream) -> None:
        """Prove the credentials again (the auth cache has expired by now: the MX decides),
        and again :data:`RECHECK` later while the stream lasts."""

        async def check() -> None:
            try:
                await self.auth.identify(caller)
            except LoginError:
                log.info("event stream of {login}: the MX refuses the password now; closing",
                         login=caller.login)
                stream.close()
                return
            except MXError:
                pass  # the MX is unreachable: the stream goes on, the link events say so
            if not stream.done.called:
                again = self.clock.callLater(RECHECK, self._recheck, caller, stream)
                stream.done.addCallback(lambda _: again.cancel() if again.active() else None)

        Deferred.fromCoroutine(check())
