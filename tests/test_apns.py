"""APNsClient against the fake APNs over real loopback TLS + HTTP/2; timers on task.Clock."""

from __future__ import annotations

import datetime
import functools
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from OpenSSL import SSL
from twisted.internet import reactor, ssl
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from mxproxy import logs
from mxproxy.push.apns import APNsClient, APNsResponse, APNsTimeout, APNsUnavailable
from mxproxy.push.credentials import DEVELOPMENT, PRODUCTION, APNsCertificate, APNsTokenKey
from mxproxy.store import mask_token
from mxproxy.testing import fakeapns
from mxproxy.testing.certs import DEFAULT_NAMES, CertificateAuthority, certificate_authority
from mxproxy.testing.fakeapns import NO_ANSWER, Delayed, FakeAPNs

BUNDLE = "com.example.mxphone"
TEAM, KEY_ID = "TEAM123456", "KEY1234567"
EPOCH = 1_700_000_000.0
ALERT = {"aps": {"alert": {"title": "Incoming call", "body": "3044"}}}
CALL = {"callId": 21, "callingDevice": "3044", "time": 1501101426}
DAY = 86400.0


def device(n: int) -> str:
    return f"{n:064x}"


@functools.cache
def signing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def p8(key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    return (key or signing_key()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def token_key(team: str = TEAM) -> APNsTokenKey:
    return APNsTokenKey(p8(), KEY_ID, team, (BUNDLE, f"{BUNDLE}.voip"))


def der(tag: int, content: bytes) -> bytes:
    """A DER element (lengths up to 65535 are plenty here)."""
    size = len(content)
    length = bytes([size]) if size < 0x80 else bytes([0x82]) + size.to_bytes(2, "big")
    return bytes([tag]) + length + content


def topics_extension(*topics: tuple[str, str]) -> bytes:
    """Apple's multi-topic value: SEQUENCE { UTF8String topic, SEQUENCE { UTF8String kind } }."""
    items = b"".join(der(0x0C, topic.encode()) + der(0x30, der(0x0C, kind.encode()))
                     for topic, kind in topics)
    return der(0x30, items)


APPLE_DEV, APPLE_PROD = "1.2.840.113635.100.6.3.1", "1.2.840.113635.100.6.3.2"
APPLE_TOPICS = "1.2.840.113635.100.6.3.6"
DER_NULL = b"\x05\x00"


def push_certificate_p12(path: str, authority: CertificateAuthority,
                         extensions: dict[str, bytes], password: bytes = b"secret") -> None:
    """A PKCS#12 shaped like Apple's push certificates, issued by ``authority``."""
    ca_cert = x509.load_pem_x509_certificate(authority.cert_pem)
    ca_key = serialization.load_pem_private_key(authority.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.USER_ID, BUNDLE),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {BUNDLE}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier(oid), value), critical=False)
    certificate = builder.sign(ca_key, hashes.SHA256())
    with open(path, "wb") as out:
        out.write(pkcs12.serialize_key_and_certificates(
            b"push", key, certificate, [ca_cert],
            serialization.BestAvailableEncryption(password)))


@implementer(IOpenSSLContextFactory)
class WithoutALPN:
    """Server TLS that ignores ALPN, like a server speaking only HTTP/1.1 (Twisted's own
    options would fail the handshake instead)."""

    def getContext(self) -> SSL.Context:
        leaf = fakeapns.server_authority().issue(DEFAULT_NAMES)
        identity = ssl.PrivateCertificate.loadPEM(leaf.key_pem + leaf.cert_pem)
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(identity.original)
        context.use_privatekey(identity.privateKey.original)
        return context


