"""The site's Request: a bounded body and the headers every response of the original carried.

twisted.web buffers a whole request body before dispatching it, so the limit is enforced while
the body arrives: past 64 KiB nothing more is stored and the request is answered 413 without
reaching a route.
"""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from mxproxy import __version__
from mxproxy.api.errors import HTTPError, write_error
from mxproxy.metrics import OTHER

MAX_BODY = 64 * 1024
API_VERSION = "1.0"
HSTS = b"max-age=31536000"
"""Strict-Transport-Security on HTTPS answers: a year, as browsers and scanners expect."""
_SERVER = f"MXProxy/{__version__}".encode()
_API_VERSION = API_VERSION.encode()
_SERVICE_VERSION = __version__.encode()


class APIRequest(Request):
    """A Request that refuses bodies over :data:`MAX_BODY` and stamps the common headers."""

    body_too_large = False
    _received = 0
    route = OTHER
    """The template of the route that matched (``/mx/{mx}/calllog``), set by the API: the label
    of the request's metrics."""

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.body_too_large = True
            length = 0  # do not let twisted.web pick a temp file for what we will not keep
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)

    def render(self, resource: Any) -> None:
        """After twisted.web's own defaults (it stamps ``Server: TwistedWeb``), before routing."""
        self.setHeader(b"Server", _SERVER)
        self.setHeader(b"X-API-Version", _API_VERSION)
        self.setHeader(b"X-Service-Version", _SERVICE_VERSION)
        if self.isSecure():
            self.setHeader(b"Strict-Transport-Security", HSTS)
        super().render(resource)

    def refusal(self) -> bytes | None:
        """The 413 answer for a body over the limit, else None (the resource asks, so that the
        refusal is counted like any other answer)."""
        if not self.body_too_large:
            return None
        return write_error(self, HTTPError(413, f"request body over {MAX_BODY // 1024} KiB"))
