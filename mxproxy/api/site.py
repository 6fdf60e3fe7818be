"""How the API's HTTP connections are served: twisted.web's Site and channel with a deadline on
each request, a cap on the open connections of one client address, and JSON answers where the
channel itself answers.

twisted.web resets its idle timer on every byte received, so a client trickling a request one
byte a minute holds a connection for ever; it answers a malformed request with a bare ``400``
and drops a connection whose request line is too long without a word. Here a connection waits
at most :data:`IDLE_TIMEOUT` for a request to begin and as long again for it to arrive whole,
and every answer of the channel is JSON with the headers of the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from mxproxy.api.request import APIRequest, bare_answer
from mxproxy.logs import Logger, RateLimitedLog

log = Logger(__name__)

IDLE_TIMEOUT = 60.0
"""Seconds a connection may wait for its next request, and a request may take to arrive whole
once its first byte came (64 KiB at the body limit is then still ~1 KiB/s)."""
REFUSAL_GRACE = 5.0
"""Seconds a refused connection has to take its 503 before it is cut (a TLS client that never
finishes its handshake would otherwise keep it)."""


class ConnectionLimit:
    """The open connections per client address, at most ``cap`` each (0: no cap), shared by
    the sites of one daemon; the addresses of trusted proxies (``exempt``) are not capped.
    Refusals are logged rate-limited: a flood of them must not flood the log."""

    def __init__(self, clock: IReactorTime, cap: int,
                 exempt: Callable[[str], bool] = lambda address: False) -> None:
        self.cap = cap
        self._clock = clock
        self._exempt = exempt
        self._open: dict[str, int] = {}
        self._refusals = RateLimitedLog(log, clock, "connections refused over the cap")

    def open(self, address: str) -> int:
        """Connections open from ``address``."""
        return self._open.get(address, 0)

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``, or refuse it (False) at the cap."""
        count = self._open.get(address, 0)
        if self.cap and count >= self.cap and not self._exempt(address):
            self._refusals.emit("refused a connection from {address}: {cap} open already "
                                "(the cap per client address)", address=address, cap=self.cap)
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open[address] - 1
        if count:
            self._open[address] = count
        else:
            del self._open[address]


class APIChannel(HTTPChannel):
    """HTTP/1.1 as twisted.web speaks it, with one deadline per request and JSON answers."""

    limit: ConnectionLimit | None = None
    counted_as = ""
    """The client address this connection counts against in ``limit``."""
    _receiving = False
    """Part of a request has come in, not all of it."""

    def dataReceived(self, data: bytes) -> None:
        # Instead of HTTPChannel's timer reset on every byte: the first byte of a request
        # starts the one period it has to arrive in.
        if not self._receiving:
            self._receiving = True
            self.resetTimeout()
        LineReceiver.dataReceived(self, data)

    def allContentReceived(self) -> None:
        self._receiving = False
        super().allContentReceived()

    def timeoutConnection(self) -> None:
        if self._receiving:
            self._answer(408, f"the request did not arrive whole within {self.timeOut:g} s")
        super().timeoutConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line over ``MAX_LENGTH``: LineReceiver closes the connection without an answer."""
        if self._receivedHeaderSize == 0:
            self._answer(414, f"request line over {self.MAX_LENGTH // 1024} KiB")
        else:
            self._answer(431, f"request header line over {self.MAX_LENGTH // 1024} KiB")
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Every request HTTPChannel refuses (a malformed request line or header, bad chunked
        framing, too many or too long headers) comes through here."""
        if (self._receivedHeaderSize > self.totalHeadersSize
                or self._receivedHeaderCount > self.maxHeaders):
            self._answer(431, f"request headers over {self.totalHeadersSize // 1024} KiB or "
                              f"{self.maxHeaders} fields")
        else:
            self._answer(400, "malformed HTTP request")
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.limit is not None:
            self.limit.release(self.counted_as)
            self.limit = None

    def _answer(self, status: int, message: str) -> None:
        transport = cast(ITCPTransport, self.transport)
        log.info("{status} to {address}: {message}", status=status,
                 address=getattr(transport.getPeer(), "host", "-"), message=message)
        transport.write(bare_answer(status, message, self.isSecure()))


class Refusal(Protocol):
    """A connection over the cap of its address: a JSON 503, then closed."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._cut: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport = cast(ITCPTransport, self.transport)
        secure = ISSLTransport(transport, None) is not None
        transport.write(bare_answer(503, "too many connections from this address", secure))
        transport.loseConnection()
        self._cut = self._clock.callLater(REFUSAL_GRACE, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._cut is not None and self._cut.active():
            self._cut.cancel()


class APISite(Site):
    """The Site of the API (and of port 80 next to it): :class:`APIChannel` connections with
    :class:`APIRequest` requests, the idle timeout on ``clock``, and the connections of each
    client address counted in ``limit``."""

    protocol = APIChannel  # type: ignore[assignment]
    requestFactory = APIRequest

    def __init__(self, resource: IResource, clock: IReactorTime, limit: ConnectionLimit,
                 log_formatter: Callable[[str, Request], str] | None = None) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=clock,
                         logFormatter=log_formatter)
        self.limit = limit
        self._clock = clock

    def buildProtocol(self, addr: IAddress | None) -> Any:
        address = getattr(addr, "host", None)  # UNIX sockets have none, and no cap
        if address is None:
            return super().buildProtocol(addr)
        if not self.limit.admit(address):
            return Refusal(self._clock)
        channel = super().buildProtocol(addr)
        channel.limit, channel.counted_as = self.limit, address
        return channel
