"""Serving HTTPS: the certificate new connections get, and the plain-HTTP port beside it.

ACME renews the certificate while the daemon runs, so the TLS listener must not capture one
OpenSSL context at start: :class:`ServingCertificate` builds a context per installed certificate
and each new connection takes the newest. Port 80 only answers ACME HTTP-01 challenges and
sends everything else to HTTPS (:class:`RedirectToHTTPS`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from mxproxy.logs import Logger, RateLimitedLog

CHALLENGE_PATH = b"/.well-known/acme-challenge/"
"""Where an ACME server fetches an HTTP-01 key authorization (RFC 8555 §8.3)."""
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""Forward secrecy and AEAD only; TLS 1.3 suites are all modern and keep OpenSSL's defaults."""
"""Seconds between two "no certificate yet" lines, so a scanner cannot flood the log."""


class TLSConfigError(ValueError):
    """A certificate or key that cannot be served; the message says which one and why."""


@implementer(IOpenSSLServerConnectionCreator)
class ServingCertificate:
    """The certificate HTTPS presents for ``name``; :meth:`install` replaces it for new connections.

    Before the first install there is nothing to present: handshakes fail at once with a TLS
    alert (no hang, no traceback) and the log says why, at most once a minute.
    """

    log = Logger()

    def __init__(self, name: str, clock: IReactorTime | None = None) -> None:
        from twisted.internet import reactor

        self.name = name
        self._clock: IReactorTime = reactor if clock is None else clock
        self._options: ssl.CertificateOptions | None = None
        self._without_certificate = _options()  # handshakes fail: no certificate to offer
        self._not_after: datetime.datetime | None = None
        self._refusals = RateLimitedLog(self.log, self._clock, f"https: TLS refused for {name}")

    @property
    def not_after(self) -> datetime.datetime | None:
        """Expiry (UTC) of the certificate being served, None before the first install."""
        return self._not_after

    def install(self, chain_pem: bytes, key_pem: bytes) -> None:
        """Serve this chain (leaf first) and key to every connection from now on.

        Raises TLSConfigError, leaving the current certificate in place, if they do not fit.
        """
        chain, key = _parse(chain_pem, key_pem, "the certificate chain", "the private key")
        options = _options(chain, key)
        try:
            options.getContext()  # fail here, not on each connection (e.g. a too-weak key)
        except SSL.Error as error:
            raise TLSConfigError(f"OpenSSL refuses the certificate or key: {error}") from None
        self._options = options
        self._not_after = chain[0].not_valid_after_utc

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A connection with the newest certificate (IOpenSSLServerConnectionCreator)."""
        if self._options is None:
            self._refusals.emit("https: no certificate for {name} yet: refusing TLS until "
                                "ACME issues one", name=self.name)
            return self._without_certificate.serverConnectionForTLS(tlsProtocol)
        return self._options.serverConnectionForTLS(tlsProtocol)


def load_pem_files(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """Read a PEM chain (leaf first) and its private key, as given with --tls-cert/--tls-key.

    Raises TLSConfigError naming the file at fault, so a bad path fails the start in one line.
    """
    chain_pem, key_pem = _read(cert_path), _read(key_path)
    _parse(chain_pem, key_pem, cert_path, key_path)
    return chain_pem, key_pem


class RedirectToHTTPS(Resource):
    """Plain HTTP: ACME HTTP-01 answers from ``challenges`` and a 301 to HTTPS for the rest.

    ``challenges`` (token → key authorization) is shared with the ACME client, which fills and
    empties it. The redirect goes to the configured ``host``, never to the request's Host
    header, so this port cannot serve as an open redirect. Only GET and HEAD are answered; other
    methods get 405 (twisted.web's default), because a 301 would turn a POST into a GET and
    silently drop its body.
    """

    isLeaf = True

    def __init__(self, host: str, challenges: Mapping[str, bytes] | None = None) -> None:
        super().__init__()
        self._host = host.encode("ascii")
        self._challenges: Mapping[str, bytes] = {} if challenges is None else challenges

    def render_GET(self, request: Request) -> bytes:
        # urlsplit also copes with an absolute-form target ("GET http://other/x HTTP/1.1").
        target = urlsplit(request.uri)
        path = target.path if target.path.startswith(b"/") else b"/" + target.path
        if path.startswith(CHALLENGE_PATH):
            return self._challenge(request, path[len(CHALLENGE_PATH):])
        location = b"https://" + self._host + path + (b"?" + target.query if target.query else b"")
        request.setResponseCode(301)
        request.setHeader(b"location", location)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + location + b"\n"

    def _challenge(self, request: Request, token: bytes) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        answer = self._challenges.get(token.decode("ascii", "replace"))
        if answer is None:
            request.setResponseCode(404)
            return b"no such ACME challenge\n"
        return answer


def https_factory(site_factory: IProtocolFactory,
                  certificate: ServingCertificate) -> IProtocolFactory:
    """Wrap an HTTP factory in server-side TLS with the certificate's newest context."""
    return TLSMemoryBIOFactory(certificate, False, site_factory)


def _options(chain: Sequence[x509.Certificate] = (),
             key: PrivateKeyTypes | None = None) -> ssl.CertificateOptions:
    """Server options: TLS ≥ 1.2, modern ciphers, the full chain; none given, no certificate."""
    return ssl.CertificateOptions(
        privateKey=None if key is None else crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(chain[0]) if chain else None,
        extraCertChain=[crypto.X509.from_cryptography(cert) for cert in chain[1:]] or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(_TLS12_CIPHERS),
    )


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSConfigError(f"{path}: {error.strerror or error}") from None


def _parse(chain_pem: bytes, key_pem: bytes, chain_source: str,
           key_source: str) -> tuple[list[x509.Certificate], PrivateKeyTypes]:
    """The chain and key, checked to belong together; the sources name them in errors."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSConfigError(f"{chain_source}: no PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # TypeError: a password-protected key
        raise TLSConfigError(f"{key_source}: not an unencrypted PEM private key") from None
    if _public_der(key) != chain[0].public_key().public_bytes(*_SPKI):
        raise TLSConfigError(
            f"{key_source} does not match the certificate (the first one in {chain_source})")
    return chain, key


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_der(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(*_SPKI)