class APNsTestCase(TestCase):
    """A fake APNs on an ephemeral port and clients to it, all on one Clock."""

    def setUp(self) -> None:
        self.ports: dict[FakeAPNs, int] = {}
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.fake = self.make_fake()

    def make_fake(self, authority: CertificateAuthority | None = None,
                  **options: Any) -> FakeAPNs:
        fake = FakeAPNs(clock=self.clock, **options)
        public = signing_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        fake.add_token_key(KEY_ID, TEAM, public)
        port = fakeapns.listen(fake, require_client_cert=authority)
        self.addCleanup(lambda: DeferredList([port.stopListening(), fake.drop()]))
        self.ports[fake] = port.getHost().port
        return fake

    def client(self, fake: FakeAPNs | None = None, credential: Any = None,
               port: int | None = None, **options: Any) -> APNsClient:
        """A client on the test Clock; keep-alive PINGs only where a test asks for them."""
        options.setdefault("ping_interval", DAY)
        client = APNsClient(reactor, "127.0.0.1", port or self.ports[fake or self.fake],
                            credential or token_key(),
                            trust_root=fakeapns.server_authority().cert_pem, clock=self.clock,
                            **options)

        def close() -> Deferred[None]:
            closed = client.close(timeout=0)
            self.clock.advance(0)
            return closed

        self.addCleanup(close)
        return client

    async def assert_unavailable(self, sending: Deferred[APNsResponse], *words: str) -> str:
        try:
            await sending
        except APNsUnavailable as error:
            for word in words:
                self.assertIn(word, str(error))
            return str(error)
        self.fail("the send did not fail with APNsUnavailable")


class TokenAuthTests(APNsTestCase):
    async def test_request_headers_body_and_provider_token(self) -> None:
        response = await self.client().send(device(1), BUNDLE, "alert", ALERT)
        self.assertEqual(response.status, 200)
        self.assertIsNone(response.reason)
        self.assertTrue(response.apns_id)
        [request] = self.fake.received
        self.assertEqual(request.token, device(1))
        self.assertEqual(request.payload, ALERT)
        headers = request.headers
        self.assertEqual((headers[":method"], headers[":path"], headers[":scheme"]),
                         ("POST", f"/3/device/{device(1)}", "https"))
        # Private values stay out of HPACK tables: the device token, and (h2 does it) the JWT
        self.assertEqual(request.never_indexed, {":path", "authorization"})
        self.assertEqual((headers["apns-topic"], headers["apns-push-type"],
                          headers["apns-priority"], headers["apns-expiration"]),
                         (BUNDLE, "alert", "10", "0"))
        self.assertEqual(headers["content-type"], "application/json")
        self.assertNotIn("apns-collapse-id", headers)
        scheme, bearer = headers["authorization"].split(" ")
        self.assertEqual(scheme, "bearer")
        self.assertEqual(jwt.get_unverified_header(bearer), {"alg": "ES256", "kid": KEY_ID})
        self.assertEqual(jwt.decode(bearer, signing_key().public_key(), algorithms=["ES256"],
                                    options={"verify_iat": False}),
                         {"iss": TEAM, "iat": int(EPOCH)})

    async def test_voip_and_alert_headers_as_passed(self) -> None:
        client = self.client()
        voip = await client.send(device(1), f"{BUNDLE}.voip", "voip", CALL, priority=10,
                                 expiration=int(EPOCH) + 30, collapse_id="call-21")
        alert = await client.send(device(2), BUNDLE, "alert", ALERT, priority=5)
        self.assertEqual((voip.status, alert.status), (200, 200))
        first, second = (request.headers for request in self.fake.received)
        self.assertEqual((first["apns-topic"], first["apns-push-type"], first["apns-priority"],
                          first["apns-expiration"], first["apns-collapse-id"]),
                         (f"{BUNDLE}.voip", "voip", "10", str(int(EPOCH) + 30), "call-21"))
        self.assertEqual((second["apns-topic"], second["apns-push-type"],
                          second["apns-priority"]), (BUNDLE, "alert", "5"))
        self.assertEqual(self.fake.received[0].payload, CALL)

    async def test_provider_token_shared_and_renewed_after_40_minutes_only(self) -> None:
        key = token_key()
        production, sandbox = self.client(credential=key), self.client(credential=key)

        async def bearer(client: APNsClient, n: int) -> str:
            self.assertEqual((await client.send(device(n), BUNDLE, "alert", ALERT)).status, 200)
            return self.fake.received[-1].headers["authorization"]

        first = await bearer(production, 1)
        self.assertEqual(await bearer(production, 2), first)
        self.assertEqual(await bearer(sandbox, 3), first)  # another connection, same JWT
        self.clock.advance(40 * 60 - 1)
        self.assertEqual(await bearer(sandbox, 4), first)
        self.clock.advance(1)
        renewed = await bearer(production, 5)
        self.assertNotEqual(renewed, first)
        self.assertEqual(jwt.decode(renewed.split()[1], options={"verify_signature": False}),
                         {"iss": TEAM, "iat": int(EPOCH) + 40 * 60})
        self.assertEqual(await bearer(sandbox, 6), renewed)

    async def test_expired_provider_token_renewed_and_retried_when_20_minutes_old(self) -> None:
        client = self.client()
        await client.send(device(1), BUNDLE, "alert", ALERT)
        self.clock.advance(25 * 60)
        self.fake.script(device(2), (403, "ExpiredProviderToken"))
        response = await client.send(device(2), BUNDLE, "alert", ALERT)
        self.assertEqual(response.status, 200)
        bearers = [request.headers["authorization"] for request in self.fake.received]
        self.assertEqual(len(bearers), 3)
        self.assertEqual(bearers[0], bearers[1])
        self.assertNotEqual(bearers[1], bearers[2])

    async def test_expired_provider_token_not_renewed_within_20_minutes(self) -> None:
        client = self.client()
        await client.send(device(1), BUNDLE, "alert", ALERT)
        self.clock.advance(5 * 60)
        self.fake.script(device(2), (403, "ExpiredProviderToken"))
        response = await client.send(device(2), BUNDLE, "alert", ALERT)
        self.assertEqual((response.status, response.reason), (403, "ExpiredProviderToken"))
        self.assertEqual(len({r.headers["authorization"] for r in self.fake.received}), 1)

    async def test_fake_refuses_a_token_renewed_within_20_minutes(self) -> None:
        """What a JWT minted per connection (instead of per key) runs into."""
        self.assertEqual((await self.client().send(device(1), BUNDLE, "alert", ALERT)).status,
                         200)
        self.clock.advance(5 * 60)
        response = await self.client().send(device(2), BUNDLE, "alert", ALERT)
        self.assertEqual((response.status, response.reason), (429, "TooManyProviderTokenUpdates"))

    async def test_fake_rejects_a_token_of_another_team(self) -> None:
        response = await self.client(credential=token_key("OTHERTEAM1")).send(
            device(1), BUNDLE, "alert", ALERT)
        self.assertEqual((response.status, response.reason), (403, "InvalidProviderToken"))

    def test_token_key_must_be_p256(self) -> None:
        rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        with self.assertRaisesRegex(ValueError, "P-256"):
            APNsTokenKey(rsa_pem, KEY_ID, TEAM, (BUNDLE,))
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(p8())
        key = APNsTokenKey.from_file(path, KEY_ID, TEAM, (BUNDLE,))
        self.assertEqual((key.key_id, key.team_id, key.topics), (KEY_ID, TEAM, (BUNDLE,)))
        self.assertNotIn("PRIVATE", repr(key))


