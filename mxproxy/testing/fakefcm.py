"""A stand-in for Google's FCM HTTP v1 endpoint and OAuth2 token endpoint, over loopback HTTPS.

======  =====================================  ================================================
Method  Path                                   Behaviour
======  =====================================  ================================================
POST    /token                                 JWT-bearer grant: checks ``grant_type``, the
                                               assertion's RS256 signature (key of a service
                                               account added with :meth:`FakeFCM.add_account`),
                                               ``kid``, ``aud`` (this endpoint's URL), ``scope``,
                                               ``iat``/``exp`` (at most an hour, not expired) ->
                                               ``{"access_token", "expires_in", "token_type"}``
POST    /v1/projects/<id>/messages:send        checks the bearer token (issued, unexpired, its
                                               account's project is ``<id>``), the message
                                               shape, then records the message and answers with
                                               the next scripted :class:`Reply` for its device
                                               token, else ``{"name": ".../messages/<n>"}``
======  =====================================  ================================================

Errors carry google.rpc JSON bodies shaped like Google's (status, message, FcmError and
BadRequest details). The message check is stricter than Google in one way: mxproxy only sends
call pushes, so ``android.priority`` must be ``HIGH``. Google's constants are spelled out here
rather than imported from :mod:`mxproxy.push.fcm`, so a mistake there cannot hide in both.
Time (token expiry, assertion times) follows the injected clock, which tests share with the
client under test.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mxproxy.logs import Logger
from mxproxy.store import mask_token
from mxproxy.testing import certs

log = Logger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ASSERTION_MAX_LIFETIME = 3600
CLOCK_SKEW = 60
MAX_TTL = 28 * 24 * 3600
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_TTL = re.compile(r"(\d+)(\.\d{1,9})?s")
_MESSAGE_FIELDS = {"name", "data", "notification", "android", "webpush", "apns", "fcm_options",
                   "fcmOptions", "token", "topic", "condition"}
_ANDROID_FIELDS = {"collapse_key", "collapseKey", "priority", "ttl", "restricted_package_name",
                   "restrictedPackageName", "data", "notification", "fcm_options", "fcmOptions",
                   "direct_boot_ok", "directBootOk"}


@attrs.frozen
class Reply:
    """One answer of the fake: status, JSON body and headers; ``hang`` never answers."""

    status: int = 200
    body: Mapping[str, Any] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    hang: bool = False


HANG = Reply(hang=True)


def google_error(status: int, rpc_status: str, message: str, fcm_code: str | None = None,
                 violations: Sequence[tuple[str, str]] = (),
                 headers: Mapping[str, str] | None = None) -> Reply:
    """A google.rpc error answer with optional FcmError and BadRequest details."""
    details: list[dict[str, Any]] = []
    if fcm_code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": fcm_code})
    if violations:
        details.append({"@type": BAD_REQUEST, "fieldViolations": [
            {"field": field, "description": description} for field, description in violations]})
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return Reply(status, {"error": error}, dict(headers or {}))


UNREGISTERED = google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
SENDER_ID_MISMATCH = google_error(403, "PERMISSION_DENIED", "SenderId mismatch",
                                  "SENDER_ID_MISMATCH")
INVALID_TOKEN = google_error(400, "INVALID_ARGUMENT",
                             "The registration token is not a valid FCM registration token",
                             "INVALID_ARGUMENT")
INVALID_DATA = google_error(
    400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
    violations=[("message.data[0].value",
                 "Invalid value at 'message.data[0].value' (TYPE_STRING), 12")])
UNAVAILABLE = google_error(503, "UNAVAILABLE", "The service is currently unavailable.",
                           "UNAVAILABLE")
INTERNAL = google_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
UNAUTHENTICATED = google_error(
    401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
    "access token, login cookie or other valid authentication credential.")


def quota_exceeded(retry_after: int = 30) -> Reply:
    """429 QUOTA_EXCEEDED with a Retry-After header in seconds."""
    return google_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Messages' "
                        "of service 'fcm.googleapis.com'.", "QUOTA_EXCEEDED",
                        headers={"Retry-After": str(retry_after)})


def oauth_error(status: int, error: str, description: str) -> Reply:
    """An OAuth2 token-endpoint error answer."""
    return Reply(status, {"error": error, "error_description": description})


@attrs.frozen
class Arrival:
    """A message that passed the checks of the send endpoint, and what it was answered."""

    project_id: str
    message: Mapping[str, Any]
    access_token: str
    reply: Reply


@attrs.frozen
class _Account:
    client_email: str
    project_id: str
    key_id: str | None
    public_key: rsa.RSAPublicKey


@attrs.frozen
class _Issued:
    client_email: str
    expires: float


class _Invalid(Exception):
    """The message breaks a rule: the field at fault and Google's kind of description."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field = field
        self.description = description


