"""Throw-away certificates: names, fingerprints, caching, and real TLS handshakes on loopback."""

from __future__ import annotations

import ipaddress
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mxproxy.testing import certs

reactor: Any = _reactor  # the global reactor, typed loosely: it provides IReactorSSL


def alt_names(key: certs.CertifiedKey) -> set[str]:
    extension = key.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ({str(name) for name in extension.value.get_values_for_type(x509.DNSName)}
            | {str(ip) for ip in extension.value.get_values_for_type(x509.IPAddress)})


class Echo(Protocol):
    """Echoes; ``lost`` fires when its connection is gone, so tests leave a clean reactor."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class Probe(Protocol):
    """Sends one line once connected; ``done`` gets the echo, or the failure that ended it."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred()
        self.echo = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"ping")

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.echo += data
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.echo:
            self.done.callback(self.echo)
        else:
            self.done.errback(reason)


class CertificateTests(TestCase):
    def test_self_signed_names_fingerprint_and_cache(self) -> None:
        key = certs.self_signed(["sim.example.invalid", "127.0.0.2"])
        self.assertEqual(alt_names(key), {"sim.example.invalid", "127.0.0.2"})
        self.assertEqual(key.certificate.issuer, key.certificate.subject)
        self.assertEqual(key.fingerprint, key.certificate.fingerprint(hashes.SHA256()))
        self.assertEqual(len(key.fingerprint), 32)
        self.assertIs(certs.self_signed(["sim.example.invalid", "127.0.0.2"]), key)
        self.assertIsNot(certs.self_signed(["other.example.invalid"]), key)
        self.assertIn(b"PRIVATE KEY", key.key_pem)

    def test_authority_issues_leaves_it_signed(self) -> None:
        authority = certs.certificate_authority("unit CA")
        leaf = authority.issue(["mx.example.invalid", "::1"])
        ca_cert = x509.load_pem_x509_certificate(authority.cert_pem)
        public_key = ca_cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(leaf.certificate.signature, leaf.certificate.tbs_certificate_bytes,
                          ec.ECDSA(hashes.SHA256()))
        self.assertEqual(leaf.certificate.issuer, ca_cert.subject)
        self.assertEqual(alt_names(leaf), {"mx.example.invalid", str(ipaddress.ip_address("::1"))})
        self.assertEqual(leaf.chain_pem, (authority.cert_pem,))
        self.assertIs(certs.certificate_authority("unit CA"), authority)
        self.assertRaises(ValueError, authority.issue, [])


class HandshakeTests(TestCase):
    @inlineCallbacks
    def handshake(self, server: certs.CertifiedKey, client_trusts: certs.CertifiedKey) -> Any:
        """The echoed bytes once both ends have closed, or the client's failure."""
        echoes: list[Echo] = []

        def echo() -> Echo:
            echoes.append(Echo())
            return echoes[-1]
        port = reactor.listenSSL(0, Factory.forProtocol(echo), server.server_options(),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        endpoint = wrapClientTLS(client_trusts.client_options("localhost"),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        probe = yield connectProtocol(endpoint, Probe())
        try:
            return (yield probe.done)
        finally:
            yield gatherResults([server_side.lost for server_side in echoes])

    @inlineCallbacks
    def test_client_trusting_the_ca_accepts_its_leaf(self) -> Any:
        leaf = certs.certificate_authority("handshake CA").issue()
        echoed = yield self.handshake(leaf, leaf)
        self.assertEqual(echoed, b"ping")

    @inlineCallbacks
    def test_client_trusting_another_ca_refuses(self) -> Any:
        leaf = certs.certificate_authority("handshake CA").issue()
        stranger = certs.certificate_authority("stranger CA").issue()
        with self.assertRaises(SSL.Error):
            yield self.handshake(leaf, stranger)