class CertificateAuthTests(APNsTestCase):
    def p12(self, extensions: dict[str, bytes], password: bytes = b"secret") -> str:
        path = self.mktemp()
        push_certificate_p12(path, certificate_authority("fake Apple WWDR CA"), extensions,
                             password)
        return path

    def test_bundle_and_environments_from_the_certificate(self) -> None:
        both = APNsCertificate.from_p12(self.p12({APPLE_DEV: DER_NULL, APPLE_PROD: DER_NULL}),
                                        "secret")
        self.assertEqual((both.bundle_id, both.topics), (BUNDLE, (BUNDLE,)))
        self.assertEqual(both.environments, {DEVELOPMENT, PRODUCTION})
        sandbox = APNsCertificate.from_p12(self.p12({APPLE_DEV: DER_NULL}), "secret")
        self.assertEqual(sandbox.environments, {DEVELOPMENT})

    def test_voip_services_certificate_lists_its_topics(self) -> None:
        value = topics_extension((BUNDLE, "app"), (f"{BUNDLE}.voip", "voip"),
                                 (f"{BUNDLE}.complication", "complication"))
        cert = APNsCertificate.from_p12(
            self.p12({APPLE_PROD: DER_NULL, APPLE_TOPICS: value}), "secret")
        self.assertEqual(cert.topics,
                         (BUNDLE, f"{BUNDLE}.voip", f"{BUNDLE}.complication"))

    def test_unusable_certificates_are_refused_clearly(self) -> None:
        with self.assertRaisesRegex(ValueError, "neither the development nor the production"):
            APNsCertificate.from_p12(self.p12({}), "secret")
        with self.assertRaisesRegex(ValueError, "cannot read the PKCS#12"):
            APNsCertificate.from_p12(self.p12({APPLE_PROD: DER_NULL}), "wrong")
        with self.assertRaisesRegex(ValueError, "unreadable topic list"):
            APNsCertificate.from_p12(
                self.p12({APPLE_PROD: DER_NULL, APPLE_TOPICS: b"\x30\x05\x0c"}), "secret")

    async def test_client_certificate_presented_and_topic_checked(self) -> None:
        apple = certificate_authority("fake Apple WWDR CA")
        fake = self.make_fake(authority=apple)
        credential = APNsCertificate.from_p12(
            self.p12({APPLE_DEV: DER_NULL, APPLE_PROD: DER_NULL}), "secret")
        client = self.client(fake, credential)
        self.assertEqual((await client.send(device(1), BUNDLE, "alert", ALERT)).status, 200)
        voip = await client.send(device(2), f"{BUNDLE}.voip", "voip", CALL)
        self.assertEqual((voip.status, voip.reason), (400, "TopicDisallowed"))
        self.assertNotIn("authorization", fake.received[0].headers)

    async def test_voip_services_certificate_may_send_voip(self) -> None:
        fake = self.make_fake(authority=certificate_authority("fake Apple WWDR CA"))
        value = topics_extension((BUNDLE, "app"), (f"{BUNDLE}.voip", "voip"))
        credential = APNsCertificate.from_p12(
            self.p12({APPLE_PROD: DER_NULL, APPLE_TOPICS: value}), "secret")
        response = await self.client(fake, credential).send(device(1), f"{BUNDLE}.voip",
                                                            "voip", CALL)
        self.assertEqual(response.status, 200)

    async def test_server_that_asks_no_certificate_sees_no_credential(self) -> None:
        credential = APNsCertificate.from_p12(self.p12({APPLE_PROD: DER_NULL}), "secret")
        response = await self.client(credential=credential).send(device(1), BUNDLE, "alert",
                                                                  ALERT)
        self.assertEqual((response.status, response.reason), (403, "MissingProviderToken"))


