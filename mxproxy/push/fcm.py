"""Google FCM HTTP v1 sender: service-account credentials, OAuth2 access tokens, one push per call.

A push is ``POST {base}/v1/projects/<project>/messages:send`` with a bearer access token. The token
comes from the service account's ``token_uri`` in exchange for an RS256 JWT assertion (the OAuth2
JWT-bearer grant); it is cached and renewed 5 minutes before it expires, and callers arriving
during a renewal share it. Every HTTP exchange gets a deadline on the injected clock.

Google's error answers are classified into :class:`FCMResponse`; only what proves a device token
dead sets ``token_invalid`` (see :func:`classify_response`), so a payload bug never prunes tokens.
"""

from __future__ import annotations

import email.utils
import json
import os
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

import attrs
import jwt
import treq
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import error as net
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

from mxproxy.logs import Logger
from mxproxy.store import mask_token

T = TypeVar("T")

DEFAULT_BASE_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
"""Google refuses assertions that live longer than an hour."""
REFRESH_MARGIN = 300.0
"""Renew an access token this long before Google says it expires."""
MAX_TTL = 28 * 24 * 3600
"""FCM keeps a message at most four weeks."""
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
TOKEN_FIELD = "message.token"
_DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
_REQUIRED_FIELDS = ("project_id", "client_email", "private_key", "token_uri")
_CONNECTION_FAILURES = (net.ConnectError, net.DNSLookupError, net.ConnectionClosed, ResponseFailed,
                        ResponseNeverReceived, RequestTransmissionFailed, SSL.Error)

log = Logger(__name__)


class FCMError(Exception):
    """No answer from Google: the base of the typed failures of this module."""


class FCMAuthError(FCMError):
    """The token endpoint refused the service account or gave no usable access token."""


class FCMTimeout(FCMError):
    """Google did not answer within the request timeout."""


class FCMUnavailable(FCMError):
    """The connection to Google failed (DNS, refused, TLS, reset)."""


@attrs.frozen
class ServiceAccount:
    """The parts of a Firebase service-account JSON file that sending needs."""

    project_id: str
    client_email: str
    private_key: str = attrs.field(repr=False)
    token_uri: str
    private_key_id: str | None = None

    @classmethod
    def from_file(cls, path: str) -> ServiceAccount:
        """Read and check a service-account file; a ``ValueError`` says what is wrong."""
        where = f"FCM service-account file {path!r}"
        text = _read(path)
        try:
            info = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{where} is not JSON: {e}") from None
        if not isinstance(info, dict):
            raise ValueError(f"{where} is not a JSON object")
        if info.get("type") != "service_account":
            raise ValueError(f'{where} has "type": {json.dumps(info.get("type"))}, not '
                             '"service_account" (Firebase console: Project settings > Service '
                             'accounts > Generate new private key)')
        missing = [name for name in _REQUIRED_FIELDS
                   if not isinstance(info.get(name), str) or not info[name]]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        if not info["token_uri"].startswith("https://"):
            raise ValueError(f"{where}: token_uri must be an https:// URL")
        if not _is_rsa_key(info["private_key"]):
            raise ValueError(f"{where}: private_key is not an unencrypted PEM RSA private key")
        key_id = info.get("private_key_id")
        return cls(info["project_id"], info["client_email"], info["private_key"],
                   info["token_uri"], key_id if isinstance(key_id, str) and key_id else None)


def _read(path: str) -> str:
    if not os.path.exists(path):
        # The original took a legacy server key here, a secret: never echo the value (the
        # config loader makes it look like a path); the caller names the config entry.
        raise ValueError(
            "FCM credentials: no such file. Google shut the legacy FCM API "
            "(fcm/send with a server key) down in 2024; the value must be the path of a "
            "Firebase service-account JSON file (HTTP v1)")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ValueError(f"cannot read FCM service-account file {path!r}: {reason}") from None


def _is_rsa_key(pem: str) -> bool:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return isinstance(key, rsa.RSAPrivateKey)


