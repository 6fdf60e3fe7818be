"""The site's Request: a bounded body, the headers every response of the original carried, and
JSON answers where twisted.web would answer in HTML or not at all.

twisted.web buffers a whole request body before dispatching it, so the limit is enforced while
the body arrives: past 64 KiB nothing more is stored and the request is answered 413 without
reaching a route.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.server import Request

from mxproxy import __version__
from mxproxy.api.errors import HTTPError, write_error
from mxproxy.logs import Logger
from mxproxy.metrics import OTHER

log = Logger(__name__)

MAX_BODY = 64 * 1024
API_VERSION = "1.0"
HSTS = b"max-age=31536000"
"""Strict-Transport-Security on HTTPS answers: a year, as browsers and scanners expect."""
METHODS = b"DELETE, GET, HEAD, PATCH, POST"
"""The methods of the API's routes, for ``OPTIONS *``."""
SERVER = f"MXProxy/{__version__}".encode()
"""The ``Server`` header of every answer, the admin endpoint's too."""
_API_VERSION = API_VERSION.encode()
_SERVICE_VERSION = __version__.encode()
_PHRASES = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class APIRequest(Request):
    """A Request that refuses bodies over :data:`MAX_BODY`, stamps the common headers, serves
    an absolute-form target as its path, and answers ``*`` and unexpected failures in JSON."""

    body_too_large = False
    _received = 0
    _parsePOSTFormSubmission = False
    """twisted.web reads a form-encoded or multipart POST body into ``args`` (with the email
    package: ~0.2 ms a request, more for a crafted multipart body); bodies here are JSON."""
    route = OTHER
    """The template of the route that matched (``/mx/{mx}/calllog``), set by the API: the label
    of the request's metrics."""
    stream_opened: float | None = None
    """When the answer became an open-ended stream (clock seconds), set by its route: the
    metrics time the request until then, not until the client leaves, which is how a stream
    ends (an hour-long stream would flood the latency histogram's top bucket)."""

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

    def process(self) -> None:
        if self.path[:1] != b"/":
            if self.path == b"*":
                self._asterisk()
                return
            self._origin_form()
        super().process()

    def render(self, resource: Any) -> None:
        """After twisted.web's own defaults (it stamps ``Server: TwistedWeb``), before routing."""
        self._stamp()
        super().render(resource)

    def processingFailed(self, reason: Failure) -> Failure:
        """A failure no route caught: a bug, logged with its traceback and answered 500 in
        JSON (twisted.web's answer is an HTML page)."""
        log.failure("unexpected failure serving {path}", reason,
                    path=self.path.decode("utf-8", "replace"))
        if not self.startedWriting:
            self.answer(HTTPError(500, "internal error"))
        elif self.channel is not None:
            self.channel.loseConnection()  # a response cut short must not look complete
        return reason

    def refusal(self) -> bytes | None:
        """The 413 answer for a body over the limit, else None (the resource asks, so that the
        refusal is counted like any other answer)."""
        if not self.body_too_large:
            return None
        return write_error(self, HTTPError(413, f"request body over {MAX_BODY // 1024} KiB"))

    def path_refusal(self) -> bytes | None:
        """The answer for a path the routes must not see, else None: 404 for a segment that is
        empty or holds a ``%2F`` (Klein joins the decoded segments with ``/``, and werkzeug
        would redirect ``/mx/x//addressbook`` to the path without the empty one), 400 for a
        path or Host that is not UTF-8 (Klein answers it in text and logs a traceback). The
        fast path needs neither check."""
        postpath = self.postpath or []
        if any(not segment or b"/" in segment for segment in postpath):
            return write_error(self, HTTPError(404, "not found"))
        try:
            b"/".join(postpath).decode("utf-8")
            self.getRequestHostname().decode("utf-8")
        except UnicodeDecodeError:
            return write_error(self, HTTPError(400, "the URL or Host is not UTF-8"))
        return None

    def answer(self, error: HTTPError) -> None:
        """Answer ``error`` in full, outside any route."""
        body = write_error(self, error)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.write(body)
        self.finish()

    def _stamp(self) -> None:
        self.setHeader(b"Server", SERVER)
        self.setHeader(b"X-API-Version", _API_VERSION)
        self.setHeader(b"X-Service-Version", _SERVICE_VERSION)
        if self.isSecure():
            self.setHeader(b"Strict-Transport-Security", HSTS)

    def _origin_form(self) -> None:
        """An absolute-form target (``GET http://host/mx/...``), which RFC 9112 §3.2.2 says a
        server MUST accept, becomes its path, and its host the Host; any other target is left
        for the routes to answer 404."""
        try:
            target = urlsplit(self.uri)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return
        if target.scheme.lower() not in (b"http", b"https") or not target.netloc:
            return
        self.requestHeaders.setRawHeaders(b"Host", [target.netloc.rpartition(b"@")[2]])
        self.path = target.path or b"/"
        self.uri = self.path + (b"?" + target.query if target.query else b"")

    def _asterisk(self) -> None:
        """``OPTIONS *`` asks what the server supports (RFC 9110 §9.3.7): 204 with ``Allow``.
        Any other method on ``*`` is a 405, as twisted.web answers it, but in JSON."""
        self.setHeader(b"Date", datetimeToString())
        self._stamp()
        if self.method != b"OPTIONS":
            self.answer(HTTPError(405, "only OPTIONS applies to *", {"Allow": "OPTIONS"}))
            return
        self.setResponseCode(204)
        self.setHeader(b"Allow", METHODS)
        self.finish()


def bare_answer(status: int, message: str, secure: bool) -> bytes:
    """A whole JSON error response written by the connection itself, where there is no Request
    to answer with (a malformed request, a refused connection): the common headers, and
    ``Connection: close``, as the connection closes after it."""
    body = json.dumps({"error": message}).encode()
    lines = [b"HTTP/1.1 %d %s" % (status, _PHRASES[status]), b"Server: " + SERVER,
             b"X-API-Version: " + _API_VERSION, b"X-Service-Version: " + _SERVICE_VERSION,
             b"Date: " + datetimeToString(), b"Content-Type: application/json",
             b"Content-Length: %d" % len(body), b"Connection: close"]
    if secure:
        lines.append(b"Strict-Transport-Security: " + HSTS)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
