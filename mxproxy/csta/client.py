"""Opening an MX link: TLS or TCP transport, certificate pinning, and the login exchange.

MX units ship self-signed certificates, so by default the link is encrypted but the peer is not
verified (as every client of the original did). Pinning the certificate's SHA-256 fingerprint, or
naming a CA file, closes that hole; with either, a mismatch refuses the connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sys
from typing import IO, Any

import attrs
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TCPTimedOutError,
    TimeoutError,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Factory
from zope.interface import implementer

from mxproxy.csta import commands, xml
from mxproxy.csta.errors import (
    CertificateRefused,
    LoggedOut,
    LoginError,
    MXTimeout,
    MXUnavailable,
    ProtocolViolation,
    Unreachable,
    WrongTransport,
)
from mxproxy.csta.messages import LoginFailure, LoginResponse
from mxproxy.csta.protocol import DEFAULT_REPLY_TIMEOUT, CSTAProtocol, RoundTrip, Trace
from mxproxy.logs import Logger

log = Logger(__name__)

CONNECT_TIMEOUT = 20.0
LOGIN_TIMEOUT = 7.0
CLEAR_TEXT_CODES = frozenset({2, 4})
CERTIFICATE_VERIFY_FAILED = "certificate verify failed"
"""OpenSSL's reason when the peer's certificate was refused (pin or CA), as opposed to a peer
that speaks no TLS; the only trace of it in the reason a link ends with."""


@attrs.frozen
class MXAddress:
    """Where an MX listens and how to trust it."""

    host: str
    port: int = 7778
    tls: bool = True
    fingerprint: bytes | None = None
    """SHA-256 of the expected server certificate (DER)."""
    ca: str | None = None
    """PEM file of CAs that must have issued the server certificate (host name checked too)."""


# -- transport ---------------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class PinnedCertificate:
    """Accepts exactly the server certificate whose SHA-256 digest is ``fingerprint``."""

    def __init__(self, fingerprint: bytes) -> None:
        self._fingerprint = fingerprint
        self._context = ssl.CertificateOptions().getContext()
        self._context.set_verify(SSL.VERIFY_PEER, self._verify)

    def _verify(self, connection: SSL.Connection, certificate: crypto.X509, errno: int,
                depth: int, ok: int) -> bool:
        if depth != 0:
            return True  # only the leaf is pinned; who signed it does not matter
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
        if hashlib.sha256(der).digest() == self._fingerprint:
            return True
        log.error("MX certificate fingerprint {seen} does not match the pinned one",
                  seen=hashlib.sha256(der).hexdigest())
        return False

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


def tls_creator(address: MXAddress) -> IOpenSSLClientConnectionCreator:
    """The TLS client policy for ``address``: pinned, CA-verified, or encrypted-only."""
    if address.fingerprint is not None:
        return PinnedCertificate(address.fingerprint)
    if address.ca is not None:
        with open(address.ca, "rb") as pem:
            roots = ssl.trustRootFromCertificates(
                [ssl.Certificate(cert) for cert in _load_pem_chain(pem.read())])
        return ssl.optionsForClientTLS(address.host, trustRoot=roots)
    return ssl.CertificateOptions(verify=False)


def _load_pem_chain(data: bytes) -> list[crypto.X509]:
    marker = b"-----END CERTIFICATE-----"
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block + marker)
            for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]


class CSTAFactory(Factory):
    """Builds one CSTAProtocol per connection with the shared clock, trace and round-trip
    observer."""

    noisy = False  # one per reconnect; MXServer logs what matters

    def __init__(self, clock: IReactorTime, trace: Trace | None = None,
                 reply_timeout: float = DEFAULT_REPLY_TIMEOUT,
                 on_round_trip: RoundTrip | None = None) -> None:
        self.clock = clock
        self.trace = trace
        self.reply_timeout = reply_timeout
        self.on_round_trip = on_round_trip

    def buildProtocol(self, addr: Any) -> CSTAProtocol:
        protocol = CSTAProtocol(self.clock, reply_timeout=self.reply_timeout, trace=self.trace,
                                on_round_trip=self.on_round_trip)
        protocol.factory = self
        return protocol


def endpoint(reactor: Any, address: MXAddress, timeout: float = CONNECT_TIMEOUT) -> Any:
    """The client endpoint for ``address``: TCP, wrapped in TLS unless disabled."""
    tcp = HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    return wrapClientTLS(tls_creator(address), tcp) if address.tls else tcp


_UNREACHABLE: tuple[tuple[tuple[type[Exception], ...], str, str], ...] = (
    ((ConnectionRefusedError,), "connection refused",
     "check that the MX is up and the port is right"),
    ((DNSLookupError,), "the name does not resolve", "check the host name and the DNS"),
    ((TimeoutError, TCPTimedOutError), f"no answer within {CONNECT_TIMEOUT:g} s",
     "check that the host is up and reachable (address, route, firewall)"),
    ((NoRouteError,), "no route to the host", "check the address and the network"),
)
"""(errors, what happened, what to check) for the usual reasons a connection fails."""


async def connect(reactor: Any, address: MXAddress, factory: CSTAFactory) -> CSTAProtocol:
    """Open the link (no login yet); a network failure becomes ``Unreachable``, and a caller's
    cancelling stays a cancellation (not an MX failure to report)."""
    try:
        protocol: CSTAProtocol = await endpoint(reactor, address).connect(factory)
    except ConnectingCancelledError:
        raise CancelledError("connecting to the MX was cancelled") from None
    except Exception as error:
        raise _unreachable(address, error) from None
    return protocol


def _unreachable(address: MXAddress, error: Exception) -> Unreachable:
    what, hint = next(((what, hint) for errors, what, hint in _UNREACHABLE
                       if isinstance(error, errors)),
                      (str(error), "check that the host is reachable"))
    return Unreachable(f"cannot connect to {_where(address)}: {what}", hint)


def _where(address: MXAddress) -> str:
    return f"[{address.host}]:{address.port}" if ":" in address.host else \
        f"{address.host}:{address.port}"


def _first_exchange_failed(address: MXAddress, protocol: CSTAProtocol,
                           error: BaseException) -> BaseException:
    """What a failure before the login's answer says about the address: a TLS link whose
    handshake never completed met a plain-TCP port (unless it refused the certificate); a plain
    link closed unanswered met a TLS port (a TLS server closes on bytes that are no TLS record,
    sending at most a 7-byte alert: less than a frame header). Others are returned unchanged."""
    where = _where(address)
    if address.tls and not protocol.secured and isinstance(error, (MXUnavailable, MXTimeout)):
        if CERTIFICATE_VERIFY_FAILED in str(error):
            return CertificateRefused(f"{where} presented a certificate that is refused ({error})",
                                      'check "fingerprint" or "ca": the MX certificate may have '
                                      "changed")
        return WrongTransport(f"{where} did not complete a TLS handshake ({error})",
                              'if it is a plain-TCP port set "tls": false (a plain-TCP MX '
                              "listens on 7777), else check the port")
    if not address.tls and isinstance(error, MXUnavailable) and not isinstance(error, LoggedOut):
        return WrongTransport(f"{where} closed the connection without answering the login "
                              f"({error})", 'if it is the MX\'s TLS port (7778) set "tls": '
                              "true, else check the port")
    return error


# -- login -------------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    """The ``pwd`` the MX expects: base64(SHA-1(password)) + LF.

    A password that already is such a hash (28 base64 characters decoding to 20 bytes, ending
    in LF) is sent unchanged, as the original clients did, so configs may store the hash.
    """
    if password.endswith("\n"):
        try:
            if len(base64.b64decode(password[:-1], validate=True)) == 20:
                return password
        except (binascii.Error, ValueError):
            pass
    digest = hashlib.sha1(password.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii") + "\n"


USER_LOGIN_ATTRS = {"platform": "iPhone", "version": "7.0", "loginCapab": "Audio",
                    "mediaCapab": "Voicemail|CallRec"}
"""What mxproxy announces for user logins: the original's iPhone client profile."""


