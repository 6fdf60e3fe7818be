"""A fake APNs on loopback: real TLS (ALPN h2 only) and HTTP/2, requests checked as Apple does.

Tests and the demo point an ``APNsClient`` at :func:`listen` and trust :func:`server_authority`.
Every request is validated (method, path, headers, body size, provider JWT or client
certificate), recorded in ``FakeAPNs.received`` and answered 200 with an ``apns-id``, unless a
script for its device token says otherwise: an error, a delay, or no answer at all. Delays and
token ages run on the injected clock, so tests drive them with ``task.Clock``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from mxproxy.logs import Logger
from mxproxy.store import mask_token
from mxproxy.testing.certs import DEFAULT_NAMES, CertificateAuthority, certificate_authority

log = Logger(__name__)

PUSH_TYPES = frozenset({"alert", "background", "location", "voip", "complication",
                        "fileprovider", "mdm", "liveactivity", "pushtotalk", "widgets",
                        "controls"})
MAX_PAYLOAD, MAX_VOIP_PAYLOAD = 4096, 5120
TOKEN_MAX_AGE = 3600
TOKEN_MIN_RENEWAL = 20 * 60
ENVIRONMENT_OIDS = {"development": "1.2.840.113635.100.6.3.1",
                    "production": "1.2.840.113635.100.6.3.2"}
MULTI_TOPIC_OID = "1.2.840.113635.100.6.3.6"
_PATH = re.compile(r"/3/device/([^/]*)")
_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2})+")


@attrs.frozen
class Reply:
    """An answer: ``extra`` is the timestamp (ms) of a 410, the retry-after (s) of a 429."""

    status: int = 200
    reason: str | None = None
    extra: int | None = None


@attrs.frozen
class Delayed:
    """Answer ``reply`` (a tuple like those of :meth:`FakeAPNs.script`) after ``seconds``."""

    seconds: float
    reply: tuple[Any, ...] = (200,)


NO_ANSWER = "no answer"
"""Script item: never answer (the stream stays open until reset or the connection ends)."""


@attrs.frozen
class ReceivedRequest:
    """One request as the fake saw it; ``payload`` is None when the body is not JSON."""

    token: str
    headers: dict[str, str]
    payload: Any
    time: float
    connection: int
    stream_id: int
    never_indexed: frozenset[str] = frozenset()
    """Names of the headers HPACK carried as never-indexed, as a client sends private values."""


Condition = Callable[["FakeAPNs"], bool]


class FakeAPNs:
    """The model behind :func:`listen`: keys, scripts, and what arrived.

    ``connections_made`` counts connections, ``open_connections`` lists the live ones,
    ``peak_streams`` is the most requests ever open at once on one connection, ``pings`` and
    ``goaways_received`` count client frames, ``resets`` lists (connection, stream, error code)
    of every RST_STREAM received.
    """

    def __init__(self, clock: IReactorTime | None = None, max_concurrent_streams: int = 1000,
                 initial_window_size: int | None = None, environment: str = "production") -> None:
        if clock is None:
            from twisted.internet import reactor  # late: importing never installs one
            clock = cast(IReactorTime, reactor)
        self.clock = clock
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_window_size = initial_window_size
        self.environment = environment
        self.received: list[ReceivedRequest] = []
        self.connections_made = 0
        self.open_connections: list[_ServerConnection] = []
        self.peak_streams = 0
        self.pings = 0
        self.goaways_received = 0
        self.resets: list[tuple[int, int, int]] = []
        self._keys: dict[str, tuple[Any, str]] = {}
        self._last_jwt: dict[str, tuple[str, int]] = {}
        self._verified: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._scripts: dict[str, deque[Reply | Delayed | str]] = {}
        self._devices: dict[str, str] = {}
        self._waiters: list[tuple[Condition, Deferred[list[ReceivedRequest]]]] = []

    # -- set-up -----------------------------------------------------------------------------

    def add_token_key(self, key_id: str, team_id: str, public_key_pem: bytes) -> None:
        """Accept provider JWTs signed by this key (ES256) with ``iss`` = ``team_id``."""
        self._keys[key_id] = (load_pem_public_key(public_key_pem), team_id)

    def register_device(self, token: str, topic: str) -> None:
        """``token`` belongs to ``topic``: others get 400 DeviceTokenNotForTopic."""
        self._devices[token] = topic

    def script(self, token: str, *responses: tuple[Any, ...] | Delayed | str) -> None:
        """Answer the next requests for ``token`` in order: ``(status, reason, extra)`` tuples
        (reason and extra optional), ``Delayed(seconds, reply)`` or ``NO_ANSWER``; then 200."""
        queue = self._scripts.setdefault(token, deque())
        for response in responses:
            queue.append(Reply(*response) if isinstance(response, tuple) else response)

    # -- observing --------------------------------------------------------------------------

    def wait_for(self, condition: int | Condition) -> Deferred[list[ReceivedRequest]]:
        """Fires with ``received`` once ``condition`` holds: a number of requests, or a
        predicate on this fake, checked after every request, connection and frame counted."""
        check = ((lambda fake: len(fake.received) >= condition)
                 if isinstance(condition, int) else condition)
        if check(self):
            return succeed(self.received)
        waiter: Deferred[list[ReceivedRequest]] = Deferred()
        self._waiters.append((check, waiter))
        return waiter

    def _changed(self) -> None:
        ready = [(check, waiter) for check, waiter in self._waiters if check(self)]
        for entry in ready:
            self._waiters.remove(entry)
            entry[1].callback(self.received)

    # -- faults -----------------------------------------------------------------------------

    def drop(self) -> Deferred[None]:
        """Cut every connection at once; fires when they are gone."""
        gone = DeferredList([conn.when_closed() for conn in self.open_connections])
        for conn in self.open_connections:
            conn.tls.abortConnection()
        return gone.addCallback(lambda _: None)

    def goaway(self, last_stream_id: int | None = None, error_code: int = 0,
               reason: str = "Shutdown") -> None:
        """Send GOAWAY on every connection (default: after the newest stream); older streams
        are still answered, newer ones ignored."""
        for conn in self.open_connections:
            conn.go_away(last_stream_id, error_code, reason)

    def stall(self) -> None:
        """Stop reading on every connection, as a dead peer would (PINGs go unanswered)."""
        for conn in self.open_connections:
            conn.tls.pauseProducing()

    def corrupt(self) -> None:
        """Write a malformed frame (a SETTINGS frame of 3 bytes) on every connection."""
        for conn in self.open_connections:
            conn.tls.write(b"\x00\x00\x03\x04\x00\x00\x00\x00\x00bad")

    # -- Apple's rules ----------------------------------------------------------------------

    def _validate(self, headers: list[tuple[str, str]], body: bytes,
                  certificate: x509.Certificate | None) -> Reply | None:
        fields = dict(headers)
        match = _PATH.fullmatch(fields.get(":path", ""))
        if fields.get(":method") != "POST":
            return Reply(405, "MethodNotAllowed")
        if match is None:
            return Reply(404, "BadPath")
        if not match[1]:
            return Reply(400, "MissingDeviceToken")
        if not _TOKEN.fullmatch(match[1]):
            return Reply(400, "BadDeviceToken")
        if len(fields) != len(headers):
            return Reply(400, "DuplicateHeaders")
        topic = fields.get("apns-topic")
        if "authorization" in fields:
            refusal = self._check_jwt(fields["authorization"])
        else:
            refusal, topic = self._check_certificate(certificate, topic)
        return refusal or _check_headers(fields, topic, body) or self._check_device(
            match[1], topic)

    def _check_jwt(self, authorization: str) -> Reply | None:
        scheme, _, token = authorization.partition(" ")
        verified = self._verified.get(token)  # the signature check is the costly part
        if verified is None:
            try:
                kid = str(jwt.get_unverified_header(token).get("kid"))
                key, team = self._keys[kid]
                claims = jwt.decode(token, key, algorithms=["ES256"],
                                    options={"verify_iat": False, "require": ["iss", "iat"]})
            except (jwt.PyJWTError, KeyError):
                return Reply(403, "InvalidProviderToken")
            verified = self._verified[token] = (kid, team, claims)
        kid, team, claims = verified
        iat, now = claims["iat"], self.clock.seconds()
        if scheme != "bearer" or claims["iss"] != team or not isinstance(iat, int) \
                or iat > now + 60:
            return Reply(403, "InvalidProviderToken")
        if now - iat > TOKEN_MAX_AGE:
            return Reply(403, "ExpiredProviderToken")
        last = self._last_jwt.get(kid)
        if last is not None and last[0] != token and iat - last[1] < TOKEN_MIN_RENEWAL:
            return Reply(429, "TooManyProviderTokenUpdates")
        self._last_jwt[kid] = (token, iat)
        return None

    def _check_certificate(self, certificate: x509.Certificate | None,
                           topic: str | None) -> tuple[Reply | None, str | None]:
        if certificate is None:
            return Reply(403, "MissingProviderToken"), topic
        uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
        if not uids:
            return Reply(403, "BadCertificate"), topic
        oids = {extension.oid.dotted_string for extension in certificate.extensions}
        if ENVIRONMENT_OIDS[self.environment] not in oids:
            return Reply(403, "BadCertificateEnvironment"), topic
        bundle = str(uids[0].value)
        allowed = {bundle}
        if MULTI_TOPIC_OID in oids:
            allowed |= {f"{bundle}.voip", f"{bundle}.complication"}
        topic = topic or bundle  # Apple's default topic: the certificate's
        return (None if topic in allowed else Reply(400, "TopicDisallowed")), topic

    def _check_device(self, token: str, topic: str | None) -> Reply | None:
        owner = self._devices.get(token)
        return Reply(400, "DeviceTokenNotForTopic") if owner not in (None, topic) else None

    def _answer_for(self, token: str) -> Reply | Delayed | str:
        script = self._scripts.get(token)
        return script.popleft() if script else Reply(200)


def _check_headers(fields: dict[str, str], topic: str | None, body: bytes) -> Reply | None:
    """The header and body rules that depend on nothing but the request."""
    push_type = fields.get("apns-push-type", "")
    if not topic:
        return Reply(400, "MissingTopic")
    if push_type not in PUSH_TYPES or (push_type == "voip") != topic.endswith(".voip"):
        return Reply(400, "InvalidPushType")  # voip and only voip goes to "<bundle>.voip"
    if fields.get("apns-priority", "10") not in ("1", "5", "10"):
        return Reply(400, "BadPriority")
    if not fields.get("apns-expiration", "0").isdigit():
        return Reply(400, "BadExpirationDate")
    if len(fields.get("apns-collapse-id", "").encode("utf-8")) > 64:
        return Reply(400, "BadCollapseId")
    if "apns-id" in fields and not _is_uuid(fields["apns-id"]):
        return Reply(400, "BadMessageId")
    if not body:
        return Reply(400, "PayloadEmpty")
    if len(body) > (MAX_VOIP_PAYLOAD if push_type == "voip" else MAX_PAYLOAD):
        return Reply(413, "PayloadTooLarge")
    return None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


# -- the server connection ---------------------------------------------------------------------


@attrs.define
class _Incoming:
    headers: list[tuple[str, str]]
    never_indexed: frozenset[str]
    body: bytearray = attrs.Factory(bytearray)


class _ServerConnection(Protocol):
    """The fake's end of one client connection."""

    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake
        self.number = 0
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._incoming: dict[int, _Incoming] = {}
        self._unanswered: set[int] = set()
        self._timers: dict[int, IDelayedCall] = {}
        self._last_stream: int | None = None
        self._closed: list[Deferred[None]] = []
        self._lost = False

    @property
    def tls(self) -> Any:
        """The TLS transport (TCP and SSL transport in one)."""
        return self.transport

    def connectionMade(self) -> None:
        fake = self.fake
        fake.connections_made += 1
        self.number = fake.connections_made
        fake.open_connections.append(self)
        settings = {SettingCodes.MAX_CONCURRENT_STREAMS: fake.max_concurrent_streams}
        if fake.initial_window_size is not None:
            settings[SettingCodes.INITIAL_WINDOW_SIZE] = fake.initial_window_size
        self._h2.local_settings = Settings(client=False, initial_values=settings)
        self._h2.initiate_connection()
        self._flush()
        fake._changed()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self.fake.open_connections.remove(self)
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)
        self.fake._changed()

    def when_closed(self) -> Deferred[None]:
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed.append(waiter)
        return waiter

    def go_away(self, last_stream_id: int | None, error_code: int, reason: str) -> None:
        # Written by hand: h2 would refuse to answer the older streams after its own GOAWAY.
        last = max(self._incoming.keys() | self._unanswered | {0}) \
            if last_stream_id is None else last_stream_id
        self._last_stream = last
        frame = GoAwayFrame(0, last_stream_id=last, error_code=error_code,
                            additional_data=json.dumps({"reason": reason}).encode())
        self.tls.write(frame.serialize())

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except ProtocolError:
            self._flush()
            self.tls.loseConnection()
            return
        for event in events:
            self._handle(event)
        self._flush()
        self.fake._changed()

    def _handle(self, event: Event) -> None:
        fake = self.fake
        stream_id: int = getattr(event, "stream_id", None) or 0
        if isinstance(event, RequestReceived):
            if self._last_stream is None or stream_id <= self._last_stream:
                headers = event.headers or ()
                self._incoming[stream_id] = _Incoming(
                    [(str(name), str(value)) for name, value in headers],
                    frozenset(str(header[0]) for header in headers
                              if isinstance(header, NeverIndexedHeaderTuple)))
                fake.peak_streams = max(fake.peak_streams,
                                        len(self._incoming) + len(self._unanswered))
        elif isinstance(event, DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            if stream_id in self._incoming:
                self._incoming[stream_id].body += event.data or b""
        elif isinstance(event, StreamEnded) and stream_id in self._incoming:
            self._request(stream_id, self._incoming.pop(stream_id))
        elif isinstance(event, StreamReset):
            fake.resets.append((self.number, stream_id, event.error_code or 0))
            self._incoming.pop(stream_id, None)
            self._unanswered.discard(stream_id)
        elif isinstance(event, PingReceived):
            fake.pings += 1
        elif isinstance(event, ConnectionTerminated):
            fake.goaways_received += 1

    def _request(self, stream_id: int, incoming: _Incoming) -> None:
        fake, body = self.fake, bytes(incoming.body)
        fields = dict(incoming.headers)
        peer = self.tls.getPeerCertificate()
        refusal = fake._validate(incoming.headers, body,
                                 None if peer is None else peer.to_cryptography())
        match = _PATH.fullmatch(fields.get(":path", ""))
        token = match[1] if match else ""
        fake.received.append(ReceivedRequest(token, fields, _json(body), fake.clock.seconds(),
                                             self.number, stream_id, incoming.never_indexed))
        answer = refusal or fake._answer_for(token)
        log.info("fake APNs: {type} push for {token} on {topic}: {payload}",
                 type=fields.get("apns-push-type"), token=mask_token(token),
                 topic=fields.get("apns-topic"), payload=body.decode("utf-8", "replace"))
        apns_id = fields.get("apns-id") or str(uuid.uuid4())
        self._unanswered.add(stream_id)
        if isinstance(answer, Delayed):
            self._timers[stream_id] = fake.clock.callLater(
                answer.seconds, self._answer, stream_id, Reply(*answer.reply), apns_id)
        elif isinstance(answer, Reply):
            self._answer(stream_id, answer, apns_id)

    def _answer(self, stream_id: int, reply: Reply, apns_id: str) -> None:
        self._timers.pop(stream_id, None)
        if stream_id not in self._unanswered or self._lost:
            return  # reset by the client meanwhile
        self._unanswered.discard(stream_id)
        headers = [(":status", str(reply.status)), ("apns-id", apns_id)]
        body = b""
        if reply.reason is not None:
            error: dict[str, Any] = {"reason": reply.reason}
            if reply.status == 410 and reply.extra is not None:
                error["timestamp"] = reply.extra
            body = json.dumps(error).encode()
            headers.append(("content-type", "application/json"))
        if reply.status == 429 and reply.extra is not None:
            headers.append(("retry-after", str(reply.extra)))
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self._h2.send_data(stream_id, body, end_stream=True)
        except ProtocolError:
            return  # the client said GOAWAY in the same read; h2 refuses to answer now
        self._flush()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._lost:
            self.tls.write(data)


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, fake: FakeAPNs) -> None:
        self.fake = fake

    def buildProtocol(self, addr: Any) -> _ServerConnection:
        return _ServerConnection(self.fake)


def server_authority() -> CertificateAuthority:
    """The CA that issues the fake's certificate: what clients must trust."""
    return certificate_authority("mxproxy fake APNs CA")


def listen(fake: FakeAPNs, port: int = 0, interface: str = "127.0.0.1", reactor: Any = None,
           require_client_cert: CertificateAuthority | None = None) -> IListeningPort:
    """Serve ``fake`` over TLS + HTTP/2 (``port=0``: a free port). With
    ``require_client_cert``, client certificates are requested and must chain to that CA."""
    if reactor is None:
        from twisted.internet import reactor
    leaf = server_authority().issue(DEFAULT_NAMES)
    identity = ssl.PrivateCertificate.loadPEM(leaf.key_pem + leaf.cert_pem)
    authorities = [] if require_client_cert is None else [
        crypto.load_certificate(crypto.FILETYPE_PEM, require_client_cert.cert_pem)]
    options = ssl.CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original,
        verify=bool(authorities), caCerts=authorities, requireCertificate=False,
        acceptableProtocols=[b"h2"])
    listening: IListeningPort = reactor.listenSSL(port, _ServerFactory(fake), options,
                                                  interface=interface)
    return listening
