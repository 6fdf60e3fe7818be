"""Where a request comes from: the TCP peer, or behind a trusted reverse proxy the client that
the proxy names in ``X-Forwarded-For``.

Behind a reverse proxy every request arrives from the proxy's address, so throttling by address
would make all clients one. ``X-Forwarded-For`` is believed only from the configured proxies
(``--trusted-proxy``), and only as far as they wrote it: the list is read from the right,
skipping the trusted proxies, and the first other address is the client (nginx's
``real_ip_recursive``, Synapse). What lies to its left came from the client and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IReactorTime
from twisted.web.http import combinedLogFormatter
from twisted.web.server import Request

from mxproxy.logs import Logger, RateLimitedLog
from mxproxy.options import TrustedProxy

log = Logger(__name__)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"
"""The address of a peer without one (a Unix socket not trusted as a proxy)."""


class ClientAddresses:
    """The client address of each request, given the trusted reverse proxies."""

    def __init__(self, clock: IReactorTime, trusted: Iterable[TrustedProxy] = ()) -> None:
        trusted = list(trusted)
        self._networks = [network for network in trusted if network != "unix"]
        self._unix = "unix" in trusted
        self._malformed = RateLimitedLog(log, clock, "malformed X-Forwarded-For from trusted "
                                         "proxies")

    def address(self, request: Request) -> str:
        """The client's IP address as text, or ``unknown``."""
        peer = request.getClientAddress()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            if not (self._networks and self._trusts(_ip(peer.host))):
                return peer.host
            proxy = peer.host
        elif isinstance(peer, UNIXAddress) and self._unix:
            proxy = UNKNOWN
        else:
            return UNKNOWN
        forwarded = self._forwarded(request, proxy)
        return proxy if forwarded is None else str(forwarded)

    def is_proxy(self, host: str) -> bool:
        """Whether a TCP peer is a trusted proxy: many clients' connections come from it, so
        the per-address connection cap does not apply to it."""
        return bool(self._networks) and self._trusts(_ip(host))

    def access_log(self, timestamp: str, request: Request) -> str:
        """twisted.web's combined log line (the Site's ``logFormatter``), naming the client
        as :meth:`address` does rather than the proxy it came through."""
        if not self._networks and not self._unix:
            return combinedLogFormatter(timestamp, request)
        address = self.address(request)
        if address == UNKNOWN:
            return combinedLogFormatter(timestamp, request)
        seen = (IPv4Address if ":" not in address else IPv6Address)("TCP", address, 0)
        return combinedLogFormatter(timestamp, _SeenFrom(request, seen))

    def _trusts(self, ip: IP | None) -> bool:
        return ip is not None and any(ip in network for network in self._networks)

    def _forwarded(self, request: Request, proxy: str) -> IP | None:
        """The client named by ``X-Forwarded-For``; None without the header or when the part
        written by trusted proxies does not parse (then the proxy is taken for the client)."""
        headers = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        if not headers:
            return None
        ip = None
        for hop in reversed(b",".join(headers).split(b",")):
            ip = _ip(hop.strip().decode("ascii", "replace"))
            if ip is None:
                self._malformed.emit("X-Forwarded-For from trusted proxy {proxy} is not a list "
                                     "of IP addresses; taking the proxy for the client",
                                     proxy=proxy)
                return None
            if not self._trusts(ip):
                return ip
        return ip  # every hop is a trusted proxy: the leftmost is the client


def _ip(text: str) -> IP | None:
    """The address in ``text`` (IPv4-mapped IPv6 as IPv4, as a dual-stack socket reports
    IPv4 peers), or None when it is none."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _SeenFrom:
    """A request whose client address is another, for the access log's formatter."""

    def __init__(self, request: Request, address: IPv4Address | IPv6Address) -> None:
        self._request = request
        self._address = address

    def getClientAddress(self) -> IPv4Address | IPv6Address:
        return self._address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)
