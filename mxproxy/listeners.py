"""Where the daemon listens, chosen from the options, and a listening service that says where.

Three ways to serve the API (see README "TLS modes"): ``--listen`` endpoints as given (behind a
reverse proxy), plain HTTP on loopback for a local ``--host``, or, for a public ``--host``,
HTTPS with a certificate from files or from ACME plus port 80 for ACME challenges and the
redirect to HTTPS. The admin endpoint (``/healthz``, ``/metrics``) is always a separate one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.failure import Failure
from twisted.web.server import Site

from mxproxy import logs
from mxproxy.api.site import APISite
from mxproxy.store.location import is_postgres
from mxproxy.tls import (
    RedirectToHTTPS,
    ServingCertificate,
    TLSConfigError,
    https_factory,
    load_pem_files,
)

log = logs.Logger(__name__)


class Listener(Service):
    """Listens on one endpoint while running. It binds in ``privilegedStartService`` (ports 80
    and 443 before twistd drops privileges), fails the start when it cannot, logs the address it
    really got (port 0 included) and stops accepting first when the daemon stops."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory,
                 what: str, description: str) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self.what = what
        self.description = description
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures: list[Failure] = []
        listening = self._endpoint.listen(self._factory)
        listening.addCallbacks(self._listening, failures.append)
        if failures:  # stream endpoints fail at once; a port in use must stop the start
            raise SystemExit(f"mxproxy: cannot listen on {self.description} for {self.what}: "
                             f"{failures[0].getErrorMessage()}")

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("mxproxy: serving {what} on {where}", what=self.what,
                 where=where(port.getHost()))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()


def where(address: object) -> str:
    """``host:port`` of a TCP address, the path of a UNIX one."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        return str(address.name)
    return str(address)


def api_listeners(options: Mapping[str, Any], site: APISite, parent: MultiService,
                  reactor: Any) -> tuple[list[Listener], ServingCertificate | None]:
    """The listeners of the API for these options, and the certificate served over HTTPS if
    any; ACME, when used, joins ``parent``. Port 80, when served, counts its connections in
    the API's limit: a client address has one cap for both ports."""
    if options["listen"]:
        return [Listener(_endpoint(reactor, text, "--listen"), site, "HTTP", text)
                for text in options["listen"]], None
    if options["local_http"] is not None:
        interface, port = options["local_http"]
        return [Listener(TCP4ServerEndpoint(reactor, port, interface=interface), site, "HTTP",
                         f"{interface}:{port}")], None
    host = options["host"]
    certificate = ServingCertificate(host)
    challenges: dict[str, bytes] = {}
    if options["tls-cert"] is not None:
        try:
            certificate.install(*load_pem_files(options["tls-cert"], options["tls-key"]))
        except TLSConfigError as error:
            raise SystemExit(f"mxproxy: {error}") from None
    else:
        from mxproxy.acme import ACMEService  # the ACME client (and requests): only used here

        ACMEService(host, options["acme-directory"], acme_dir(options), certificate, challenges,
                    reactor, email=options["acme-email"]).setServiceParent(parent)
    https, http = options["https-listen"], options["http-listen"]
    return [
        Listener(_endpoint(reactor, https, "--https-listen"), https_factory(site, certificate),
                 f"HTTPS for {host}", https),
        Listener(_endpoint(reactor, http, "--http-listen"),
                 APISite(RedirectToHTTPS(host, challenges), reactor, site.limit),
                 "HTTP (ACME challenges, redirect to HTTPS)", http),
    ], certificate


def acme_dir(options: Mapping[str, Any]) -> str:
    """``--acme-dir``, or ``acme/`` beside the SQLite database (in the working directory with
    PostgreSQL)."""
    if options["acme-dir"] is not None:
        return str(options["acme-dir"])
    if is_postgres(options["db"]):
        return os.path.abspath("acme")
    return os.path.join(os.path.dirname(os.path.abspath(options["db"])), "acme")


def admin_listener(options: Mapping[str, Any], site: Site, reactor: Any) -> Listener | None:
    text = options["admin-listen"]
    if text is None:
        return None
    return Listener(_endpoint(reactor, text, "--admin-listen"), site,
                    "the admin endpoint (/healthz, /metrics)", text)


def _endpoint(reactor: Any, text: str, flag: str) -> IStreamServerEndpoint:
    try:
        return serverFromString(reactor, text)
    except (ValueError, TypeError, KeyError) as error:
        raise SystemExit(f'mxproxy: {flag} "{text}": not a Twisted endpoint ({error})') from None