class ResponseTests(APNsTestCase):
    async def test_error_answers_parsed(self) -> None:
        self.fake.script(device(1), (410, "Unregistered", 1_699_999_000_000))
        self.fake.script(device(2), (400, "BadDeviceToken"))
        self.fake.script(device(3), (429, "TooManyRequests", 30))
        self.fake.script(device(4), (500, "InternalServerError"))
        client = self.client()
        answers = [await sending for sending in
                   [client.send(device(n), BUNDLE, "alert", ALERT) for n in range(1, 5)]]
        self.assertEqual([(a.status, a.reason, a.timestamp) for a in answers],
                         [(410, "Unregistered", 1_699_999_000_000), (400, "BadDeviceToken", None),
                          (429, "TooManyRequests", None), (500, "InternalServerError", None)])
        self.assertEqual(answers[2].retry_after, 30)
        self.assertTrue(all(answer.apns_id for answer in answers))
        self.assertFalse(any(answer.ok for answer in answers))

    async def test_fake_enforces_apples_request_rules(self) -> None:
        client = self.client()
        self.fake.register_device(device(9), "com.example.other")
        cases = [
            (client.send(device(1), BUNDLE, "alert", {"pad": "x" * 4100}),
             (413, "PayloadTooLarge")),
            (client.send(device(2), BUNDLE, "voip", CALL), (400, "InvalidPushType")),
            (client.send(device(3), BUNDLE, "banner", ALERT), (400, "InvalidPushType")),
            (client.send(device(4), BUNDLE, "alert", ALERT, priority=7), (400, "BadPriority")),
            (client.send(device(5), BUNDLE, "alert", ALERT, collapse_id="c" * 65),
             (400, "BadCollapseId")),
            (client.send(device(9), BUNDLE, "alert", ALERT), (400, "DeviceTokenNotForTopic")),
            (client.send("abc", BUNDLE, "alert", ALERT), (400, "BadDeviceToken")),
        ]
        for sending, expected in cases:
            answer = await sending
            self.assertEqual((answer.status, answer.reason), expected)

    def test_send_refuses_values_that_cannot_be_headers(self) -> None:
        client = self.client()
        with self.assertRaisesRegex(ValueError, "hexadecimal"):
            client.send("not/hex", BUNDLE, "alert", ALERT)
        with self.assertRaisesRegex(ValueError, "collapse id"):
            client.send(device(1), BUNDLE, "alert", ALERT, collapse_id="a b\r\n")
        self.assertEqual(self.fake.connections_made, 0)


