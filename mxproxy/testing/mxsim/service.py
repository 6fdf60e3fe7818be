"""``twistd mxsim``: the simulator as a long-running service for the demo and benchmarks.

The plugin passes the parsed ``mxproxy.options`` mapping: ``port`` (CSTA, default 7778),
``tls`` (serve TLS with a self-signed certificate), ``control-port`` (0 = no control API),
``interface`` (CSTA bind address, default 127.0.0.1) and ``demo`` (the seeded demo company
instead of an empty PBX). The control API always binds 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from mxproxy.testing import certs
from mxproxy.testing.mxsim.control import control_site
from mxproxy.testing.mxsim.demo import demo_pbx
from mxproxy.testing.mxsim.pbx import PBX, default_reactor
from mxproxy.testing.mxsim.server import SessionFactory

DEFAULT_PORT = 7778
CONTROL_INTERFACE = "127.0.0.1"

log = Logger()


def empty_pbx() -> PBX:
    """What runs without ``--demo``: sn ``SIM01`` and the server login ``server``/``server``."""
    pbx = PBX("SIM01")
    pbx.add_server_login("server", "server")
    return pbx


class SimulatorService(MultiService):
    """The CSTA listener and the optional control listener around one PBX."""

    def __init__(self, pbx: PBX, summary: str) -> None:
        super().__init__()
        self.pbx = pbx
        self.summary = summary

    def startService(self) -> None:
        log.info("mxsim: {summary}", summary=self.summary)
        super().startService()


def makeService(options: Mapping[str, Any]) -> IService:
    """Build (not start) the simulator; the TLS fingerprint is logged so a proxy can pin it."""
    reactor = default_reactor()
    pbx = demo_pbx() if options.get("demo") else empty_pbx()
    interface = options.get("interface") or "127.0.0.1"
    port = int(options.get("port") or DEFAULT_PORT)
    control_port = int(options.get("control-port") or 0)
    endpoint: IStreamServerEndpoint
    if options.get("tls"):
        wildcard = interface in ("0.0.0.0", "::")
        certificate = certs.self_signed(
            certs.DEFAULT_NAMES if wildcard else (*certs.DEFAULT_NAMES, interface))
        endpoint = SSL4ServerEndpoint(reactor, port, certificate.server_options(),
                                      interface=interface)
        transport = f"TLS, certificate SHA-256 {certificate.fingerprint.hex(':')}"
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=interface)
        transport = "plain TCP"
    summary = (f"PBX {pbx.sn} with {len(pbx.users)} users and {len(pbx.contacts)} contacts; "
               f"CSTA on {interface}:{port} ({transport}); control API "
               + (f"on http://{CONTROL_INTERFACE}:{control_port}/" if control_port else "off"))
    service = SimulatorService(pbx, summary)
    StreamServerEndpointService(endpoint, SessionFactory(pbx)).setServiceParent(service)
    if control_port:
        StreamServerEndpointService(
            TCP4ServerEndpoint(reactor, control_port, interface=CONTROL_INTERFACE),
            control_site(pbx)).setServiceParent(service)
    return service
