"""The HTTP API under ``/mx/<mx-name>/``.

This first version only answers every path with a JSON 404; the routes of the original product
(address book, call log, click-to-call, voicemail, tokens) are added on top of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from twisted.web.resource import Resource
from twisted.web.server import Request

from mxproxy import __version__
from mxproxy.mx import MXServer

API_VERSION = "1.0"


def set_common_headers(request: Request) -> None:
    """The headers every response of the original carried."""
    request.setHeader(b"Server", f"MXProxy/{__version__}".encode())
    request.setHeader(b"X-API-Version", API_VERSION.encode())
    request.setHeader(b"X-Service-Version", __version__.encode())


def json_error(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message}).encode()


class NotFound(Resource):
    """Every path and method: 404 with a JSON body."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        set_common_headers(request)
        return json_error(request, 404, "not found")


def root_resource(servers: Mapping[str, MXServer]) -> Resource:
    """The site's root for the configured MX servers."""
    return NotFound()
