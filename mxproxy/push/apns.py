"""APNs: the HTTP/2 client (credentials are in :mod:`mxproxy.push.credentials`).

One :class:`APNsClient` per (APNs host, credential) keeps one long-lived connection, multiplexes
requests over it, and replaces it when it is lost or the server says GOAWAY. A token key mints
one provider JWT and reuses it for 40 minutes on every connection: Apple rejects tokens older
than an hour and answers ``429 TooManyProviderTokenUpdates`` to tokens renewed more often than
every 20 minutes.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import attrs
from hpack import NeverIndexedHeaderTuple
from OpenSSL import crypto
from twisted.application.internet import backoffPolicy
from twisted.internet import ssl
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from mxproxy.logs import Logger
from mxproxy.push.credentials import (
    DEVELOPMENT,
    PRODUCTION,
    APNsCertificate,
    APNsTokenKey,
    Credential,
)
from mxproxy.push.h2client import CLOSED, READY, H2ClientConnection, H2Response, StreamFailed
from mxproxy.store import mask_token

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

log = Logger(__name__)

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PORT = 443
HOSTS = {PRODUCTION: PRODUCTION_HOST, DEVELOPMENT: SANDBOX_HOST}


REQUEST_TIMEOUT = 5.0
PING_INTERVAL = 60.0
PING_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
MAX_QUEUED = 1000
RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 60.0
CLOSE_TIMEOUT = 5.0
MAX_RETRIES = 2

_HEX = re.compile(r"[0-9a-fA-F]+")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")
_CREDENTIAL_REASONS = frozenset({
    "BadCertificate", "BadCertificateEnvironment", "ExpiredProviderToken", "Forbidden",
    "InvalidProviderToken", "MissingProviderToken", "TooManyProviderTokenUpdates",
    "TopicDisallowed",
})


class APNsError(Exception):
    """Base of the failures of an APNs request that are not an APNs answer."""


class APNsUnavailable(APNsError):
    """APNs could not be reached, the connection broke, or the client is closed or full."""


class APNsTimeout(APNsError):
    """No answer within the request timeout (the stream was reset)."""


# -- responses and requests ----------------------------------------------------------------


@attrs.frozen
class APNsResponse:
    """What APNs answered. ``timestamp`` (ms) comes with 410 Unregistered; ``retry_after`` (s)
    when the server sent a ``retry-after`` header."""

    status: int
    reason: str | None = None
    timestamp: int | None = None
    apns_id: str | None = None
    retry_after: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @classmethod
    def from_http(cls, response: H2Response) -> APNsResponse:
        try:
            body = json.loads(response.body) if response.body else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        reason, timestamp = body.get("reason"), body.get("timestamp")
        retry_after = response.headers.get("retry-after", "")
        return cls(response.status, reason if isinstance(reason, str) else None,
                   timestamp if isinstance(timestamp, int) else None,
                   response.headers.get("apns-id"),
                   int(retry_after) if retry_after.isdigit() else None)


@attrs.define(eq=False)
class _Request:
    token: str
    headers: list[tuple[str, str]]
    body: bytes
    result: Deferred[APNsResponse] = attrs.field(init=False)
    timer: IDelayedCall = attrs.field(init=False)
    stream: Deferred[H2Response] | None = None
    retries: int = 0
    abandoned: bool = False


# -- the client --------------------------------------------------------------------------------


class APNsClient:
    """Sends notifications to one APNs host with one credential over one HTTP/2 connection.

    The connection opens on the first send and carries up to the server's concurrent-stream
    limit; further requests wait in a bounded queue. A lost connection is replaced on demand;
    after GOAWAY the old one finishes its requests while new ones go to a new connection. After
    a failed connection attempt, sends fail at once until a backoff delay (1 s doubling to
    60 s) has passed.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        credential: Credential,
        trust_root: IOpenSSLTrustRoot | bytes | None = None,
        clock: IReactorTime | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        max_queued: int = MAX_QUEUED,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.label = f"{host}:{port}"
        self.credential = credential
        self._authority = host if port == APNS_PORT else self.label
        self._clock: IReactorTime = reactor if clock is None else clock
        self._endpoint = wrapClientTLS(_tls_options(host, credential, trust_root),
                                       HostnameEndpoint(reactor, host, port, connect_timeout))
        self._request_timeout = request_timeout
        self._ping = (ping_interval, ping_timeout)
        self._max_queued = max_queued
        self._queue: deque[_Request] = deque()
        self._active: H2ClientConnection | None = None
        self._opening: H2ClientConnection | None = None
        self._attempt: Deferred[H2ClientConnection] | None = None
        self._draining: set[H2ClientConnection] = set()
        self._backoff = backoffPolicy(RECONNECT_INITIAL, RECONNECT_MAX, 2.0, lambda: 0.0)
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._credential_problem: str | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while a connection is ready for requests."""
        return self._active is not None

    def send(self, token: str, topic: str, push_type: str, payload: dict[str, Any],
             priority: int = 10, expiration: int = 0,
             collapse_id: str | None = None) -> Deferred[APNsResponse]:
        """POST one notification; fires with APNs' answer, whatever its status.

        Fails with ``APNsTimeout`` after the request timeout and ``APNsUnavailable`` when the
        connection cannot be had or breaks first. Cancelling abandons the request. Raises
        ``ValueError`` at once for a value that cannot go into a request header.
        """
        if not _HEX.fullmatch(token):
            raise ValueError("an APNs device token is hexadecimal")
        for name, value in (("topic", topic), ("push type", push_type),
                            ("collapse id", collapse_id or "-")):
            if not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"the APNs {name} must be printable ASCII without spaces")
        refusal = self._refusal()
        if refusal is not None:
            return fail(APNsUnavailable(refusal))
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = [(":method", "POST"), (":scheme", "https"), (":authority", self._authority),
                   _never_indexed(":path", f"/3/device/{token}"), ("apns-topic", topic),
                   ("apns-push-type", push_type), ("apns-priority", str(priority)),
                   ("apns-expiration", str(expiration)), ("content-type", "application/json"),
                   ("content-length", str(len(body)))]
        if collapse_id is not None:
            headers.append(("apns-collapse-id", collapse_id))
        request = _Request(token, headers, body)
        request.result = Deferred(lambda _: self._abandon(request))
        request.timer = self._clock.callLater(self._request_timeout, self._expire, request)
        self._queue.append(request)
        self._pump()
        return request.result

    def close(self, timeout: float = CLOSE_TIMEOUT) -> Deferred[None]:
        """Refuse new sends, fail the queued ones, give those in flight up to ``timeout``
        seconds, then disconnect. Fires once every connection is gone."""
        self._closed = True
        self._fail_queue("the APNs client is closed")
        if self._attempt is not None and not self._attempt.called:
            self._attempt.cancel()
        connections = [conn for conn in (self._active, self._opening, *self._draining) if conn]
        closing = DeferredList([conn.close(timeout) for conn in connections])
        return closing.addCallback(lambda _: None)

    # -- queue and connections --------------------------------------------------------------

    def _refusal(self) -> str | None:
        if self._closed:
            return "the APNs client is closed"
        if len(self._queue) >= self._max_queued:
            return f"{len(self._queue)} requests are already waiting for APNs {self.label}"
        wait = self._retry_at - self._clock.seconds()
        if self._active is None and self._opening is None and wait > 0:
            return (f"APNs {self.label} is unreachable ({self._last_error}); "
                    f"next attempt in {wait:.1f} s")
        return None

    def _pump(self) -> None:
        """Start what the connection has room for; open one if work waits and none is up."""
        conn = self._active
        while self._queue and conn is not None and conn.can_open_stream:
            self._start(self._queue.popleft(), conn)
        if self._queue and conn is None and self._opening is None and not self._closed:
            self._connect()

    def _connect(self) -> None:
        interval, timeout = self._ping
        conn = H2ClientConnection(self._clock, self._connection_changed, self.label,
                                  interval, timeout)
        self._opening = conn
        self._attempt = connectProtocol(self._endpoint, conn)
        self._attempt.addErrback(self._connect_failed, conn)

    def _connect_failed(self, failure: Failure, conn: H2ClientConnection) -> None:
        if conn is self._opening:
            self._opening = None
            self._unreachable(failure.getErrorMessage())

    def _connection_changed(self, conn: H2ClientConnection) -> None:
        if conn is self._opening and conn.state == READY:
            self._opening, self._active, self._failures = None, conn, 0
            log.info("APNs {label}: connected, up to {streams} requests at a time",
                     label=self.label, streams=conn.max_concurrent_streams)
        elif conn is self._opening and conn.state == CLOSED:
            self._opening = None
            self._unreachable(conn.error or "connection closed")
        elif conn is self._active and conn.state != READY:
            self._active = None
            self._draining.add(conn)
        if conn.state == CLOSED and conn in self._draining:
            self._draining.discard(conn)
            log.info("APNs {label}: disconnected ({error})", label=self.label, error=conn.error)
        self._pump()

    def _unreachable(self, error: str) -> None:
        if self._closed:
            return
        delay = self._backoff(self._failures)
        self._failures += 1
        self._retry_at = self._clock.seconds() + delay
        self._last_error = error
        log.warn("APNs {label}: cannot connect ({error}); next attempt in {delay:g} s at the "
                 "earliest", label=self.label, error=error, delay=delay)
        self._fail_queue(f"cannot connect to APNs {self.label}: {error}")

    def _fail_queue(self, message: str) -> None:
        queued, self._queue = self._queue, deque()
        for request in queued:
            request.timer.cancel()
            request.result.errback(APNsUnavailable(message))

    # -- one request ------------------------------------------------------------------------

    def _start(self, request: _Request, conn: H2ClientConnection) -> None:
        headers = request.headers
        if isinstance(self.credential, APNsTokenKey):
            bearer = self.credential.provider_token(self._clock.seconds())
            headers = [*headers, ("authorization", f"bearer {bearer}")]
        stream = request.stream = conn.request(headers, request.body)
        stream.addCallbacks(lambda response: self._answered(request, response),
                            lambda failure: self._failed(request, failure))

    def _answered(self, request: _Request, response: H2Response) -> None:
        request.stream = None
        if request.abandoned:
            return
        answer = APNsResponse.from_http(response)
        if (answer.reason == "ExpiredProviderToken" and isinstance(self.credential, APNsTokenKey)
                and self.credential.renew_expired(self._clock.seconds())
                and self._retry(request)):
            return
        self._note_credential(answer)
        log.debug("APNs {label}: {token} answered {status} {reason}", label=self.label,
                  token=mask_token(request.token), status=answer.status, reason=answer.reason)
        request.timer.cancel()
        request.result.callback(answer)

    def _failed(self, request: _Request, failure: Failure) -> None:
        request.stream = None
        if request.abandoned:
            return  # the cancellation we asked for
        error = failure.value
        if isinstance(error, StreamFailed) and error.retriable and self._retry(request):
            return
        request.timer.cancel()
        request.result.errback(APNsUnavailable(str(error)))

    def _retry(self, request: _Request) -> bool:
        """Send again a request the server never processed (or refused for a stale JWT), a
        few times at most: a server going away on every connection must not loop."""
        if request.retries >= MAX_RETRIES:
            return False
        request.retries += 1
        self._queue.appendleft(request)
        self._pump()
        return True

    def _expire(self, request: _Request) -> None:
        self._abandon(request)
        request.result.errback(APNsTimeout(
            f"no answer from APNs {self.label} within {self._request_timeout:g} s"))

    def _abandon(self, request: _Request) -> None:
        """Forget a timed-out or cancelled request: unqueue it or reset its stream."""
        request.abandoned = True
        if request.timer.active():
            request.timer.cancel()
        if request in self._queue:
            self._queue.remove(request)
        if request.stream is not None:
            request.stream.cancel()

    def _note_credential(self, answer: APNsResponse) -> None:
        """Log a refused credential once per episode, not once per notification."""
        if answer.reason in _CREDENTIAL_REASONS:
            if answer.reason != self._credential_problem:
                log.error("APNs {label}: credential {credential} refused: {status} {reason}",
                          label=self.label, credential=self.credential, status=answer.status,
                          reason=answer.reason)
            self._credential_problem = answer.reason
        elif answer.ok:
            self._credential_problem = None


def _tls_options(host: str, credential: Credential,
                 trust_root: IOpenSSLTrustRoot | bytes | None) -> Any:
    """TLS client options: ALPN h2 only, the credential's certificate if it is one."""
    roots = (ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(trust_root)])
             if isinstance(trust_root, bytes) else trust_root)
    if not isinstance(credential, APNsCertificate):
        return ssl.optionsForClientTLS(host, roots, acceptableProtocols=[b"h2"])
    chain = [crypto.X509.from_cryptography(cert) for cert in credential.chain]
    return ssl.optionsForClientTLS(host, roots, credential.tls_identity(), [b"h2"],
                                   extraCertificateOptions={"extraCertChain": chain})


def _never_indexed(name: str, value: str) -> tuple[str, str]:
    """A header HPACK sends without adding it to its table: a device token is private, and each
    is sent once, so indexing it would only push reusable headers out of the table (a burst
    encoded ~35% faster). hpack's marker type is a plain (name, value) tuple."""
    return cast(tuple[str, str], NeverIndexedHeaderTuple(name, value))