class AccessTokens:
    """OAuth2 access tokens for one service account: minted on demand, reused until
    :data:`REFRESH_MARGIN` before they expire; callers arriving during a mint share it."""

    def __init__(self, account: ServiceAccount, http_client: HTTPClient, clock: IReactorTime,
                 timeout: float = 5.0) -> None:
        self._account = account
        self._http = http_client
        self._clock = clock
        self._timeout = timeout
        self._token: str | None = None
        self._fresh_until = 0.0
        self._waiters: list[Deferred[str]] | None = None

    def get(self) -> Deferred[str]:
        """A valid access token; fails with :class:`FCMAuthError`, :class:`FCMTimeout` or
        :class:`FCMUnavailable`. A failed mint is not remembered: the next call tries again."""
        if self._token is not None and self._clock.seconds() < self._fresh_until:
            return succeed(self._token)
        # Each caller gets its own Deferred, so one caller cancelling does not stop the mint.
        waiter: Deferred[str] = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        minting = _deadline(Deferred.fromCoroutine(self._mint()), self._timeout, self._clock,
                            "the OAuth2 token endpoint")
        minting.addBoth(self._settle)
        return waiter

    def invalidate(self, rejected: str) -> None:
        """Forget ``rejected`` after FCM answered 401 to it; a newer token is kept, so that
        several requests refused together cause one mint."""
        if self._token == rejected:
            self._token = None

    def _settle(self, result: str | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _mint(self) -> str:
        now = self._clock.seconds()
        account = self._account
        claims = {"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri,
                  "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME}
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        assertion = jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)
        form = {"grant_type": GRANT_TYPE, "assertion": assertion}
        try:
            response = await self._http.post(account.token_uri, data=form, allow_redirects=False)
            body = await treq.content(response)
        except _CONNECTION_FAILURES as e:
            raise FCMUnavailable(f"OAuth2 token endpoint {account.token_uri}: {_reason(e)}") \
                from None
        token, lifetime = _parse_grant(response.code, body)
        self._token = token
        # Short-lived tokens are still used for half their life rather than minted per push.
        self._fresh_until = now + max(lifetime - REFRESH_MARGIN, lifetime / 2)
        log.debug("FCM access token for {project} minted, valid {lifetime} s",
                  project=account.project_id, lifetime=lifetime)
        return token


def _parse_grant(status: int, body: bytes) -> tuple[str, float]:
    """The access token and its lifetime from the token endpoint's answer."""
    reply = _json_object(body)
    if status != 200:
        detail = reply.get("error_description") or reply.get("error") or f"{len(body)} bytes"
        raise FCMAuthError(f"OAuth2 token endpoint answered {status}: {detail}")
    token, lifetime = reply.get("access_token"), reply.get("expires_in")
    if (not isinstance(token, str) or not token or isinstance(lifetime, bool)
            or not isinstance(lifetime, (int, float)) or lifetime <= 0
            or str(reply.get("token_type", "")).lower() != "bearer"):
        raise FCMAuthError("OAuth2 token endpoint answered 200 without a usable bearer token")
    return token, float(lifetime)


@attrs.frozen
class FCMResponse:
    """Google's answer to one send. ``error_code`` is the FcmError ``errorCode`` if there is
    one, else the google.rpc ``status``; ``name`` is the message id of an accepted push."""

    status: int
    error_code: str | None
    message: str | None
    retry_after: float | None
    token_invalid: bool
    name: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def build_message(token: str, data: Mapping[str, str], ttl_seconds: int,
                  collapse_key: str | None = None,
                  notification: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The JSON body of a high-priority push: data only for calls (the app rings), with a
    ``notification`` (title, body) that Android shows by itself for news such as voicemail."""
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"FCM data must map strings to strings; {key!r} is not")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) \
            or not 0 <= ttl_seconds <= MAX_TTL:
        raise ValueError(f"FCM ttl must be whole seconds from 0 to {MAX_TTL}: {ttl_seconds!r}")
    android: dict[str, str] = {"priority": "HIGH", "ttl": f"{ttl_seconds}s"}
    if collapse_key is not None:
        android["collapse_key"] = collapse_key
    message: dict[str, Any] = {"token": token, "data": dict(data), "android": android}
    if notification is not None:
        message["notification"] = dict(notification)
    return {"message": message}


def classify_response(status: int, body: bytes, retry_after: str | None = None,
                      now: float = 0.0) -> FCMResponse:
    """Read one answer of ``messages:send``; ``retry_after`` is the raw header, ``now`` the
    time an HTTP-date in it is measured from.

    ``token_invalid`` is set for FcmError ``UNREGISTERED`` (404) and ``SENDER_ID_MISMATCH``
    (403), and for ``INVALID_ARGUMENT`` (400) only when the answer blames the token: a
    google.rpc.BadRequest field violation on ``message.token``, or, without any field
    violation, an FcmError ``INVALID_ARGUMENT`` whose message names an invalid registration
    token (Google's documented answer, "The registration token is not a valid FCM registration
    token"). INVALID_ARGUMENT also covers payload mistakes (bad data, TTL, size, package name);
    those leave the token alone, as does any 403 that is not SENDER_ID_MISMATCH.
    """
    reply = _json_object(body)
    if 200 <= status < 300:
        name = reply.get("name")
        return FCMResponse(status, None, None, None, False, name if isinstance(name, str) else None)
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    details = error.get("details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    fcm_code = next((d["errorCode"] for d in details if d.get("@type") == FCM_ERROR_TYPE
                     and isinstance(d.get("errorCode"), str)), None)
    rpc_status = error.get("status")
    code = fcm_code or (rpc_status if isinstance(rpc_status, str) else None)
    message = error.get("message") if isinstance(error.get("message"), str) else None
    fields = {violation.get("field") for d in details if d.get("@type") == BAD_REQUEST_TYPE
              for violation in _list(d.get("fieldViolations")) if isinstance(violation, dict)}
    if code in _DEAD_TOKEN_CODES:
        dead = True
    elif code != "INVALID_ARGUMENT":
        dead = False
    elif fields:
        dead = TOKEN_FIELD in fields
    else:
        text = (message or "").lower()
        dead = fcm_code == "INVALID_ARGUMENT" and "registration token" in text \
            and ("not a valid" in text or "invalid" in text)
    return FCMResponse(status, code, message, _retry_after(retry_after, now), dead)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo is not None else None


class FCMClient:
    """Sends pushes through FCM HTTP v1 for one service account (one Firebase project)."""

    def __init__(self, reactor: Any, account: ServiceAccount, base_url: str = DEFAULT_BASE_URL,
                 http_client: HTTPClient | None = None, clock: IReactorTime | None = None,
                 request_timeout: float = 5.0,
                 trust_root: Any = None) -> None:
        """Without ``http_client``, connections are pooled and verified against
        ``trust_root`` (an ``IOpenSSLTrustRoot`` such as ``ssl.Certificate``; default: the
        platform's CAs); a given client is used as it is."""
        self._clock: IReactorTime = reactor if clock is None else clock
        self._pool: HTTPConnectionPool | None = None
        if http_client is None:
            self._pool = HTTPConnectionPool(reactor)
            agent = Agent(reactor, BrowserLikePolicyForHTTPS(trust_root), pool=self._pool)
            http_client = HTTPClient(agent)
        self._http = http_client
        self._timeout = request_timeout
        self._url = f"{base_url.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
        self.account = account
        self.tokens = AccessTokens(account, http_client, self._clock, request_timeout)

    def send(self, token: str, data: Mapping[str, str], ttl_seconds: int,
             collapse_key: str | None = None,
             notification: Mapping[str, str] | None = None) -> Deferred[FCMResponse]:
        """Push ``data`` to one device. Any HTTP answer becomes an :class:`FCMResponse`;
        no answer fails with :class:`FCMTimeout`, :class:`FCMUnavailable` or
        :class:`FCMAuthError`. A 401 renews the access token and retries once."""
        return Deferred.fromCoroutine(self._send(token, data, ttl_seconds, collapse_key,
                                                 notification))

    def close(self) -> Deferred[None]:
        """Close the kept-alive connections of the pool this client made, if it made one."""
        return succeed(None) if self._pool is None else self._pool.closeCachedConnections()

    async def _send(self, token: str, data: Mapping[str, str], ttl_seconds: int,
                    collapse_key: str | None,
                    notification: Mapping[str, str] | None) -> FCMResponse:
        body = build_message(token, data, ttl_seconds, collapse_key, notification)
        access = await self.tokens.get()
        response = await self._post(access, body)
        # THIRD_PARTY_AUTH_ERROR is a 401 about the app's APNs credential, not our token.
        if response.status == 401 and response.error_code != "THIRD_PARTY_AUTH_ERROR":
            self.tokens.invalidate(access)
            response = await self._post(await self.tokens.get(), body)
        log.debug("FCM push to {device}: {status} {code}", device=mask_token(token),
                  status=response.status, code=response.error_code or "")
        return response

    def _post(self, access: str, body: dict[str, Any]) -> Deferred[FCMResponse]:
        return _deadline(Deferred.fromCoroutine(self._exchange(access, body)), self._timeout,
                         self._clock, "FCM")

    async def _exchange(self, access: str, body: dict[str, Any]) -> FCMResponse:
        headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {access}"}
        try:
            # No redirects: the bearer token must only ever go to the configured host.
            response = await self._http.post(self._url, json=body, allow_redirects=False,
                                             headers=headers)
            raw = await treq.content(response)
        except _CONNECTION_FAILURES as e:
            raise FCMUnavailable(f"FCM {self._url}: {_reason(e)}") from None
        retry_after = response.headers.getRawHeaders("retry-after")
        return classify_response(response.code, raw, retry_after[-1] if retry_after else None,
                                 self._clock.seconds())


def _deadline(d: Deferred[T], seconds: float, clock: IReactorTime, peer: str) -> Deferred[T]:
    """Cancel ``d`` after ``seconds`` on ``clock`` and fail it with :class:`FCMTimeout`."""
    def expired(result: object, timeout: float) -> NoReturn:
        raise FCMTimeout(f"{peer} did not answer within {timeout:g} s")

    return d.addTimeout(seconds, clock, onTimeoutCancel=expired)


def _reason(error: Exception) -> str:
    """A connection failure in words; the web client wraps the real causes in ``reasons``."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(reason.getErrorMessage() for reason in reasons)
    return str(error) or type(error).__name__


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
