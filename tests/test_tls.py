"""Serving TLS: certificate installs and swaps, refusal before the first one, the protocol floor,
PEM file errors, and the port-80 redirect and challenge responder, over real loopback sockets."""

from __future__ import annotations

import datetime
import os
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from mxproxy.testing import certs
from mxproxy.tls import (
    RedirectToHTTPS,
    ServingCertificate,
    TLSConfigError,
    https_factory,
    load_pem_files,
)

reactor: Any = _reactor  # the global reactor, typed loosely: it provides IReactorTCP
NAME = "mxproxy.test"
CA = certs.certificate_authority("mxproxy tls test CA")
FIRST = CA.issue([NAME])
SECOND = CA.issue([NAME, "www." + NAME])  # another name set: another key and serial


def chain(key: certs.CertifiedKey) -> bytes:
    return key.cert_pem + b"".join(key.chain_pem)


def listen(test: TestCase, factory: Any) -> int:
    """Listen on an ephemeral loopback port until the test ends; return the port number."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return cast(int, port.getHost().port)


def serve_https(test: TestCase, certificate: ServingCertificate) -> int:
    root = Resource()
    root.putChild(b"", Data(b"hello\n", "text/plain"))
    return listen(test, https_factory(Site(root), certificate))


def trusting(root_pem: bytes, hostname: str = NAME) -> IOpenSSLClientConnectionCreator:
    """A client that verifies the server's chain up to ``root_pem`` and its name."""
    return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(root_pem))


def trusting_agent(root_pem: bytes, hostname: str = NAME) -> Agent:
    """An HTTP client that expects ``hostname``'s certificate from ``root_pem``'s CA, whatever
    address the URL names (so loopback URLs can stand for a DNS name)."""

    @implementer(IPolicyForHTTPS)
    class Trust:
        def creatorForNetloc(self, host: bytes, port: int) -> IOpenSSLClientConnectionCreator:
            return trusting(root_pem, hostname)

    return Agent(reactor, contextFactory=Trust())


@implementer(IHandshakeListener)
class _Handshake(Protocol):
    """Completes a handshake, records the peer's chain and hangs up."""

    def __init__(self) -> None:
        self.done: Deferred[list[x509.Certificate]] = Deferred()
        self.peer_chain: list[x509.Certificate] | None = None

    def handshakeCompleted(self) -> None:
        transport = cast(TLSMemoryBIOProtocol, self.transport)
        self.peer_chain = [cert.to_cryptography()
                           for cert in transport.getHandle().get_peer_cert_chain()]
        transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.peer_chain is None:
            self.done.errback(reason)
        else:
            self.done.callback(self.peer_chain)


