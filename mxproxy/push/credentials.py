"""APNs provider credentials: a ``.p12`` certificate or a ``.p8`` token key.

A certificate names its bundle id and environments in Apple's extensions; a token key mints one
provider JWT and reuses it for 40 minutes on every connection: Apple rejects tokens older than an
hour and answers ``429 TooManyProviderTokenUpdates`` to tokens renewed more often than every 20
minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509.oid import NameOID, ObjectIdentifier
from OpenSSL import crypto
from twisted.internet import ssl

from mxproxy.logs import Logger

log = Logger(__name__)

PRODUCTION, DEVELOPMENT = "production", "development"
TOKEN_LIFETIME = 40 * 60.0
"""A provider JWT is reused this long (Apple: renew between 20 and 60 minutes)."""
TOKEN_MIN_AGE = 20 * 60.0
"""A provider JWT is never renewed earlier, even when APNs calls it expired."""

_ENVIRONMENT_OIDS = {
    ObjectIdentifier("1.2.840.113635.100.6.3.1"): DEVELOPMENT,
    ObjectIdentifier("1.2.840.113635.100.6.3.2"): PRODUCTION,
}
_TOPICS_OID = ObjectIdentifier("1.2.840.113635.100.6.3.6")
_DER_SEQUENCE, _DER_UTF8 = 0x30, 0x0C


@attrs.frozen
class APNsCertificate:
    """A provider certificate and its key, from a ``.p12``; presented as TLS client certificate."""

    bundle_id: str
    topics: tuple[str, ...]
    environments: frozenset[str]
    certificate: x509.Certificate = attrs.field(repr=False)
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    chain: tuple[x509.Certificate, ...] = attrs.field(default=(), repr=False)

    @classmethod
    def from_p12(cls, path: str, password: str) -> APNsCertificate:
        """Load a PKCS#12 file; ``ValueError`` names the file and what is wrong with it."""
        with open(path, "rb") as p12:
            data = p12.read()
        try:
            key, certificate, chain = pkcs12.load_key_and_certificates(
                data, password.encode("utf-8") or None)
        except ValueError as error:
            raise ValueError(f"{path}: cannot read the PKCS#12 file: {error}") from None
        if certificate is None or not isinstance(key, rsa.RSAPrivateKey
                                                 | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: the PKCS#12 file lacks the certificate or its RSA or "
                             "EC key")
        try:
            bundle, topics, environments = _describe(certificate)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        return cls(bundle, topics, environments, certificate, key, tuple(chain))

    def tls_identity(self) -> ssl.PrivateCertificate:
        return ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(crypto.X509.from_cryptography(self.certificate)),
            ssl.KeyPair(crypto.PKey.from_cryptography_key(self.key)))


def _describe(certificate: x509.Certificate) -> tuple[str, tuple[str, ...], frozenset[str]]:
    """(bundle id, topics, environments) of an Apple push certificate."""
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    if not uids:
        raise ValueError("not an APNs certificate: the subject has no UID (bundle id)")
    bundle = str(uids[0].value)
    extensions = {extension.oid: extension.value for extension in certificate.extensions}
    environments = frozenset(name for oid, name in _ENVIRONMENT_OIDS.items() if oid in extensions)
    if not environments:
        raise ValueError(f"the certificate for {bundle} is valid for neither the development "
                         "nor the production APNs environment")
    topics: tuple[str, ...] = (bundle,)
    if _TOPICS_OID in extensions:
        topics = _topics(extensions[_TOPICS_OID])
    return bundle, topics, environments


def _topics(extension: Any) -> tuple[str, ...]:
    """The topics of the multi-topic extension: a SEQUENCE of UTF8String topics, each followed
    by a SEQUENCE naming its kind (``app``, ``voip``, ``complication``)."""
    try:
        [(tag, body)] = _der_elements(extension.value)
        if tag != _DER_SEQUENCE:
            raise ValueError("not a SEQUENCE")
        topics = tuple(value.decode("utf-8") for tag, value in _der_elements(body)
                       if tag == _DER_UTF8)
    except (AttributeError, IndexError, ValueError) as error:
        raise ValueError(f"unreadable topic list (1.2.840.113635.100.6.3.6): {error}") from None
    if not topics:
        raise ValueError("the topic list (1.2.840.113635.100.6.3.6) is empty")
    return topics


def _der_elements(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, content) of each DER element in ``data``, one level deep."""
    offset = 0
    while offset < len(data):
        tag, length = data[offset], data[offset + 1]
        offset += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[offset:offset + size], "big")
            offset += size
        if offset + length > len(data):
            raise ValueError("truncated DER")
        yield tag, data[offset:offset + length]
        offset += length


class APNsTokenKey:
    """A provider token signing key (``.p8``) and the one JWT minted from it at a time."""

    def __init__(self, key_pem: bytes, key_id: str, team_id: str,
                 topics: tuple[str, ...]) -> None:
        try:
            key = load_pem_private_key(key_pem, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as error:
            raise ValueError(f"unreadable APNs token signing key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("an APNs token signing key is an EC P-256 private key (.p8)")
        if not key_id or not team_id:
            raise ValueError("an APNs token key needs its key id and the team id")
        self.key_id = key_id
        self.team_id = team_id
        self.topics = topics
        self._key = key
        self._token: str | None = None
        self._minted_at = 0.0

    @classmethod
    def from_file(cls, path: str, key_id: str, team_id: str,
                  topics: tuple[str, ...]) -> APNsTokenKey:
        with open(path, "rb") as p8:
            data = p8.read()
        try:
            return cls(data, key_id, team_id, topics)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def __repr__(self) -> str:
        return f"APNsTokenKey(key_id={self.key_id!r}, team_id={self.team_id!r})"

    def provider_token(self, now: float) -> str:
        """The JWT to send at ``now``: minted once, then reused for 40 minutes."""
        if self._token is None or now - self._minted_at >= TOKEN_LIFETIME:
            return self._mint(now)
        return self._token

    def renew_expired(self, now: float) -> bool:
        """APNs called the token expired: renew it unless it is younger than 20 minutes (a
        skewed clock, which a new token would not cure). True if a new token was minted."""
        if self._token is not None and now - self._minted_at < TOKEN_MIN_AGE:
            return False
        self._mint(now)
        return True

    def _mint(self, now: float) -> str:
        self._token = jwt.encode({"iss": self.team_id, "iat": int(now)}, self._key,
                                 algorithm="ES256", headers={"kid": self.key_id, "typ": None})
        self._minted_at = now
        log.info("APNs: new provider token for key {key_id}", key_id=self.key_id)
        return self._token


Credential = APNsCertificate | APNsTokenKey
