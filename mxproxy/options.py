"""Command-line options of ``twistd mxproxy`` and ``twistd mxsim``.

The twistd plugin imports this module whenever twistd starts, even for another plugin, so it
imports only the standard library and ``twisted.python.usage``. Values are validated in
``postOptions`` so that a bad flag fails with a usage message before any service is built.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Literal

from twisted.python import usage

from mxproxy import __version__

DEFAULT_LOCAL_HTTP_PORT = 8080
"""Port of plain HTTP for a bare ``--host localhost``; the original README used localhost:8080."""

_LOCAL_PREFIXES = ("localhost", "127.0.0.1")
_LOCAL_HOST = re.compile(r"(?:localhost|127\.0\.0\.1)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")

ACME_DIRECTORIES = {
    "production": "https://acme-v02.api.letsencrypt.org/directory",
    "staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
"""Shorthands accepted by ``--acme-directory``: Let's Encrypt's two ACME v2 directories."""
DEFAULT_ADMIN_LISTEN = "tcp:9473:interface=127.0.0.1"
CONNECTIONS_PER_ADDRESS = 256
"""Default cap on the open HTTP connections of one client address. An app keeps one to six; an
office or a mobile carrier's NAT puts many users behind one address, so the cap is there to stop
one host from taking every descriptor, not to ration users."""
JSON_LOG_OBSERVER = "mxproxy.logs.json_observer"
"""What ``--json-logs`` hands to twistd as its ``--logger``: a factory of the JSON observer."""

TrustedProxy = ipaddress.IPv4Network | ipaddress.IPv6Network | Literal["unix"]
"""A ``--trusted-proxy``: a network, or ``"unix"`` for every peer on a Unix socket."""


def local_http_address(host: str) -> tuple[str, int] | None:
    """Where to serve plain HTTP for ``--host``, or None for a public name (served over HTTPS).

    As in the original, a value starting with ``localhost`` or ``127.0.0.1`` means plain HTTP on
    the loopback interface; it must then be ``localhost[:port]`` or ``127.0.0.1[:port]``, the port
    defaulting to 8080. Anything else must be a DNS name, the one the certificate is issued for.
    Raises ValueError with the reason for any other value.
    """
    if not host.startswith(_LOCAL_PREFIXES):
        if not _DNS_NAME.fullmatch(host):
            raise ValueError(
                "expected a public DNS name (HTTPS) or localhost[:port] / 127.0.0.1[:port] "
                f'(plain HTTP), got "{host}"'
            )
        return None
    match = _LOCAL_HOST.fullmatch(host)
    if match is None or int(match["port"] or 0) > 65535:
        raise ValueError(f'expected localhost[:port] or 127.0.0.1[:port], got "{host}"')
    return "127.0.0.1", int(match["port"] or DEFAULT_LOCAL_HTTP_PORT)


def trusted_proxy(value: str) -> TrustedProxy:
    """A ``--trusted-proxy`` value: a network in CIDR notation (IPv4 or IPv6), a bare address
    (one host: /32 or /128), or ``unix`` (connections to a ``--listen unix:...`` socket).

    A network with host bits set (``10.0.0.1/8``) is refused rather than guessed at: did it
    mean the network or the host? Raises ValueError with the reason.
    """
    if value == "unix":
        return "unix"
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f'expected a network (CIDR), an IP address or unix, got "{value}"'
                         ) from None
    if ipaddress.ip_interface(value).ip != network.network_address:
        raise ValueError(f'"{value}" has host bits set: the network is {network}')
    return network


class MXProxyOptions(usage.Options):
    """``twistd mxproxy``: the flags of the original Go binary, plus ``--demo``.

    After parsing, ``self["local_http"]`` holds the ``(interface, port)`` to serve plain HTTP on,
    or None when ``--host`` is a public name (HTTPS); ``self["listen"]`` the endpoints given with
    ``--listen`` (they replace what ``--host`` would listen on); ``self["trusted-proxy"]`` the
    :data:`TrustedProxy` values given with ``--trusted-proxy``.
    """

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["trusted-proxy"] = []

    def _local_http(self) -> tuple[str, int] | None:
        """Where plain HTTP is served for ``--host`` (None: HTTPS for a public name, or only
        the ``--listen`` endpoints). There is no default name: the original's defaulted to the
        author's domain, for which a daemon started without --host ordered certificates."""
        host = self["host"]
        if host is None:
            if self["demo"]:
                return "127.0.0.1", DEFAULT_LOCAL_HTTP_PORT
            if not self["listen"] and not self["check-config"]:
                raise usage.UsageError(
                    "say where to serve the API: --host <public name> (HTTPS, Let's Encrypt), "
                    "--host localhost[:port] (plain HTTP on loopback) or --listen <endpoint> "
                    "(behind a reverse proxy)")
            return None
        try:
            local = local_http_address(host)
        except ValueError as error:
            raise usage.UsageError(f"--host: {error}") from None
        if self["demo"] and local is None:
            raise usage.UsageError("--demo serves plain HTTP: use --host localhost[:port]")
        return local

    def opt_version(self) -> None:
        """Print mxproxy's version and exit (twistd's own --version prints Twisted's)."""
        print(f"mxproxy {__version__}")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """Serve the API as plain HTTP on this Twisted endpoint (e.g.
        tcp:8080:interface=127.0.0.1) behind a reverse proxy; repeatable."""
        self["listen"].append(endpoint)

    def opt_trusted_proxy(self, network: str) -> None:
        """A reverse proxy (CIDR network, IP address, or unix for a Unix socket) whose
        X-Forwarded-For names the client; repeatable."""
        try:
            self["trusted-proxy"].append(trusted_proxy(network))
        except ValueError as error:
            raise usage.UsageError(f"--trusted-proxy: {error}") from None

    optParameters = [
        ["config", None, "mxproxy.json", "JSON configuration file: MX servers, push credentials."],
        ["db", None, "mxproxy.db", "Where the registered device tokens are: an SQLite file, or "
         "a postgresql://user:password@host:port/dbname URL (libpq's; PG* environment variables"
         " fill in what it leaves out) for several instances sharing one database."],
        [
            "host",
            None,
            None,
            "Public server name (HTTPS); localhost[:port] or 127.0.0.1[:port] serves plain HTTP "
            f"(port {DEFAULT_LOCAL_HTTP_PORT} if omitted). Required unless --listen or --demo.",
        ],
        [
            "logflag",
            None,
            64,
            "Integer accepted for compatibility with the Go binary's log flags; has no effect.",
        ],
        ["https-listen", None, "tcp:443", "Endpoint of HTTPS for a public --host."],
        [
            "http-listen",
            None,
            "tcp:80",
            "Endpoint of plain HTTP for a public --host: ACME HTTP-01 challenges and a redirect "
            "to HTTPS.",
        ],
        ["tls-cert", None, None, "PEM certificate chain to serve instead of an ACME one."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "acme-dir",
            None,
            None,
            "Directory of the ACME account key and certificates (default: acme/ beside an SQLite "
            "--db, else in the working directory).",
        ],
        [
            "acme-directory",
            None,
            "production",
            "ACME directory URL; 'production' or 'staging' name Let's Encrypt's.",
        ],
        ["acme-email", None, None, "Contact address registered with the ACME account."],
        [
            "admin-listen",
            None,
            DEFAULT_ADMIN_LISTEN,
            "Endpoint of /healthz and /metrics (keep it private); 'none' disables it.",
        ],
        [
            "session-idle",
            None,
            60.0,
            "Seconds a user's MX session is kept without requests before it is logged out.",
            float,
        ],
        [
            "max-connections-per-address",
            None,
            CONNECTIONS_PER_ADDRESS,
            "Open HTTP connections one client address may have (trusted proxies: any); "
            "0: no cap.",
            int,
        ],
    ]
    optFlags = [
        ["check-config", None, "Check --config and every file it names, print the problems "
                               "(one line each) and exit 0 or 1; nothing listens or connects."],
        ["debug", None, "Log extra debugging information."],
        ["json-logs", None, "Log one JSON object per line instead of text."],
        ["csta", None, "Print the raw CSTA traffic both ways to stdout, passwords redacted."],
        [
            "demo",
            None,
            "Run the MX simulator in-process with a demo company and serve plain HTTP on "
            f"localhost:{DEFAULT_LOCAL_HTTP_PORT} (or a local --host); no config file needed.",
        ],
    ]

    def postOptions(self) -> None:
        logflag = str(self["logflag"])
        if not _INTEGER.fullmatch(logflag):
            raise usage.UsageError(f'--logflag: expected an integer, got "{logflag}"')
        self["logflag"] = int(logflag)
        if not self["session-idle"] > 0:
            raise usage.UsageError("--session-idle: expected a positive number of seconds")
        if self["max-connections-per-address"] < 0:
            raise usage.UsageError("--max-connections-per-address: expected 0 (no cap) or more")
        from mxproxy.store.location import check as check_db  # only once options are given

        problem = check_db(self["db"])
        if problem is not None:
            raise usage.UsageError(problem)
        self["local_http"] = self._local_http()
        if (self["tls-cert"] is None) != (self["tls-key"] is None):
            raise usage.UsageError("--tls-cert and --tls-key go together")
        if self["tls-cert"] is not None and (self["host"] is None or self["local_http"]):
            raise usage.UsageError("--tls-cert serves HTTPS for a public --host: give one")
        directory = self["acme-directory"]
        self["acme-directory"] = ACME_DIRECTORIES.get(directory, directory)
        if not self["acme-directory"].startswith(("https://", "http://")):
            raise usage.UsageError(
                f'--acme-directory: expected a URL, "production" or "staging", got "{directory}"')
        if self["admin-listen"] == "none":
            self["admin-listen"] = None
        if self["json-logs"] and self.parent is not None and self.parent.get("logger") is None:
            # twistd builds its log observer from its own --logger before any service exists
            self.parent["logger"] = JSON_LOG_OBSERVER


class MXSimOptions(usage.Options):
    """``twistd mxsim``: a simulated MX speaking the real wire protocol, for demos and tests."""

    optParameters = [
        ["port", None, 7778, "TCP port the simulated MX listens on."],
        ["control-port", None, 0, "Port of the loopback-only control HTTP API (0: none)."],
        ["interface", None, "127.0.0.1", "IP address the simulated MX listens on."],
    ]
    optFlags = [
        ["tls", None, "Speak TLS on --port, as a real MX does on 7778, instead of plain TCP."],
        ["demo", None, "Seed the demo company: users, address book, call log, voicemail."],
    ]

    def postOptions(self) -> None:
        for name in ("port", "control-port"):
            text = str(self[name])
            if not _PORT.fullmatch(text) or int(text) > 65535:
                raise usage.UsageError(f'--{name}: expected a port number 0..65535, got "{text}"')
            self[name] = int(text)
        try:
            ipaddress.ip_address(self["interface"])
        except ValueError:
            raise usage.UsageError(
                f'--interface: expected an IP address, got "{self["interface"]}"'
            ) from None
