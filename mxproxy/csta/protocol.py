"""CSTAProtocol: one MX connection — framing, invoke ids, reply waiters, name subscriptions.

One reader dispatches every frame twice: to the waiter of its invoke id (requests), and to the
subscribers of its root name whatever its id (``ablist``, ``callloginfo``, call and address-book
events arrive as id 9999). Waiters and subscribers are registered before the request is written,
so a fast reply can never be lost. Nothing a subscriber or the MX does can stop the reader: bad
frames close the connection cleanly, bad events are logged and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from mxproxy.csta import xml
from mxproxy.csta.errors import (
    CSTAError,
    LoggedOut,
    MXTimeout,
    MXUnavailable,
    ProtocolViolation,
)
from mxproxy.csta.frame import KEEPALIVE_ID, MAX_REQUEST_ID, FrameDecoder, encode
from mxproxy.csta.messages import csta_error_text
from mxproxy.logs import Logger

DEFAULT_REPLY_TIMEOUT = 7.0
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_FRAME = encode(KEEPALIVE_ID, b"<keepalive />")

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


class CSTAProtocol(Protocol):
    """The client end of one MX link; above it, ``csta.client`` logs in and ``mx`` uses it."""

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
        self._expectations: dict[Deferred[Message], IDelayedCall] = {}
        self._closed: list[Deferred[Exception]] = []
        self.up = False
        """True from connection until loss."""
        self.close_reason: Exception | None = None
        """Why the link ended (``LoggedOut``, ``ProtocolViolation``...); None while it is up."""
        self.unreadable_frames = 0
        """Frames skipped because their XML did not parse: a collector of id-9999 results
        compares it before and after to know that it may have lost one."""

    # -- life cycle -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.up = True
        no_delay(self.transport)
        self._keepalive = self._clock.callLater(self._keepalive_interval, self._send_keepalive)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.up = False
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
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

    def logout(self) -> None:
        """End the session politely: ``<logout/>`` (no reply exists), then close."""
        if self.up:
            self.send(b"<logout/>")
        self.close(MXUnavailable("logged out by mxproxy"))

    # -- sending ----------------------------------------------------------------------------

    def request(self, body: Body, timeout: float | None = None) -> Deferred[Message]:
        """Send ``body`` with a new invoke id; fires with the same-id reply.

        Fails with ``CSTAError`` for ``CSTAErrorCode``, ``MXTimeout`` when no reply arrives in
        time, ``MXUnavailable`` when the link is or goes down. Cancelling forgets the waiter.
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

    def _expire(self, invoke_id: int, wait: float) -> None:
        entry = self._waiters.pop(invoke_id, None)
        if entry is not None:
            entry.reply.errback(MXTimeout(f"no reply to request {invoke_id:04d} within {wait:g} s"))

    # -- receiving --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        decoder = self._decoder
        for invoke_id, body in decoder.feed(data):
            self._dispatch(invoke_id, body)
        if decoder.error is not None and self.close_reason is None:
            self.log.error("MX link: {error}; closing the connection", error=decoder.error)
            self.close(ProtocolViolation(f"bad frame from the MX: {decoder.error}"))

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
            self.log.warn("MX link: skipping frame {id:04d}: {error}", id=invoke_id, error=error)
            self.unreadable_frames += 1
            if waiter is not None:
                waiter.reply.errback(ProtocolViolation(f"unparseable reply: {error}"))
            return
        message = Message(invoke_id, xml.local_name(element), element)
        if waiter is not None:
            if message.name == "CSTAErrorCode":
                waiter.reply.errback(CSTAError(csta_error_text(element)))
            else:
                waiter.reply.callback(message)
        subscribers = self._subscribers.get(message.name)
        if subscribers:
            for subscriber in tuple(subscribers):
                try:
                    subscriber(message)
                except xml.XMLError as error:
                    self.log.warn("MX link: skipping malformed {name} event: {error}",
                                  name=message.name, error=error)
                except Exception:
                    self.log.failure("MX link: subscriber for {name} failed", name=message.name)
        if message.name == "Logout":
            mode = element.get("mode", "")
            self.log.warn("MX link: the MX logged this session out (mode {mode!r})", mode=mode)
            self.close(LoggedOut(mode))


def _root_name(body: Body) -> str:
    """The name a request is observed under: its root element's (raw bytes are parsed)."""
    return xml.local_name(xml.parse(body) if isinstance(body, bytes) else body)
