"""The API's Site and channel: request deadlines, the per-address connection cap, and JSON
answers where twisted.web answers without a Request (StringTransport and a Clock), plus the cap
on real loopback connections."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from mxproxy import __version__
from mxproxy.api.clients import ClientAddresses
from mxproxy.api.site import (
    IDLE_TIMEOUT,
    REFUSAL_GRACE,
    APIChannel,
    APISite,
    ConnectionLimit,
    Refusal,
)
from tests.support import Daemon, RawResponse, Silent, exchange, next_turn

CLIENT = "203.0.113.5"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Answer(Resource):
    """``{}`` for GET; a failure nothing catches for POST."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        return b"{}"

    def render_POST(self, request: Request) -> bytes:
        raise RuntimeError("a bug")


def make_site(clock: Clock, cap: int = 0) -> APISite:
    return APISite(Answer(), clock, ConnectionLimit(clock, cap))


def connect(site: APISite, host: str = CLIENT) -> tuple[Any, StringTransport]:
    address = IPv4Address("TCP", host, 40000)
    protocol = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def response(transport: StringTransport) -> RawResponse:
    return RawResponse(transport.value())


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.channel, self.transport = connect(make_site(self.clock))

    def test_idle_connection_closes_without_an_answer(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")

    def test_idle_time_counts_from_the_last_answer(self) -> None:
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.channel.dataReceived(GET)
        self.assertEqual(response(self.transport).status, 200)
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

    def test_a_trickled_request_gets_408_when_its_time_is_up(self) -> None:
        # twisted.web restarts its timer on every byte: one byte a minute would hold the
        # connection for ever.
        self.channel.dataReceived(GET[:1])
        for byte in GET[1:20]:  # one byte every 3 s, the last at 57 s
            self.clock.advance(3)
            self.channel.dataReceived(bytes([byte]))
        self.clock.advance(IDLE_TIMEOUT - 57 - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        answer = response(self.transport)
        self.assertEqual(answer.status, 408)
        self.assertIn("did not arrive whole", json.loads(answer.body)["error"])

    def test_a_trickled_body_gets_408_too(self) -> None:
        self.channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(9):
            self.clock.advance(IDLE_TIMEOUT / 10)
            self.channel.dataReceived(b"x")
        self.clock.advance(IDLE_TIMEOUT / 10)
        self.assertEqual(response(self.transport).status, 408)

    def test_the_deadline_starts_with_the_first_byte_of_each_request(self) -> None:
        self.channel.dataReceived(GET)
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.transport.clear()
        self.channel.dataReceived(GET[:5])
        self.clock.advance(IDLE_TIMEOUT - 0.1)
        self.channel.dataReceived(GET[5:])
        self.assertEqual(response(self.transport).status, 200)
        self.assertFalse(self.transport.disconnecting)


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


class ConnectionCapTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = make_site(self.clock, cap=2)

    def test_over_the_cap_a_503_and_the_connection_closed(self) -> None:
        first, _ = connect(self.site)
        connect(self.site)
        refused, transport = connect(self.site)
        self.assertIsInstance(refused, Refusal)
        answer = response(transport)
        self.assertEqual(answer.status, 503)
        self.assertEqual(answer.header(b"server"), f"MXProxy/{__version__}".encode())
        self.assertIn("too many connections", json.loads(answer.body)["error"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.limit.open(CLIENT), 2)
        first.connectionLost(None)
        self.assertIsInstance(connect(self.site)[0], APIChannel)

    def test_a_trusted_proxy_is_not_capped(self) -> None:
        """Behind a reverse proxy every client's connection comes from the proxy's address."""
        proxies = ClientAddresses(self.clock, [ipaddress.ip_network("10.0.0.0/8")])
        site = APISite(Answer(), self.clock, ConnectionLimit(self.clock, 2, proxies.is_proxy))
        channels = [connect(site, "10.1.2.3")[0] for _ in range(5)]
        self.assertEqual({type(channel) for channel in channels}, {APIChannel})
        connect(site)
        connect(site)
        self.assertIsInstance(connect(site)[0], Refusal)

    def test_a_refused_client_that_takes_no_answer_is_cut(self) -> None:
        connect(self.site)
        connect(self.site)
        _, transport = connect(self.site)
        self.clock.advance(REFUSAL_GRACE)
        self.assertTrue(transport.disconnected)

    def test_refused_connection_closing_in_time_leaves_no_timer(self) -> None:
        connect(self.site)
        connect(self.site)
        refused, _ = connect(self.site)
        refused.connectionLost(None)
        self.assertFalse([call for call in self.clock.getDelayedCalls()
                          if call.func.__name__ == "abortConnection"])

    def test_other_addresses_and_unix_sockets_are_not_affected(self) -> None:
        connect(self.site)
        connect(self.site)
        self.assertIsInstance(connect(self.site, "198.51.100.7")[0], APIChannel)
        self.assertIsInstance(self.site.buildProtocol(UNIXAddress("/run/x")), APIChannel)

    def test_every_closed_connection_is_released(self) -> None:
        channels = [connect(self.site)[0] for _ in range(2)]
        for channel in channels:
            channel.connectionLost(None)
        self.assertEqual(self.site.limit.open(CLIENT), 0)

    def test_no_cap(self) -> None:
        site = make_site(self.clock, cap=0)
        self.assertTrue(all(isinstance(connect(site)[0], APIChannel) for _ in range(500)))

    def test_refusals_are_logged_at_most_once_a_minute_with_their_count(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        connect(self.site)
        connect(self.site)
        for _ in range(10):
            connect(self.site)
        warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        refused = f"refused a connection from {CLIENT}: 2 open already (the cap per client " \
                  "address)"
        self.assertEqual(warned, [refused])
        self.clock.advance(60)
        connect(self.site)
        warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warned, [refused, "connections refused over the cap: 9 more suppressed "
                                           "in 60 s", refused])


class LoopbackCapTests(TestCase):
    async def test_cap_on_real_connections(self) -> None:
        from tests.test_api import company

        daemon = await Daemon(self, company(), connections_per_address=2).start()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.http_port)
        idle = [await connectProtocol(endpoint, Silent()) for _ in range(2)]
        for client in idle:
            self.addCleanup(lambda c=client: (c.transport.loseConnection(), c.closed)[1])
        request = b"GET /mx/dev/addressbook HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await exchange(daemon.http_port, request)
        self.assertEqual(answer.status, 503)
        idle[0].transport.loseConnection()
        await idle[0].closed
        while daemon.site.limit.open("127.0.0.1") > 1:  # the server sees the close a turn later
            await next_turn()
        answer = await exchange(daemon.http_port, request)
        self.assertEqual(answer.status, 401)
