"""Shared fixtures for integration tests: a simulator on loopback, torn down with the test."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mxproxy.csta.client import MXAddress
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.testing.mxsim import PBX, listen


def serve(test: TestCase, pbx: PBX, tls: Any = None) -> MXAddress:
    """Listen for ``pbx`` on an ephemeral loopback port; everything is closed at cleanup."""
    port: IListeningPort = listen(pbx, port=0, interface="127.0.0.1", tls=tls, reactor=reactor)

    async def stop() -> None:
        await port.stopListening()
        await drop_sessions(pbx)

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return MXAddress("127.0.0.1", port.getHost().port, tls=tls is not None)


async def drop_sessions(pbx: PBX) -> None:
    """Cut every simulator session and wait until the sockets are really gone."""
    closing = [session.when_closed() for session in pbx.sessions]
    pbx.drop()
    await DeferredList(closing)


def close_on_cleanup(test: TestCase, protocol: CSTAProtocol) -> None:
    async def close() -> None:
        closed = protocol.when_closed()
        protocol.close()
        await closed

    test.addCleanup(lambda: Deferred.fromCoroutine(close()))


def next_turn() -> Deferred[None]:
    """Let the reactor run the callbacks already due (no waiting on the wall clock)."""
    return deferLater(reactor, 0, lambda: None)


class Daemon:
    """The HTTP API on a loopback port in front of a simulated MX, as the daemon wires it.

    ``clock`` drives the API's timers (auth cache, throttle, idle sessions) and the user
    sessions' protocol timers, the call log's deadline included.

    ``calls`` is the MX's call state (:class:`mxproxy.calls.CallState`) on ``clock``, ``hub``
    its event hub (:class:`mxproxy.events.EventHub`), fed as the daemon feeds it. With
    ``push`` (a :class:`mxproxy.push.system.PushSystem`), the server link and the call state are
    attached to it as the daemon does, so device registration works and ``devices`` is its
    registration;
    ``link_clock`` drives the server link's timers (reconnect delays without jitter).
    ``metrics`` (a :class:`mxproxy.metrics.Metrics`) receives the HTTP requests and the CSTA
    round trips of both the server link and the user sessions, as the daemon wires it.
    ``connections_per_address`` caps the HTTP connections of one client address (0: none).
    ``role`` (a :class:`mxproxy.roles.MXRole`) says whether this instance owns the MX.
    """

    def __init__(self, test: TestCase, pbx: PBX, clock: Any = None,
                 idle_timeout: float = 60.0, user_address: MXAddress | None = None,
                 push: Any = None, link_clock: Any = None, metrics: Any = None,
                 connections_per_address: int = 0, role: Any = None) -> None:
        self.test = test
        self.role = role
        self.user_address = user_address
        self.pbx = pbx
        self.clock = reactor if clock is None else clock
        self.idle_timeout = idle_timeout
        self.push = push
        self.link_clock = link_clock
        self.metrics = metrics
        self.connections_per_address = connections_per_address
        self.devices: Any = None

    async def start(self) -> Daemon:
        from twisted.web.client import Agent, HTTPConnectionPool

        from mxproxy.api.access import MXAccess
        from mxproxy.api.app import API
        from mxproxy.api.site import APISite, ConnectionLimit
        from mxproxy.calls import CallState
        from mxproxy.config import MXConfig
        from mxproxy.csta.client import CSTAFactory
        from mxproxy.events import EventHub
        from mxproxy.eventsources import feed
        from mxproxy.mx import MXServer, SerialRegistry
        from mxproxy.sessions import SessionPool

        self.address = serve(self.test, self.pbx)
        config = MXConfig(name="dev", host=self.address.host, port=self.address.port,
                          login="server", password="server-secret", tls=False)
        link: dict[str, Any] = {} if self.link_clock is None else {
            "clock": self.link_clock, "jitter": lambda: 0.0}
        round_trip = None if self.metrics is None else self.metrics.round_trips("dev")
        self.server = MXServer(config, reactor, SerialRegistry(), on_round_trip=round_trip,
                               **link)
        self.calls = CallState(self.server, self.clock)
        self.hub = EventHub(self.clock)
        self.test.addCleanup(self.hub.stopService)
        feed(self.hub, self.server, self.calls)
        if self.push is not None:
            # Before the link is up, as the daemon does.
            self.devices = self.push.attach(self.server, self.calls, self.role)
        self.server.startService()
        self.test.addCleanup(self.server.stopService)
        await self.server.when_ready()
        self.pool = SessionPool(reactor, self.user_address or self.address,
                                CSTAFactory(self.clock, on_round_trip=round_trip),
                                idle_timeout=self.idle_timeout, clock=self.clock)
        self.test.addCleanup(self.pool.close_all)
        access = MXAccess(self.server, self.pool, self.calls, self.devices, self.hub)
        self.api = API({"dev": access}, self.clock, metrics=self.metrics)
        site = APISite(self.api.resource(), self.clock,
                       ConnectionLimit(self.clock, self.connections_per_address))
        self.site = site
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.test.addCleanup(port.stopListening)
        self.http_port = port.getHost().port
        self.base = f"http://127.0.0.1:{self.http_port}/mx/dev"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        return self

    async def request(self, method: str, path: str, auth: tuple[str, str] | None = None,
                      body: bytes | None = None, headers: dict[str, str] | None = None,
                      base: str | None = None) -> tuple[Any, bytes]:
        """One HTTP request; returns (response, body)."""
        import base64

        from twisted.web.client import FileBodyProducer, readBody
        from twisted.web.http_headers import Headers

        raw = Headers({k.encode(): [v.encode()] for k, v in (headers or {}).items()})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode())
            raw.setRawHeaders(b"Authorization", [b"Basic " + token])
        producer = None if body is None else FileBodyProducer(io.BytesIO(body))
        response = await self.agent.request(method.encode(),
                                            ((base or self.base) + path).encode(), raw, producer)
        return response, await readBody(response)


class RawResponse:
    """An HTTP response as the bytes on the wire said it: status, headers (lower-case names,
    every value), and the body (de-chunked)."""

    def __init__(self, data: bytes) -> None:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(b" ")[1])
        self.headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.setdefault(name.strip().lower(), []).append(value.strip())
        if self.headers.get(b"transfer-encoding") == [b"chunked"]:
            self.body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                if int(size, 16) == 0:
                    break
                self.body, rest = self.body + rest[:int(size, 16)], rest[int(size, 16) + 2:]
        else:
            self.body = rest[:int(self.headers.get(b"content-length", [b"%d" % len(rest)])[0])]

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return None if values is None else values[0]


class Silent(Protocol):
    """A client that connects and says nothing; ``closed`` fires when the connection ends."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


class _Exchange(Protocol):
    def __init__(self, request: bytes) -> None:
        self._request = request
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.received)


async def exchange(port: int, request: bytes) -> RawResponse:
    """Send ``request`` as raw bytes to a loopback port, read until the server closes, and
    parse the response (send ``Connection: close`` where the request is well-formed)."""
    client = _Exchange(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    return RawResponse(await client.closed)


def open_descriptors() -> int:
    """The test process's open file descriptors (it holds both ends of loopback links)."""
    import os

    return len(os.listdir("/proc/self/fd"))


async def settled_descriptors(limit: int, turns: int = 200) -> int:
    """Open descriptors once closing connections are gone: closing takes a few reactor turns,
    so wait up to ``turns`` of them (never wall-clock time) for the count to fall to ``limit``."""
    count = open_descriptors()
    for _ in range(turns):
        if count <= limit:
            break
        await next_turn()
        count = open_descriptors()
    return count
