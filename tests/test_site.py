"""The API's Site and channel: JSON answers where twisted.web answers without a Request
(StringTransport and a Clock)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from mxproxy import __version__
from mxproxy.api.site import APIChannel, APISite
from tests.support import RawResponse

CLIENT = "203.0.113.5"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Answer(Resource):
    """``{}`` for GET; a failure nothing catches for POST."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"{}"

    def render_POST(self, request: Request) -> bytes:
        raise RuntimeError("a bug")


def make_site(clock: Clock) -> APISite:
    return APISite(Answer(), clock)


def connect(site: APISite, host: str = CLIENT) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", host, 40000)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def response(transport: StringTransport) -> RawResponse:
    return RawResponse(transport.value())


class ChannelAnswerTests(SynchronousTestCase):
    """What HTTPChannel answers by itself is JSON with the API's headers."""

    def answer(self, data: bytes) -> RawResponse:
        channel, transport = connect(make_site(Clock()))
        channel.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        answer = response(transport)
        self.assertEqual(answer.header(b"content-type"), b"application/json")
        self.assertEqual(answer.header(b"server"), f"MXProxy/{__version__}".encode())
        self.assertEqual(answer.header(b"connection"), b"close")
        self.assertEqual(int(answer.header(b"content-length") or b"-1"), len(answer.body))
        return answer

    def test_malformed_request_line(self) -> None:
        answer = self.answer(b"GET /\r\n\r\n")
        self.assertEqual((answer.status, answer.status_line), (400, b"HTTP/1.1 400 Bad Request"))
        self.assertEqual(json.loads(answer.body), {"error": "malformed HTTP request"})

    def test_request_line_too_long(self) -> None:
        answer = self.answer(b"GET /" + b"a" * APIChannel.MAX_LENGTH)
        self.assertEqual(answer.status_line, b"HTTP/1.1 414 URI Too Long")

    def test_header_line_too_long(self) -> None:
        answer = self.answer(GET[:-2] + b"X: " + b"a" * APIChannel.MAX_LENGTH)
        self.assertEqual(answer.status_line, b"HTTP/1.1 431 Request Header Fields Too Large")

    def test_bad_chunked_body(self) -> None:
        answer = self.answer(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n")
        self.assertEqual(answer.status, 400)

    def test_unexpected_failure_is_a_json_500_with_its_traceback_logged(self) -> None:
        channel, transport = connect(make_site(Clock()))
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        answer = response(transport)
        self.assertEqual(answer.status, 500)
        self.assertEqual(json.loads(answer.body), {"error": "internal error"})
        self.assertEqual(answer.header(b"server"), f"MXProxy/{__version__}".encode())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
