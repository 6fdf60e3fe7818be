"""The daemon as makeService builds it, listening for real on loopback: a certificate from
files with HSTS, port 80's redirect, ``--listen``, and the graceful stop."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from mxproxy.listeners import Listener
from mxproxy.mx import MXServer
from mxproxy.options import MXProxyOptions
from mxproxy.service import makeService
from mxproxy.testing.certs import certificate_authority
from mxproxy.testing.mxsim import demo_pbx
from tests.support import Silent, exchange, serve

NAME = "mxproxy.test"
ALICE = b"Basic " + base64.b64encode(b"alice:alice")


@implementer(IAgentEndpointFactory)
class Loopback:
    """Sends every request to one loopback port; for https, verifies the server as ``NAME``
    against ``trust``."""

    def __init__(self, port: int, trust: bytes | None = None) -> None:
        self.port = port
        self.trust = trust

    def endpointForURI(self, uri: Any) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        if self.trust is None:
            return endpoint
        return wrapClientTLS(optionsForClientTLS(NAME, Certificate.loadPEM(self.trust)),
                             endpoint)


class RunningDaemonTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.pbx = demo_pbx(clock=reactor)
        mx = serve(self, self.pbx)
        self.config = self.mktemp() + ".json"
        with open(self.config, "w") as file:
            json.dump({"mx": {"dev": {"addr": f"127.0.0.1:{mx.port}", "tls": False,
                                      "login": "server", "password": "server"}}}, file)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def start(self, *args: str) -> MultiService:
        if "--admin-listen" not in args:
            args = ("--admin-listen", "none", *args)
        options = MXProxyOptions()
        options.parseOptions(["--config", self.config, "--db", self.mktemp(), *args])
        root = makeService(options, reactor=reactor)
        assert isinstance(root, MultiService)
        root.privilegedStartService()
        root.startService()
        self.addCleanup(lambda: root.stopService() if root.running else None)
        for service in root:
            if isinstance(service, MXServer):
                await service.when_ready()
        return root

    async def start_https(self, *args: str) -> tuple[MultiService, bytes]:
        """The daemon for ``NAME`` with a certificate (and its CA chain) from files, HTTPS and
        port 80 on ephemeral ports; also returns the CA a client must trust."""
        authority = certificate_authority()
        issued = authority.issue([NAME])
        chain, key = self.mktemp(), self.mktemp()
        with open(chain, "wb") as file:
            file.write(issued.cert_pem + b"".join(issued.chain_pem))
        with open(key, "wb") as file:
            file.write(issued.key_pem)
        root = await self.start("--host", NAME, "--tls-cert", chain, "--tls-key", key,
                                "--https-listen", "tcp:0:interface=127.0.0.1",
                                "--http-listen", "tcp:0:interface=127.0.0.1", *args)
        return root, authority.cert_pem

    def ports(self, root: IService) -> dict[str, int]:
        """Listener description → bound port."""
        found = {}
        for service in root:  # type: ignore[attr-defined]
            if isinstance(service, Listener):
                assert service.port is not None
                found[service.what] = service.port.getHost().port  # type: ignore[attr-defined]
        return found

    async def get(self, url: str, port: int, trust: bytes | None = None,
                  auth: bytes | None = None) -> tuple[IResponse, bytes]:
        agent = Agent.usingEndpointFactory(reactor, Loopback(port, trust), pool=self.pool)
        headers = Headers({b"Authorization": [auth]} if auth else {})
        response = await agent.request(b"GET", url.encode(), headers)
        return response, await readBody(response)

    async def test_certificate_from_files_served_with_hsts_and_port_80_redirects(self) -> None:
        root, trust = await self.start_https()
        ports = self.ports(root)
        self.assertEqual(sorted(ports), ["HTTP (ACME challenges, redirect to HTTPS)",
                                         f"HTTPS for {NAME}"])
        response, body = await self.get(f"https://{NAME}/mx/nope/addressbook",
                                        ports[f"HTTPS for {NAME}"], trust=trust,
                                        auth=ALICE)
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"error": "unknown MX 'nope'"})
        self.assertEqual(response.headers.getRawHeaders(b"Strict-Transport-Security"),
                         [b"max-age=31536000"])
        response, _ = await self.get("http://127.0.0.1/mx/dev/calllog?timestamp=1",
                                     ports["HTTP (ACME challenges, redirect to HTTPS)"])
        self.assertEqual(response.code, 301)
        self.assertEqual(response.headers.getRawHeaders(b"Location"),
                         [f"https://{NAME}/mx/dev/calllog?timestamp=1".encode()])

    async def test_listen_serves_plain_http_on_every_endpoint(self) -> None:
        root = await self.start("--host", NAME, "--listen", "tcp:0:interface=127.0.0.1",
                          "--listen", "tcp:0:interface=127.0.0.1")
        listeners = [s for s in root if isinstance(s, Listener)]  # type: ignore[attr-defined]
        self.assertEqual([s.description for s in listeners], ["tcp:0:interface=127.0.0.1"] * 2)
        for listener in listeners:
            assert listener.port is not None
            port = listener.port.getHost().port  # type: ignore[attr-defined]
            response, body = await self.get("http://127.0.0.1/mx/dev/addressbook", port,
                                            auth=ALICE)
            self.assertEqual(response.code, 200)
            self.assertIn("addressbook", json.loads(body))
            self.assertIsNone(response.headers.getRawHeaders(b"Strict-Transport-Security"))

    async def test_graceful_stop_stops_accepting_and_logs_out_of_the_mx(self) -> None:
        root = await self.start("--listen", "tcp:0:interface=127.0.0.1")
        [port] = self.ports(root).values()
        response, _ = await self.get("http://127.0.0.1/mx/dev/calllog", port, auth=ALICE)
        self.assertEqual(response.code, 200)  # alice now has a pooled MX session
        self.assertEqual(len(self.pbx.sessions), 2)  # the server link and alice's session
        closed = [session.when_closed() for session in self.pbx.sessions]
        await root.stopService()
        for waiting in closed:
            await waiting
        logouts = [c for c in self.pbx.received if c.name == "logout"]
        self.assertEqual(len(logouts), 2)
        with self.assertRaises(ConnectionRefusedError):
            await self.get("http://127.0.0.1/mx/dev/calllog", port, auth=ALICE)

    async def test_connection_cap_from_the_flag_counts_https_and_port_80_together(self) -> None:
        root, _ = await self.start_https("--max-connections-per-address", "1")
        ports = self.ports(root)
        idle = Silent()
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", ports[f"HTTPS for {NAME}"]), idle)
        request = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        port_80 = ports["HTTP (ACME challenges, redirect to HTTPS)"]
        answer = await exchange(port_80, request)
        self.assertEqual(answer.status, 503)
        self.assertIn("too many connections", json.loads(answer.body)["error"])
        assert idle.transport is not None
        idle.transport.loseConnection()
        await idle.closed
        while (answer := await exchange(port_80, request)).status == 503:
            pass  # until the server has seen the close
        self.assertEqual(answer.status, 301)

    async def test_health_and_metrics_on_the_admin_endpoint_only(self) -> None:
        root, trust = await self.start_https("--admin-listen", "tcp:0:interface=127.0.0.1")
        ports = self.ports(root)
        admin = ports["the admin endpoint (/healthz, /metrics)"]
        https = ports[f"HTTPS for {NAME}"]
        response, body = await self.get(f"https://{NAME}/mx/dev/addressbook", https,
                                        trust=trust, auth=ALICE)
        self.assertEqual(response.code, 200)
        response, body = await self.get("http://127.0.0.1/healthz", admin)
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["mx"]["dev"]["link"], "up")
        response, body = await self.get("http://127.0.0.1/metrics", admin)
        self.assertEqual(response.code, 200)
        text = body.decode()
        self.assertIn('mxproxy_http_requests_total{method="GET",route="/mx/{mx}/addressbook",'
                      'status="200"} 1.0', text)
        self.assertIn('mxproxy_mx_link_up{mx="dev"} 1.0', text)
        self.assertIn("mxproxy_tls_certificate_expires_in_seconds ", text)
        response, _ = await self.get(f"https://{NAME}/healthz", https, trust=trust)
        self.assertEqual(response.code, 404)  # not on the public port