async def login(protocol: CSTAProtocol, user: str, password: str, *, kind: str = "User",
                clear_text_retry: bool = False, timeout: float = LOGIN_TIMEOUT) -> LoginResponse:
    """Log in on a fresh link; ``loginFailed`` raises ``LoginError``.

    The clear-text retry (MX answers Code 2 or 4 with apiversion > 2, "LDAP users") hands the
    password to whoever answered, which may be a man in the middle: only when enabled.
    """
    hashed = hash_password(password)
    try:
        return await _login_once(protocol, user, hashed, kind, timeout)
    except LoginError as error:
        if not (clear_text_retry and error.apiversion > 2 and error.code in CLEAR_TEXT_CODES
                and hashed != password):
            raise
        log.info("MX asked for a clear-text login for {user} (code {code}); retrying once",
                 user=user, code=error.code)
    return await _login_once(protocol, user, password, kind, timeout)


async def _login_once(protocol: CSTAProtocol, user: str, pwd: str, kind: str,
                      timeout: float) -> LoginResponse:
    attributes = USER_LOGIN_ATTRS if kind == "User" else {}
    try:
        reply = await protocol.request(commands.login_request(user, pwd, kind, **attributes),
                                       timeout=timeout)
    except MXTimeout:
        raise MXTimeout(f"no login reply within {timeout:g} s") from None
    if reply.name == "loginResponce":
        return LoginResponse.from_xml(reply.element)
    if reply.name == "loginFailed":
        failure = LoginFailure.from_xml(reply.element)
        raise LoginError(failure.code, failure.text, failure.apiversion)
    raise ProtocolViolation(f"unexpected reply {reply.name!r} to loginRequest")


