"""CSTAProtocol: one MX connection — framing, invoke ids, reply waiters, name subscriptions.

One reader dispatches every frame twice: to the waiter of its invoke id (requests), and to the
subscribers of its root name whatever its id (``ablist``, ``callloginfo``, call and address-book
events arrive as id 9999). Waiters and subscribers are registered before the request is written,
so a fast reply can never be lost. Nothing a subscriber or the MX does can stop the reader: bad
frames close the connection, bad events are logged (rate-limited) and skipped.

Nor can the MX hold the link in a state that looks up: a burst of unparseable frames, a frame
left incomplete, or no answer to the liveness probe after a silence abort the connection, so
that the owner (``MXServer``, the session pool) sees it down and reconnects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mxproxy.csta import commands, xml
from mxproxy.csta.errors import (
    CSTAError,
    LoggedOut,
    MXError,
    MXTimeout,
    MXUnavailable,
    ProtocolViolation,
)
from mxproxy.csta.frame import KEEPALIVE_ID, MAX_REQUEST_ID, FrameDecoder, encode
from mxproxy.csta.messages import csta_error
from mxproxy.logs import Logger, RateLimitedLog

DEFAULT_REPLY_TIMEOUT = 7.0
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_FRAME = encode(KEEPALIVE_ID, b"<keepalive />")
PARTIAL_FRAME_TIMEOUT = 30.0
"""Seconds a started frame may wait for its rest: a whole 65,535-byte frame at 2.2 KB/s, slower
than any link an MX is usable over, and four reply timeouts."""
BAD_FRAME_LIMIT = 20
BAD_FRAME_WINDOW = 60.0
"""A healthy MX sends no unparseable frame; one now and then is skipped as before, but this many
within the window is a broken or hostile peer, and the link is dropped (each costs a parse)."""
LOG_WINDOW = 60.0
"""At most one line per window for each kind of bad input a peer can repeat."""

Body = bytes | xml.Element
Trace = Callable[[str, int, bytes], None]
"""Receives (direction ``"->"`` or ``"<-"``, invoke id, raw XML) for every frame."""
RoundTrip = Callable[[str, float], None]
"""Receives (request name, seconds from sending it to its reply) for every answered request."""


def no_delay(transport: object) -> None:
    """Send small frames at once: with Nagle's algorithm a request written right after another
    waits for the peer's delayed ACK (~40 ms). TLS wrappers pass the call to the TCP socket."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class Message(NamedTuple):
    """A received frame whose body parsed as XML (a tuple: it is built once per frame)."""

    invoke_id: int
    name: str
    element: xml.Element


Subscriber = Callable[[Message], None]


class _Waiter(NamedTuple):
    """A request awaiting its reply."""

    reply: Deferred[Message]
    timer: IDelayedCall
    name: str
    """The request's root element name, when round trips are observed."""
    sent: float


