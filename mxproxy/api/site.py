"""How the API's HTTP connections are served: twisted.web's Site and channel, with JSON answers
where the channel itself answers.

twisted.web answers a malformed request with a bare ``400`` and no body, and drops a connection
whose request line is too long without a word. Here every answer of the channel is JSON with the
headers of the API.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource
from twisted.web.server import Site

from mxproxy.api.request import APIRequest, bare_answer
from mxproxy.logs import Logger

log = Logger(__name__)


class APIChannel(HTTPChannel):
    """HTTP/1.1 as twisted.web speaks it, with JSON answers."""

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

    def _answer(self, status: int, message: str) -> None:
        transport = cast(ITCPTransport, self.transport)
        log.info("{status} to {address}: {message}", status=status,
                 address=getattr(transport.getPeer(), "host", "-"), message=message)
        transport.write(bare_answer(status, message, self.isSecure()))


class APISite(Site):
    """The Site of the API (and of port 80 next to it): :class:`APIChannel` connections with
    :class:`APIRequest` requests, their timers on ``clock``."""

    protocol = APIChannel  # type: ignore[assignment]
    requestFactory = APIRequest

    def __init__(self, resource: IResource, clock: IReactorTime) -> None:
        super().__init__(resource, reactor=clock)