class FakeFCM:
    """The state behind both endpoints: accounts, issued tokens, scripts and arrivals."""

    def __init__(self, clock: IReactorTime | None = None, token_lifetime: int = 3599) -> None:
        self.clock: IReactorTime = _default_reactor() if clock is None else clock
        self.token_lifetime = token_lifetime
        self.base_url = ""
        """``https://<interface>:<port>``, set by :func:`listen`."""
        self.trust_root: ssl.Certificate | None = None
        """What a client must trust to reach this fake, set by :func:`listen`."""
        self.mints = 0
        self.received: list[Arrival] = []
        self._accounts: dict[str, _Account] = {}
        self._issued: dict[str, _Issued] = {}
        self._scripts: dict[str, deque[Reply]] = {}
        self._token_script: deque[Reply] = deque()
        self._waiters: list[tuple[int, Deferred[list[Arrival]]]] = []
        self._message_ids = itertools.count(1)
        self._connections: _Connections | None = None

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def add_account(self, info: Mapping[str, Any]) -> None:
        """Accept assertions signed by this service account (a parsed service-account file)."""
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._accounts[info["client_email"]] = _Account(
            info["client_email"], info["project_id"], info.get("private_key_id"),
            key.public_key())

    def script(self, device_token: str, *replies: Reply) -> None:
        """Answer the next messages to ``device_token`` with ``replies``, in order."""
        self._scripts.setdefault(device_token, deque()).extend(replies)

    def script_token(self, *replies: Reply) -> None:
        """Answer the next token requests with ``replies`` instead of minting."""
        self._token_script.extend(replies)

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far is refused from now on (with a 401)."""
        self._issued.clear()

    def wait_for(self, count: int) -> Deferred[list[Arrival]]:
        """Fires with the arrivals once at least ``count`` messages have been received."""
        if len(self.received) >= count:
            return succeed(list(self.received))
        waiter: Deferred[list[Arrival]] = Deferred()
        self._waiters.append((count, waiter))
        return waiter

    def disconnect(self) -> Deferred[None]:
        """Cut every open connection (hung requests too); fires once they are all gone."""
        return succeed(None) if self._connections is None else self._connections.close_all()

    # -- the token endpoint -------------------------------------------------------------------

    def mint(self, form: Mapping[str, str]) -> Reply:
        """Answer a token request (form fields decoded)."""
        if self._token_script:
            return self._token_script.popleft()
        if form.get("grant_type") != GRANT_TYPE:
            return oauth_error(400, "unsupported_grant_type", "Invalid grant_type.")
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            issuer = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.InvalidTokenError:
            return oauth_error(400, "invalid_grant", "Invalid JWT.")
        account = self._accounts.get(issuer) if isinstance(issuer, str) else None
        kid = header.get("kid")
        if account is None or (kid is not None and kid != account.key_id):
            return oauth_error(400, "invalid_grant", "Invalid grant: account not found")
        try:
            claims = jwt.decode(assertion, account.public_key, algorithms=["RS256"],
                                audience=self.token_url,
                                options={"verify_exp": False, "verify_iat": False,
                                         "require": ["iss", "scope", "aud", "iat", "exp"]})
        except jwt.InvalidSignatureError:
            return oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
        except jwt.InvalidTokenError as e:
            return oauth_error(400, "invalid_grant", f"Invalid JWT: {e}")
        if SCOPE not in str(claims["scope"]).split():
            return oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience.")
        if not self._timely(claims["iat"], claims["exp"]):
            return oauth_error(400, "invalid_grant", "Invalid JWT: Token must be a short-lived "
                               "token (60 minutes) and in a reasonable timeframe. Check your iat "
                               "and exp values in the JWT claim.")
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._issued[token] = _Issued(account.client_email,
                                      self.clock.seconds() + self.token_lifetime)
        self.mints += 1
        return Reply(200, {"access_token": token, "expires_in": self.token_lifetime,
                           "token_type": "Bearer"})

    def _timely(self, iat: Any, exp: Any) -> bool:
        now = self.clock.seconds()
        return (isinstance(iat, int) and isinstance(exp, int) and iat < exp
                and exp - iat <= ASSERTION_MAX_LIFETIME and iat <= now + CLOCK_SKEW
                and exp > now)

    # -- the send endpoint --------------------------------------------------------------------

    def deliver(self, project_id: str, authorization: str, content_type: str,
                body: bytes) -> Reply:
        """Answer one ``messages:send`` request."""
        scheme, _, access_token = authorization.partition(" ")
        issued = self._issued.get(access_token) if scheme.lower() == "bearer" else None
        if issued is None or issued.expires <= self.clock.seconds():
            return UNAUTHENTICATED
        if self._accounts[issued.client_email].project_id != project_id:
            return google_error(403, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages."
                                f"create' denied on resource '//cloudresourcemanager.googleapis"
                                f".com/projects/{project_id}' (or it may not exist).")
        try:
            if not content_type.startswith("application/json"):
                raise _Invalid("", "Invalid JSON payload received: expected application/json.")
            message = _checked_message(body)
        except _Invalid as e:
            return google_error(400, "INVALID_ARGUMENT", e.description,
                                violations=[(e.field, e.description)])
        queued = self._scripts.get(message["token"])
        reply = queued.popleft() if queued else Reply(
            200, {"name": f"projects/{project_id}/messages/{next(self._message_ids)}"})
        self.received.append(Arrival(project_id, message, access_token, reply))
        log.info("fake FCM: message for {token}: {data}", token=mask_token(message["token"]),
                 data=json.dumps(message.get("data", {})))
        self._notify()
        return reply

    def _notify(self) -> None:
        ready = [waiter for count, waiter in self._waiters if len(self.received) >= count]
        self._waiters = [(c, w) for c, w in self._waiters if len(self.received) < c]
        for waiter in ready:
            waiter.callback(list(self.received))


def _checked_message(body: bytes) -> dict[str, Any]:
    """The ``message`` of a send request, if its shape is one FCM (and mxproxy) accepts."""
    try:
        request = json.loads(body)
    except ValueError:
        raise _Invalid("", "Invalid JSON payload received.") from None
    message = request.get("message") if isinstance(request, dict) else None
    if not isinstance(message, dict):
        raise _Invalid("message", "Invalid JSON payload received: 'message' must be an object.")
    _known_fields(message, _MESSAGE_FIELDS, "message")
    if not isinstance(message.get("token"), str) or not message["token"]:
        raise _Invalid("message", "Recipient of the message is not set.")
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise _Invalid("message.data", "Invalid value at 'message.data': not a map.")
    for index, value in enumerate(data.values()):
        if not isinstance(value, str):
            field = f"message.data[{index}].value"
            raise _Invalid(field, f"Invalid value at '{field}' (TYPE_STRING), {json.dumps(value)}")
    android = message.get("android")
    if not isinstance(android, dict):
        raise _Invalid("message.android", "mxproxy call pushes need android.priority HIGH.")
    _known_fields(android, _ANDROID_FIELDS, "message.android")
    if android.get("priority") != "HIGH":
        raise _Invalid("message.android.priority",
                       "Invalid value at 'message.android.priority': call pushes must be HIGH.")
    ttl = android.get("ttl", "0s")
    match = _TTL.fullmatch(ttl) if isinstance(ttl, str) else None
    if match is None or int(match.group(1)) > MAX_TTL:
        raise _Invalid("message.android.ttl", "Invalid value at 'message.android.ttl' "
                       f"(type.googleapis.com/google.protobuf.Duration), {json.dumps(ttl)}")
    return message


def _known_fields(value: Mapping[str, Any], known: set[str], where: str) -> None:
    for name in value:
        if name not in known:
            raise _Invalid(where, f"Invalid JSON payload received. Unknown name \"{name}\" at "
                           f"'{where}': Cannot find field.")


class _Endpoints(Resource):
    """Routes both endpoints to the :class:`FakeFCM`; every answer is JSON."""

    isLeaf = True

    def __init__(self, fake: FakeFCM) -> None:
        super().__init__()
        self.fake = fake

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode("ascii", "replace")
        assert request.content is not None
        if path == "/token":
            form = {key.decode(): values[0].decode() for key, values in
                    (request.args or {}).items()}
            reply = self.fake.mint(form)
        elif match := _SEND_PATH.fullmatch(path):
            reply = self.fake.deliver(match.group(1), _header(request, b"authorization"),
                                      _header(request, b"content-type"), request.content.read())
        else:
            reply = google_error(404, "NOT_FOUND", f"Unknown path {path}.")
        if reply.hang:
            return NOT_DONE_YET  # the client's timeout ends it, or FakeFCM.disconnect
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        return json.dumps(reply.body).encode()


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return "" if value is None else value.decode("latin-1")


class _Connections(WrappingFactory):
    """Keeps the live connections, so the fake can cut them and tell when they are gone."""

    def __init__(self, wrapped: Site) -> None:
        super().__init__(wrapped)
        self._gone: list[Deferred[None]] = []

    def unregisterProtocol(self, protocol: Protocol) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            gone, self._gone = self._gone, []
            for waiter in gone:
                waiter.callback(None)

    def close_all(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._gone.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.abortConnection()
        return waiter


def listen(fake: FakeFCM, port: int = 0, interface: str = "127.0.0.1", reactor: Any = None,
           certificate: certs.CertifiedKey | None = None) -> IListeningPort:
    """Serve ``fake`` over HTTPS; sets its ``base_url`` and ``trust_root``. The default
    certificate is issued by a throw-away CA for localhost and the loopback addresses."""
    reactor = _default_reactor() if reactor is None else reactor
    if certificate is None:
        certificate = certs.certificate_authority("mxproxy fake Google CA").issue()
    site = Site(_Endpoints(fake))
    site.displayTracebacks = False
    connections = _Connections(site)
    listening: IListeningPort = reactor.listenSSL(port, connections,
                                                  certificate.server_options(),
                                                  interface=interface)
    address = listening.getHost()
    assert isinstance(address, (IPv4Address, IPv6Address))
    host = f"[{interface}]" if ":" in interface else interface
    fake.base_url = f"https://{host}:{address.port}"
    anchor = certificate.chain_pem[-1] if certificate.chain_pem else certificate.cert_pem
    fake.trust_root = ssl.Certificate.loadPEM(anchor)
    fake._connections = connections
    return listening


def make_service_account(fake_base_url: str, project_id: str = "demo-project",
                         directory: str | None = None) -> tuple[dict[str, Any], str]:
    """A new RSA key in a service-account file shaped like Firebase's, whose ``token_uri``
    is the fake's; returns the parsed file and its path (in ``directory``, else a temp dir)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    name = f"firebase-adminsdk-{secrets.token_hex(3)}"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": f"{name}@{project_id}.iam.gserviceaccount.com",
        "client_id": str(secrets.randbits(64)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": f"{fake_base_url.rstrip('/')}/token",
        "universe_domain": "googleapis.com",
    }
    handle, path = tempfile.mkstemp(prefix="fcm-service-account-", suffix=".json", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(info, file, indent=2)
    return info, path


def _default_reactor() -> Any:
    from twisted.internet import reactor

    return reactor
