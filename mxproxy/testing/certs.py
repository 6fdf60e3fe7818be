"""Throw-away TLS certificates for the simulators and tests (never for production).

The MX simulator, the fake APNs and the tests need real TLS with certificates a client can either
pin (SHA-256 fingerprint of a self-signed certificate) or verify against a CA file. Keys are
EC P-256 (fast to generate); everything is cached per process so a test run mints each
certificate once.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(days=1)  # tolerate clock skew between test processes


@attrs.frozen
class CertifiedKey:
    """A certificate (PEM), its private key (PEM) and the CA certificates that vouch for it."""

    cert_pem: bytes
    key_pem: bytes
    chain_pem: tuple[bytes, ...] = ()

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the DER certificate: what a client pins."""
        return self.certificate.fingerprint(hashes.SHA256())

    def server_options(self) -> ssl.CertificateOptions:
        """Twisted server TLS options presenting this certificate (and its chain)."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),  # type: ignore[arg-type]
            certificate=crypto.X509.from_cryptography(self.certificate),
            extraCertChain=[crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pem))
                            for pem in self.chain_pem],
        )

    def client_options(self, hostname: str = "localhost") -> IOpenSSLClientConnectionCreator:
        """Twisted client TLS options that trust exactly this certificate's issuer.

        For a self-signed certificate that is the certificate itself; for a CA-issued leaf it
        is the CA (the last entry of the chain).
        """
        anchor = self.chain_pem[-1] if self.chain_pem else self.cert_pem
        return ssl.optionsForClientTLS(hostname, trustRoot=ssl.Certificate.loadPEM(anchor))


@attrs.frozen
class CertificateAuthority:
    """A one-level CA: write :attr:`cert_pem` to a file to test "trust this CA" configurations."""

    cert_pem: bytes
    key_pem: bytes

    def issue(self, names: Iterable[str] = DEFAULT_NAMES) -> CertifiedKey:
        """A leaf certificate for DNS names and IP addresses, signed by this CA (cached)."""
        return _issue(self, _normalise(names))


def self_signed(names: Iterable[str] = DEFAULT_NAMES) -> CertifiedKey:
    """A self-signed server certificate for DNS names and IP addresses (cached per names)."""
    return _self_signed(_normalise(names))


def certificate_authority(common_name: str = "mxproxy test CA") -> CertificateAuthority:
    """A CA with its own key (cached per name, so one name means one CA in a process)."""
    return _authority(common_name)


def _normalise(names: Iterable[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise ValueError("a certificate needs at least one name")
    return unique


@functools.cache
def _self_signed(names: tuple[str, ...]) -> CertifiedKey:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(names[0])
    cert = _leaf_builder(subject, subject, key, names).sign(key, hashes.SHA256())
    return CertifiedKey(_cert_pem(cert), _key_pem(key))


@functools.cache
def _authority(common_name: str) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        _base_builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(_cert_pem(cert), _key_pem(key))


@functools.cache
def _issue(authority: CertificateAuthority, names: tuple[str, ...]) -> CertifiedKey:
    ca_cert = x509.load_pem_x509_certificate(authority.cert_pem)
    ca_key = serialization.load_pem_private_key(authority.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _leaf_builder(_name(names[0]), ca_cert.subject, key, names)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertifiedKey(_cert_pem(cert), _key_pem(key), (authority.cert_pem,))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _base_builder(subject: x509.Name, issuer: x509.Name,
                  key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _leaf_builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
                  names: tuple[str, ...]) -> x509.CertificateBuilder:
    return (
        _base_builder(subject, issuer, key)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