class MultiplexingTests(APNsTestCase):
    async def test_requests_share_one_connection_within_the_stream_limit(self) -> None:
        fake = self.make_fake(max_concurrent_streams=10)
        tokens = [device(n) for n in range(30)]
        for token in tokens:
            fake.script(token, Delayed(1.0))
        client = self.client(fake)
        sendings = [client.send(token, BUNDLE, "alert", ALERT) for token in tokens]
        for arrived in (10, 20, 30):
            await fake.wait_for(arrived)
            self.assertEqual(len(fake.received), arrived)  # the rest waits in the client
            self.clock.advance(1.0)
        answers = [await sending for sending in sendings]
        self.assertEqual({answer.status for answer in answers}, {200})
        self.assertEqual(fake.peak_streams, 10)
        self.assertEqual(fake.connections_made, 1)
        self.assertEqual({request.connection for request in fake.received}, {1})

    async def test_queue_is_bounded(self) -> None:
        client = self.client(max_queued=2)
        first = client.send(device(1), BUNDLE, "alert", ALERT)
        second = client.send(device(2), BUNDLE, "alert", ALERT)
        await self.assert_unavailable(client.send(device(3), BUNDLE, "alert", ALERT),
                                      "already waiting")
        self.assertEqual([(await first).status, (await second).status], [200, 200])

    async def test_body_larger_than_the_window_waits_for_window_updates(self) -> None:
        fake = self.make_fake(initial_window_size=100)
        payload = {"aps": {"alert": "x" * 3000}}
        response = await self.client(fake).send(device(1), BUNDLE, "alert", payload)
        self.assertEqual(response.status, 200)
        self.assertEqual(fake.received[0].payload, payload)