def handshake(port: int,
              client: IOpenSSLClientConnectionCreator) -> Deferred[list[x509.Certificate]]:
    """The chain a TLS server on loopback ``port`` presents; fails as the handshake fails."""
    endpoint = wrapClientTLS(client, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    protocol = _Handshake()
    return connectProtocol(endpoint, protocol).addCallback(lambda _: protocol.done)


@implementer(IOpenSSLClientConnectionCreator)
class _OnlyVersion:
    """A client speaking exactly one TLS version, even one OpenSSL disables by default."""

    def __init__(self, version: int) -> None:
        self.version = version

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(self.version)
        context.set_max_proto_version(self.version)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # else TLS 1.1 is never even offered
        return SSL.Connection(context, None)


def capture_logs(test: TestCase, namespace: str) -> list[str]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith(namespace):
            lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class ServingCertificateTests(TestCase):
    def test_is_a_server_connection_creator(self) -> None:
        self.assertTrue(IOpenSSLServerConnectionCreator.providedBy(ServingCertificate(NAME)))

    async def test_serves_the_installed_chain_to_a_verifying_client(self) -> None:
        certificate = ServingCertificate(NAME)
        certificate.install(chain(FIRST), FIRST.key_pem)
        port = serve_https(self, certificate)
        served = await handshake(port, trusting(CA.cert_pem))
        self.assertEqual(served, [FIRST.certificate, x509.load_pem_x509_certificate(CA.cert_pem)])
        self.assertEqual(certificate.not_after, FIRST.certificate.not_valid_after_utc)

    async def test_serves_http_through_https_factory(self) -> None:
        certificate = ServingCertificate(NAME)
        certificate.install(chain(FIRST), FIRST.key_pem)
        port = serve_https(self, certificate)

        response = await trusting_agent(CA.cert_pem).request(
            b"GET", f"https://127.0.0.1:{port}/".encode())
        self.assertEqual(await readBody(response), b"hello\n")

    async def test_a_new_certificate_is_served_to_new_connections(self) -> None:
        certificate = ServingCertificate(NAME)
        certificate.install(chain(FIRST), FIRST.key_pem)
        port = serve_https(self, certificate)
        first = await handshake(port, trusting(CA.cert_pem))
        certificate.install(chain(SECOND), SECOND.key_pem)
        second = await handshake(port, trusting(CA.cert_pem))
        self.assertEqual(first[0], FIRST.certificate)
        self.assertEqual(second[0], SECOND.certificate)
        self.assertNotEqual(first[0].serial_number, second[0].serial_number)

    async def test_refuses_tls_before_any_install_and_says_why_once_a_minute(self) -> None:
        lines = capture_logs(self, "mxproxy.tls")
        clock = Clock()
        certificate = ServingCertificate(NAME, clock=clock)
        port = serve_https(self, certificate)
        for _ in range(3):
            error = await self.assertFailure(handshake(port, trusting(CA.cert_pem)), SSL.Error)
            self.assertIn("alert handshake failure", str(error))
        self.assertEqual(lines, [f"https: no certificate for {NAME} yet: refusing TLS until "
                                 "ACME issues one"])
        self.assertIsNone(certificate.not_after)
        clock.advance(60)
        await self.assertFailure(handshake(port, trusting(CA.cert_pem)), SSL.Error)
        self.assertEqual(lines[1:], [f"https: TLS refused for {NAME}: 2 more suppressed in 60 s",
                                     lines[0]])

    async def test_tls_1_1_is_refused_and_1_2_accepted(self) -> None:
        certificate = ServingCertificate(NAME)
        certificate.install(chain(FIRST), FIRST.key_pem)
        port = serve_https(self, certificate)
        error = await self.assertFailure(handshake(port, _OnlyVersion(SSL.TLS1_1_VERSION)),
                                         SSL.Error)
        self.assertIn("protocol version", str(error))
        served = await handshake(port, _OnlyVersion(SSL.TLS1_2_VERSION))
        self.assertEqual(served[0], FIRST.certificate)

    def test_install_rejects_a_key_of_another_certificate(self) -> None:
        certificate = ServingCertificate(NAME)
        certificate.install(chain(FIRST), FIRST.key_pem)
        error = self.assertRaises(TLSConfigError, certificate.install, chain(SECOND),
                                  FIRST.key_pem)
        self.assertEqual(str(error), "the private key does not match the certificate "
                                     "(the first one in the certificate chain)")
        self.assertEqual(certificate.not_after, FIRST.certificate.not_valid_after_utc)

    def test_install_rejects_a_key_openssl_finds_too_weak(self) -> None:
        key = rsa.generate_private_key(65537, 1024)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
        now = datetime.datetime.now(datetime.UTC)
        weak = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        certificate = ServingCertificate(NAME)
        try:
            certificate.install(weak.public_bytes(serialization.Encoding.PEM), key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        except TLSConfigError as error:
            self.assertIn("OpenSSL refuses the certificate or key", str(error))
            self.assertIsNone(certificate.not_after)
        else:
            raise SkipTest("this OpenSSL's security level (below Debian's 2) accepts RSA-1024")

    def test_install_rejects_what_is_not_pem(self) -> None:
        certificate = ServingCertificate(NAME)
        self.assertRaises(TLSConfigError, certificate.install, b"junk", FIRST.key_pem)
        self.assertRaises(TLSConfigError, certificate.install, chain(FIRST), b"junk")
        self.assertIsNone(certificate.not_after)


class LoadPEMFilesTests(TestCase):
    def write(self, name: str, content: bytes) -> str:
        directory = self.mktemp()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "wb") as file:
            file.write(content)
        return path

    def test_returns_the_chain_and_the_key(self) -> None:
        cert_path = self.write("cert.pem", chain(FIRST))
        key_path = self.write("key.pem", FIRST.key_pem)
        self.assertEqual(load_pem_files(cert_path, key_path), (chain(FIRST), FIRST.key_pem))

    def test_each_error_names_the_file(self) -> None:
        cert_path = self.write("cert.pem", chain(FIRST))
        key_path = self.write("key.pem", FIRST.key_pem)
        other_key = self.write("other.pem", SECOND.key_pem)
        missing = os.path.join(os.path.dirname(key_path), "missing.pem")
        cases = {
            (missing, key_path): f"{missing}: No such file or directory",
            (cert_path, os.path.dirname(key_path)):
                f"{os.path.dirname(key_path)}: Is a directory",
            (key_path, key_path): f"{key_path}: no PEM certificate found",
            (cert_path, cert_path): f"{cert_path}: not an unencrypted PEM private key",
            (cert_path, other_key):
                f"{other_key} does not match the certificate (the first one in {cert_path})",
        }
        for (cert, key), message in cases.items():
            error = self.assertRaises(TLSConfigError, load_pem_files, cert, key)
            self.assertEqual(str(error), message)
            self.assertNotIn("PRIVATE KEY", str(error))


class RedirectToHTTPSTests(TestCase):
    def setUp(self) -> None:
        self.challenges = {"tok-EN_1": b"tok-EN_1.thumbprint"}
        site = Site(RedirectToHTTPS(NAME, self.challenges))
        self.base = f"http://127.0.0.1:{listen(self, site)}"
        self.agent = Agent(reactor)

    async def get(self, path: str, method: bytes = b"GET",
                  host: bytes | None = None) -> tuple[int, Headers, bytes]:
        headers = Headers({b"host": [host]}) if host else None
        response = await self.agent.request(method, (self.base + path).encode(), headers)
        return response.code, response.headers, await readBody(response)

    async def test_redirects_to_the_configured_host_with_path_and_query(self) -> None:
        code, headers, _ = await self.get("/mx/demo/calllog?since=5&x=%20", host=b"evil.example")
        self.assertEqual(code, 301)
        self.assertEqual(headers.getRawHeaders(b"location"),
                         [f"https://{NAME}/mx/demo/calllog?since=5&x=%20".encode()])
        code, headers, _ = await self.get("")
        self.assertEqual(headers.getRawHeaders(b"location"), [f"https://{NAME}/".encode()])

    async def test_answers_a_known_challenge_with_its_key_authorization(self) -> None:
        code, headers, body = await self.get("/.well-known/acme-challenge/tok-EN_1")
        self.assertEqual((code, body), (200, b"tok-EN_1.thumbprint"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])

    async def test_unknown_or_removed_challenges_are_404(self) -> None:
        code, _, _ = await self.get("/.well-known/acme-challenge/other")
        self.assertEqual(code, 404)
        self.challenges.clear()
        code, _, _ = await self.get("/.well-known/acme-challenge/tok-EN_1")
        self.assertEqual(code, 404)

    async def test_other_methods_are_not_allowed(self) -> None:
        code, headers, _ = await self.get("/mx/demo/token/apns/x", method=b"POST")
        self.assertEqual(code, 405)
        [allow] = headers.getRawHeaders(b"allow", [])
        self.assertEqual(set(allow.split(b", ")), {b"GET", b"HEAD"})
        code, headers, body = await self.get("/x", method=b"HEAD")
        self.assertEqual((code, body), (301, b""))