@implementer(IHandshakeListener)
class CSTAProtocol(Protocol):
    """The client end of one MX link; above it, ``csta.client`` logs in and ``mx`` uses it.

    Liveness: after ``keepalive_interval`` without receiving anything, a ``GetServiceList``
    probe goes out; any same-id answer (a list or ``CSTAErrorCode``) proves the peer alive, none
    within the reply timeout ends the link. The MX does not answer the keep-alive frame itself.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        trace: Trace | None = None,
        on_round_trip: RoundTrip | None = None,
    ) -> None:
        self._clock = clock
        self.reply_timeout = reply_timeout
        self._keepalive_interval = keepalive_interval
        self._trace = trace
        self._on_round_trip = on_round_trip
        self._decoder = FrameDecoder()
        self._next_id = 1
        self._waiters: dict[int, _Waiter] = {}
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._keepalive: IDelayedCall | None = None
        self._liveness: IDelayedCall | None = None
        self._partial: IDelayedCall | None = None
        self._last_received = 0.0
        self._bad_frames: deque[float] = deque(maxlen=BAD_FRAME_LIMIT)
        """When the last unparseable frames arrived."""
        self._peer = "MX link"
        self._skipped_frames: RateLimitedLog  # from connectionMade on, naming the peer
        self._skipped_events: RateLimitedLog
        self._expectations: dict[Deferred[Message], IDelayedCall] = {}
        self._closed: list[Deferred[Exception]] = []
        self.up = False
        """True from connection until loss."""
        self.secured = False
        """True once a TLS handshake completed: a TLS link that fails before it may have met a
        plain-TCP port."""
        self.close_reason: Exception | None = None
        """Why the link ended (``LoggedOut``, ``ProtocolViolation``...); None while it is up."""
        self.unreadable_frames = 0
        """Frames skipped because their XML did not parse: a collector of id-9999 results
        compares it before and after to know that it may have lost one."""

    # -- life cycle -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.up = True
        no_delay(self.transport)
        peer = self.transport.getPeer() if self.transport is not None else None
        self._peer = f"MX link {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self._skipped_frames = RateLimitedLog(self.log, self._clock,
                                              f"{self._peer}: unparseable frames", LOG_WINDOW)
        self._skipped_events = RateLimitedLog(self.log, self._clock,
                                              f"{self._peer}: malformed events", LOG_WINDOW)
        self._last_received = self._clock.seconds()
        self._keepalive = self._clock.callLater(self._keepalive_interval, self._send_keepalive)
        self._liveness = self._clock.callLater(self._keepalive_interval, self._check_liveness)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.up = False
        for timer in (self._keepalive, self._liveness, self._partial):
            if timer is not None and timer.active():
                timer.cancel()
        self._keepalive = self._liveness = self._partial = None
        self._skipped_frames.stop()
        self._skipped_events.stop()
        if self.close_reason is None:
            self.close_reason = MXUnavailable(f"connection lost: {reason.getErrorMessage()}")
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.timer.cancel()
            waiter.reply.errback(Failure(self.close_reason))
        expectations, self._expectations = self._expectations, {}
        for expectation, timer in expectations.items():
            timer.cancel()
            expectation.errback(Failure(self.close_reason))
        self._subscribers.clear()
        closed, self._closed = self._closed, []
        for deferred in closed:
            deferred.callback(self.close_reason)

    def handshakeCompleted(self) -> None:
        self.secured = True

    def when_closed(self) -> Deferred[Exception]:
        """Fires (never fails) with the reason once the connection has ended."""
        deferred: Deferred[Exception] = Deferred()
        if not self.up and self.close_reason is not None:
            deferred.callback(self.close_reason)
        else:
            self._closed.append(deferred)
        return deferred

    def close(self, reason: Exception | None = None) -> None:
        """Close the connection; ``reason`` is what pending requests fail with."""
        if self.close_reason is None:
            self.close_reason = reason or MXUnavailable("connection closed by mxproxy")
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self, reason: MXError) -> None:
        """Drop the connection at once, even one closing politely: no flush and no TLS goodbye,
        which a peer that stopped reading would hold up for ever (and the descriptor with it).
        ``reason`` is what pending requests fail with, unless one was given before; the caller
        says why in the log."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.up and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _drop(self, reason: MXError) -> None:
        """Abort for what the peer did (or did not do), logged once."""
        if self.close_reason is None:
            self.log.warn("{peer}: {reason}; dropping the connection", peer=self._peer,
                          reason=reason)
            self.abort(reason)

    def logout(self) -> None:
        """End the session politely: ``<logout/>`` (no reply exists), then close."""
        if self.up:
            self.send(b"<logout/>")
        self.close(MXUnavailable("logged out by mxproxy"))

    # -- sending ----------------------------------------------------------------------------

    def request(self, body: Body, timeout: float | None = None) -> Deferred[Message]:
        """Send ``body`` with a new invoke id; fires with the same-id reply.

        Fails with ``CSTAError`` for ``CSTAErrorCode`` (``UnknownCall`` or ``CallStateError``
        where its values say so), ``MXTimeout`` when no reply arrives in time,
        ``MXUnavailable`` when the link is or goes down. Cancelling forgets the waiter.
        Raises ``FrameTooLarge`` before anything is written when the body cannot be framed.
        """
        if not self.up:
            raise MXUnavailable("not connected")
        invoke_id = self._allocate_id()
        frame = encode(invoke_id, body if isinstance(body, bytes) else xml.serialize(body))

        def forget(_: Deferred[Message]) -> None:
            entry = self._waiters.pop(invoke_id, None)
            if entry is not None:
                entry.timer.cancel()

        deferred: Deferred[Message] = Deferred(forget)
        wait = self.reply_timeout if timeout is None else timeout
        timer = self._clock.callLater(wait, self._expire, invoke_id, wait)
        name = "" if self._on_round_trip is None else _root_name(body)
        self._waiters[invoke_id] = _Waiter(deferred, timer, name, self._clock.seconds())
        self._write(invoke_id, frame)
        return deferred

    def send(self, body: Body) -> int:
        """Fire-and-forget with a new invoke id (``iq set mode``, ``logout``); returns the id."""
        if not self.up:
            raise MXUnavailable("not connected")
        invoke_id = self._allocate_id()
        self._write(invoke_id, encode(invoke_id, body if isinstance(body, bytes)
                                      else xml.serialize(body)))
        return invoke_id

    def subscribe(self, name: str, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` for every message named ``name``; returns the unsubscribe call."""
        self._subscribers.setdefault(name, []).append(subscriber)

        def unsubscribe() -> None:
            subscribers = self._subscribers.get(name)
            if subscribers is not None and subscriber in subscribers:
                subscribers.remove(subscriber)
                if not subscribers:
                    del self._subscribers[name]

        return unsubscribe

    def expect(self, name: str, timeout: float | None = None,
               match: Callable[[Message], bool] | None = None) -> Deferred[Message]:
        """The next message named ``name`` (and satisfying ``match``), whatever its invoke id.

        Call it before writing the request that causes the message. Fails with ``MXTimeout``
        after ``timeout`` (default: the reply timeout) and with the close reason if the link
        ends first; cancelling forgets it.
        """
        if not self.up:
            raise MXUnavailable("not connected")

        def forget(_: Deferred[Message]) -> None:
            unsubscribe()
            if self._expectations.pop(deferred, None) is not None and timer.active():
                timer.cancel()

        def receive(message: Message) -> None:
            if match is None or match(message):
                forget(deferred)
                deferred.callback(message)

        def expire() -> None:
            forget(deferred)
            deferred.errback(MXTimeout(f"no {name} within {wait:g} s"))

        deferred: Deferred[Message] = Deferred(forget)
        wait = self.reply_timeout if timeout is None else timeout
        unsubscribe = self.subscribe(name, receive)
        timer = self._clock.callLater(wait, expire)
        self._expectations[deferred] = timer
        return deferred

    def _allocate_id(self) -> int:
        """1..9998, wrapping, skipping ids still awaiting a reply (never 0000 or 9999)."""
        for _ in range(MAX_REQUEST_ID):
            invoke_id = self._next_id
            self._next_id = invoke_id % MAX_REQUEST_ID + 1
            if invoke_id not in self._waiters:
                return invoke_id
        raise MXUnavailable(f"all {MAX_REQUEST_ID} invoke ids are awaiting replies")

    def _write(self, invoke_id: int, frame: bytes) -> None:
        if self._trace is not None:
            self._trace("->", invoke_id, frame[8:])
        assert self.transport is not None
        self.transport.write(frame)
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.reset(self._keepalive_interval)

    def _send_keepalive(self) -> None:
        self._keepalive = self._clock.callLater(self._keepalive_interval, self._send_keepalive)
        self._write(KEEPALIVE_ID, KEEPALIVE_FRAME)

    def _check_liveness(self) -> None:
        """Probe after a whole interval without receiving anything; else look again when one
        would have passed (reads only note their time: no timer is reset per read)."""
        self._liveness = None
        if self.close_reason is not None:
            return
        silent = self._clock.seconds() - self._last_received
        if silent < self._keepalive_interval:
            self._watch_liveness(self._keepalive_interval - silent)
            return
        self.request(commands.get_service_list()).addCallbacks(self._alive, self._probe_failed)

    def _watch_liveness(self, delay: float) -> None:
        if self.up and self.close_reason is None:
            self._liveness = self._clock.callLater(delay, self._check_liveness)

    def _alive(self, _: object = None) -> None:
        self._watch_liveness(self._keepalive_interval)

    def _probe_failed(self, failure: Failure) -> None:
        if failure.check(MXTimeout):
            self._drop(MXUnavailable(f"no answer to the liveness probe within "
                                     f"{self.reply_timeout:g} s"))
        elif failure.check(CSTAError, ProtocolViolation):
            self._alive()  # an answer all the same

    def _expire(self, invoke_id: int, wait: float) -> None:
        entry = self._waiters.pop(invoke_id, None)
        if entry is not None:
            entry.reply.errback(MXTimeout(f"no reply to request {invoke_id:04d} within {wait:g} s"))

    # -- receiving --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.close_reason is not None:
            return  # closing: what else arrives is not read (a flood would go on costing)
        self._last_received = self._clock.seconds()
        decoder = self._decoder
        progress = False
        for invoke_id, body in decoder.frames(data):
            self._dispatch(invoke_id, body)
            if self.close_reason is not None:
                return
            progress = True
        if decoder.error is not None:
            self._drop(ProtocolViolation(f"bad frame from the MX: {decoder.error}"))
        elif not decoder.buffered:
            if self._partial is not None and self._partial.active():
                self._partial.cancel()
            self._partial = None
        elif self._partial is None:
            self._partial = self._clock.callLater(PARTIAL_FRAME_TIMEOUT, self._partial_expired)
        elif progress:  # the frame now waiting is another one
            self._partial.reset(PARTIAL_FRAME_TIMEOUT)

    def _partial_expired(self) -> None:
        self._partial = None
        decoder = self._decoder
        self._drop(ProtocolViolation(
            f"a frame still incomplete after {PARTIAL_FRAME_TIMEOUT:g} s ({decoder.buffered} of "
            f"{decoder.awaited} bytes)"))

    def _dispatch(self, invoke_id: int, body: bytes) -> None:
        if self._trace is not None:
            self._trace("<-", invoke_id, body)
        waiter = self._waiters.pop(invoke_id, None)
        if waiter is not None:
            waiter.timer.cancel()
            if self._on_round_trip is not None:
                self._on_round_trip(waiter.name, self._clock.seconds() - waiter.sent)
        try:
            element = xml.parse(body)
        except xml.XMLError as error:
            self._skipped_frames.emit("{peer}: skipping frame {id:04d}: {error}",
                                      peer=self._peer, id=invoke_id, error=error)
            self.unreadable_frames += 1
            if waiter is not None:
                waiter.reply.errback(ProtocolViolation(f"unparseable reply: {error}"))
            now, bad = self._clock.seconds(), self._bad_frames
            bad.append(now)
            if len(bad) == BAD_FRAME_LIMIT and now - bad[0] <= BAD_FRAME_WINDOW:
                self._drop(ProtocolViolation(f"{BAD_FRAME_LIMIT} unparseable frames within "
                                             f"{BAD_FRAME_WINDOW:g} s"))
            return
        message = Message(invoke_id, xml.local_name(element), element)
        if waiter is not None:
            if message.name == "CSTAErrorCode":
                waiter.reply.errback(csta_error(element))
            else:
                waiter.reply.callback(message)
        subscribers = self._subscribers.get(message.name)
        if subscribers:
            for subscriber in tuple(subscribers):
                try:
                    subscriber(message)
                except xml.XMLError as error:
                    self._skipped_events.emit("{peer}: skipping malformed {name} event: {error}",
                                              peer=self._peer, name=message.name, error=error)
                except Exception:
                    self.log.failure("{peer}: subscriber for {name} failed", peer=self._peer,
                                     name=message.name)
        if message.name == "Logout":
            mode = element.get("mode", "")
            self.log.warn("{peer}: the MX logged this session out (mode {mode!r})",
                          peer=self._peer, mode=mode)
            self.close(LoggedOut(mode))


def _root_name(body: Body) -> str:
    """The name a request is observed under: its root element's (raw bytes are parsed)."""
    return xml.local_name(xml.parse(body) if isinstance(body, bytes) else body)