class FailureTests(APNsTestCase):
    async def test_timeout_resets_the_stream_and_keeps_the_connection(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client()
        sending = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        self.clock.advance(5.0)
        with self.assertRaises(APNsTimeout):
            await sending
        await self.fake.wait_for(lambda fake: bool(fake.resets))
        self.assertEqual(self.fake.resets, [(1, 1, 8)])  # RST_STREAM CANCEL
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual(self.fake.connections_made, 1)

    async def test_cancelled_send_is_never_sent(self) -> None:
        client = self.client()
        cancelled = client.send(device(1), BUNDLE, "alert", ALERT)
        cancelled.cancel()
        with self.assertRaises(CancelledError):
            await cancelled
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual([request.token for request in self.fake.received], [device(2)])

    async def test_timeout_while_queued(self) -> None:
        fake = self.make_fake(max_concurrent_streams=1)
        fake.script(device(1), NO_ANSWER)
        client = self.client(fake, request_timeout=5.0)
        first = client.send(device(1), BUNDLE, "alert", ALERT)
        await fake.wait_for(1)
        second = client.send(device(2), BUNDLE, "alert", ALERT)
        self.clock.advance(5.0)
        for sending in (first, second):
            with self.assertRaises(APNsTimeout):
                await sending
        self.assertEqual(len(fake.received), 1)

    async def test_dropped_connection_fails_in_flight_and_next_send_reconnects(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client()
        sending = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        await self.fake.drop()
        await self.assert_unavailable(sending, "lost")
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual(self.fake.connections_made, 2)

    async def test_protocol_error_costs_the_connection_only(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client()
        sending = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        self.fake.corrupt()
        await self.assert_unavailable(sending, "protocol error")
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual(self.fake.connections_made, 2)

    async def test_server_without_h2_refused_then_backoff(self) -> None:
        accepted: list[Protocol] = []
        lost: list[Deferred[None]] = []

        class Counted(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self)
                lost.append(Deferred())

            def connectionLost(self, reason: Any = None) -> None:
                lost[accepted.index(self)].callback(None)

        port = reactor.listenSSL(0, Factory.forProtocol(Counted), WithoutALPN(),
                                 interface="127.0.0.1")
        self.addCleanup(lambda: DeferredList([port.stopListening(), *lost]))
        client = self.client(port=port.getHost().port)
        await self.assert_unavailable(client.send(device(1), BUNDLE, "alert", ALERT), "ALPN h2")
        await self.assert_unavailable(client.send(device(1), BUNDLE, "alert", ALERT),
                                      "next attempt in 1.0 s")
        self.assertEqual(len(accepted), 1)
        self.clock.advance(1.0)
        await self.assert_unavailable(client.send(device(1), BUNDLE, "alert", ALERT), "ALPN")
        self.assertEqual(len(accepted), 2)
        await self.assert_unavailable(client.send(device(1), BUNDLE, "alert", ALERT),
                                      "next attempt in 2.0 s")


class GoAwayTests(APNsTestCase):
    async def test_in_flight_finish_and_new_requests_use_a_new_connection(self) -> None:
        self.fake.script(device(1), Delayed(1.0))
        client = self.client()
        in_flight = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        self.fake.goaway()
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.clock.advance(1.0)
        self.assertEqual((await in_flight).status, 200)
        self.assertEqual([(r.token, r.connection) for r in self.fake.received],
                         [(device(1), 1), (device(2), 2)])
        await self.fake.wait_for(lambda fake: len(fake.open_connections) == 1)
        self.assertEqual(self.fake.goaways_received, 1)  # the client said goodbye when done

    async def test_request_the_server_never_processed_is_retried(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client()
        sending = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        self.fake.goaway(last_stream_id=0)
        self.assertEqual((await sending).status, 200)
        self.assertEqual([(r.token, r.connection) for r in self.fake.received],
                         [(device(1), 1), (device(1), 2)])


class KeepAliveTests(APNsTestCase):
    async def test_ping_after_a_quiet_minute_keeps_the_connection(self) -> None:
        client = self.client(ping_interval=60.0, ping_timeout=10.0)
        await client.send(device(1), BUNDLE, "alert", ALERT)
        self.clock.advance(59.0)
        self.assertEqual(self.fake.pings, 0)
        self.clock.advance(1.0)
        await self.fake.wait_for(lambda fake: fake.pings == 1)
        await client.send(device(2), BUNDLE, "alert", ALERT)  # the PING ACK came before this
        self.clock.advance(10.0)
        self.assertEqual((await client.send(device(3), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual(self.fake.connections_made, 1)
        self.assertTrue(client.connected)

    async def test_unanswered_ping_drops_a_dead_connection(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client(ping_interval=60.0, ping_timeout=10.0, request_timeout=DAY)
        sending = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        self.fake.stall()
        self.clock.advance(60.0)
        self.clock.advance(10.0)
        await self.assert_unavailable(sending, "did not answer a PING")
        self.assertFalse(client.connected)
        self.assertEqual((await client.send(device(2), BUNDLE, "alert", ALERT)).status, 200)
        self.assertEqual(self.fake.connections_made, 2)


class CloseTests(APNsTestCase):
    async def test_close_lets_in_flight_finish_then_says_goodbye(self) -> None:
        self.fake.script(device(1), Delayed(1.0))
        client = self.client()
        in_flight = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        closing = client.close()
        await self.assert_unavailable(client.send(device(2), BUNDLE, "alert", ALERT), "closed")
        self.clock.advance(1.0)
        self.assertEqual((await in_flight).status, 200)
        await closing
        await self.fake.wait_for(lambda fake: not fake.open_connections)
        self.assertEqual(self.fake.goaways_received, 1)

    async def test_close_gives_up_on_in_flight_after_the_timeout(self) -> None:
        self.fake.script(device(1), NO_ANSWER)
        client = self.client()
        in_flight = client.send(device(1), BUNDLE, "alert", ALERT)
        await self.fake.wait_for(1)
        closing = client.close(timeout=2.0)
        self.clock.advance(2.0)
        await self.assert_unavailable(in_flight, "unanswered")
        await closing


class SecretsTests(APNsTestCase):
    async def test_logs_never_show_a_token_or_the_jwt(self) -> None:
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        logs.set_debug(True)
        self.addCleanup(logs.set_debug, False)
        client = self.client()
        await client.send(device(1), BUNDLE, "alert", ALERT)
        bearer = self.fake.received[0].headers["authorization"].split()[1]
        text = "\n".join(lines)
        self.assertIn(mask_token(device(1)), text)
        self.assertNotIn(device(1), text)
        self.assertNotIn(bearer, text)


class MaskTokenTests(SynchronousTestCase):
    def test_first_six_and_last_four(self) -> None:
        self.assertEqual(mask_token("0123456789abcdef0123"), "012345\u20260123")
        self.assertEqual(mask_token("0123456789"), "\u2026")