async def open_session(reactor: Any, address: MXAddress, factory: CSTAFactory, user: str,
                       password: str, *, kind: str = "User",
                       clear_text_retry: bool = False) -> tuple[CSTAProtocol, LoginResponse]:
    """Connect and log in; the link is cut again if the login fails. A failure before the MX
    answered the login says what it likely means (``WrongTransport``, ``CertificateRefused``)."""
    protocol = await connect(reactor, address, factory)
    try:
        info = await login(protocol, user, password, kind=kind,
                           clear_text_retry=clear_text_retry)
    except BaseException as error:
        # Not only the MX's refusals: a login lxml cannot put in XML (ValueError), one too
        # large for a frame, the caller cancelling. Any link left open here is a descriptor
        # lost for good: nothing else holds it. Cut, not closed: over TLS a polite close waits
        # for the peer's goodbye, which a hung MX (or one that speaks no TLS) never sends.
        protocol.abort(MXUnavailable("the login failed"))
        explained = _first_exchange_failed(address, protocol, error)
        if explained is error:
            raise
        raise explained from None
    return protocol, info


# -- tracing -----------------------------------------------------------------------------------


def stdout_trace(label: str, out: IO[str] | None = None) -> Trace:
    """The ``--csta`` sink: every frame both ways on the process's real stdout (twistd turns
    ``sys.stdout`` into log events), passwords and audio redacted."""

    def trace(direction: str, invoke_id: int, body: bytes) -> None:
        stream = out or sys.__stdout__
        if stream is None:
            return
        text = xml.redact(body).decode("utf-8", "replace")
        stream.write(f"{label} {direction} {invoke_id:04d} {text}\n")
        stream.flush()

    return trace


def log_trace(label: str) -> Trace:
    """The ``--csta`` sink when the log is JSON lines: every frame as a log event (so stdout
    stays one JSON object per line), redacted as on stdout."""
    logger = Logger(namespace=f"csta.{label}")

    def trace(direction: str, invoke_id: int, body: bytes) -> None:
        logger.info("{label} {direction} {invoke_id:04d} {frame}", label=label,
                    direction=direction, invoke_id=invoke_id,
                    frame=xml.redact(body).decode("utf-8", "replace"))

    return trace
