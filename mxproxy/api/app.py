"""The routes of the original product under ``/mx/<mx-name>/`` (see docs/openapi.yaml).

Each request: find the MX, read Basic credentials, refuse throttled clients, then either answer
from the server link's cache (address book) or run MX commands on the user's pooled session.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import parse_qs

import attrs
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from mxproxy.api.errors import HTTPError, as_http_error, bad_request, not_found, write_error
from mxproxy.api.request import APIRequest
from mxproxy.api.voicemail import VoicemailStream, attachment, check_first, content_type
from mxproxy.calllog import CallLogTiming, fetch_call_log
from mxproxy.csta import commands
from mxproxy.csta.errors import CSTAError, LoginError
from mxproxy.csta.messages import Chunk, MakeCallResult, VoiceMailList
from mxproxy.logs import Logger
from mxproxy.metrics import DISCONNECTED, Metrics
from mxproxy.mx import AddressBook, MXServer
from mxproxy.sessions import AuthCache, Identity, LoginThrottle, SessionPool, UserSession

T = TypeVar("T")
log = Logger(__name__)

RING_DELAY = (1, 0, 120)  # default, lowest, highest (seconds)
VM_DELAY = (30, 0, 300)
DEFAULT_TIMING = CallLogTiming()
_DIGITS = re.compile(r"[0-9]+")
_TOKEN = re.compile(r"[A-Za-z0-9_:-]{20,4096}")
_APNS_TOKEN = re.compile(r"(?:[0-9A-Fa-f]{2}){10,2048}")
_VARIABLE = re.compile(r"<(?:[^:>]*:)?([^>]+)>")
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


class Devices(Protocol):
    """Device-token registration for one MX (the push side implements it)."""

    def supports(self, provider: str, bundle: str, sandbox: bool) -> bool: ...

    async def register(self, jid: str, provider: str, bundle: str, sandbox: bool,
                       token: str) -> None: ...

    async def unregister(self, jid: str, provider: str, bundle: str, sandbox: bool,
                         token: str) -> None: ...


@attrs.frozen
class MXAccess:
    """What the API needs of one configured MX: its server link, its user sessions, and its
    device registrations (None when no push provider is configured)."""

    server: MXServer
    pool: SessionPool
    devices: Devices | None = None


@attrs.frozen
class Caller:
    """An authenticated request's MX and credentials (the password only travels, never stays)."""

    mx: str
    access: MXAccess
    login: str
    password: str = attrs.field(repr=False)
    address: str


class _Routing(Klein):
    """Klein that notes on each request the template of the route it matched (``route``), the
    label of the HTTP metrics: raw paths would make a series per MX, user and voicemail."""

    def execute_endpoint(self, endpoint: str, request: IRequest, *args: Any,
                         **kwargs: Any) -> Any:
        cast(APIRequest, request).route = _TEMPLATES[endpoint]
        return super().execute_endpoint(endpoint, request, *args, **kwargs)


class API:
    """The Klein application; one instance serves every configured MX. ``metrics`` receives the
    HTTP requests (a registry of its own when not given)."""

    app = _Routing()

    def __init__(self, access: Mapping[str, MXAccess], clock: IReactorTime,
                 call_log_timing: CallLogTiming = DEFAULT_TIMING,
                 metrics: Metrics | None = None) -> None:
        self._access = dict(access)
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.auth = AuthCache(clock)
        self.throttle = LoginThrottle(clock)
        self._call_log_timing = call_log_timing
        self._books: dict[str, tuple[AddressBook, int, bytes]] = {}
        """The encoded address book per MX, valid while the book and its version are."""

    def resource(self) -> Resource:
        return _Routes(self)

    def cached_address_book(self, request: Request) -> bytes | None:
        """The answer to ``GET /mx/<mx>/addressbook`` when nothing but the happy path applies
        (valid cached credentials, not throttled, book loaded); otherwise None. Its
        Content-Length is left to twisted.web, which sets it for a body returned whole."""
        postpath = request.postpath or []
        if (request.method != b"GET" or len(postpath) != 3 or postpath[0] != b"mx"
                or postpath[2] != b"addressbook"):
            return None
        mx = postpath[1].decode("utf-8", "replace")
        access = self._access.get(mx)
        try:
            login, password = _basic_credentials(request)
        except HTTPError:
            return None
        if (access is None or access.server.info is None
                or self.auth.check(mx, login, password) is None
                or self.throttle.retry_after((mx, login), _client_address(request)) is not None):
            return None
        request.setHeader(b"Content-Type", b"application/json")
        return self._address_book(mx, access.server)

    # -- routes -------------------------------------------------------------------------------

    @app.route("/mx/<mx>/addressbook", methods=["GET"])
    async def addressbook(self, request: Request, mx: str) -> bytes:
        caller = self._caller(request, mx)
        await self._identify(caller)
        return _json_body(request, self._address_book(mx, caller.access.server))

    def _address_book(self, mx: str, server: MXServer) -> bytes:
        """The encoded book, made again only when the book or its version changed."""
        if server.info is None:
            raise HTTPError(503, "the address book of this MX has not been loaded yet")
        book = server.address_book
        cached = self._books.get(mx)
        if cached is None or cached[0] is not book or cached[1] != book.version:
            body = _encode({"addressbook": {c.jid: c.to_json() for c in book}})
            cached = self._books[mx] = (book, book.version, body)
        return cached[2]

    @app.route("/mx/<mx>/calllog", methods=["GET"])
    async def calllog(self, request: Request, mx: str) -> bytes:
        caller = self._caller(request, mx)
        since = _timestamp(request)

        async def fetch(session: UserSession) -> list[Any]:
            return await fetch_call_log(session.protocol, since, self._call_log_timing)

        entries = await self._on_session(caller, fetch)
        return _json(request, {"callog": [entry.to_json() for entry in entries]})

    @app.route("/mx/<mx>/call", methods=["POST"])
    async def call(self, request: Request, mx: str) -> bytes:
        caller = self._caller(request, mx)
        fields = _fields(request)
        source, target = _text(fields, "from"), _text(fields, "to")
        ring_delay = _seconds(fields, "ringDelay", *RING_DELAY)
        vm_delay = _seconds(fields, "vmDelay", *VM_DELAY)

        async def make_call(session: UserSession) -> MakeCallResult:
            session.protocol.send(commands.set_mode("remote", source, ring_delay, vm_delay))
            reply = await session.protocol.request(
                commands.make_call(session.identity.ext, target))
            return MakeCallResult.from_xml(reply.element)

        result = await self._on_session(caller, make_call, retry=False)
        return _json(request, result.to_json())

    @app.route("/mx/<mx>/token/<kind>/<bundle>", methods=["POST", "DELETE"])
    async def token(self, request: Request, mx: str, kind: str, bundle: str) -> bytes:
        caller = self._caller(request, mx)
        identity = await self._identify(caller)
        devices = caller.access.devices
        if devices is None:
            raise HTTPError(501, "push notifications are not configured on this server")
        sandbox = _has_key(request, b"sandbox") and kind == "apns"
        if kind not in ("apns", "gfcm"):
            raise not_found(f"unsupported push type {kind!r}: use apns or gfcm")
        if not devices.supports(kind, bundle, sandbox):
            raise not_found(f"unsupported {kind} bundle {bundle!r}"
                            + (" (sandbox)" if sandbox else ""))
        token = _fields(request).get("token")
        pattern = _APNS_TOKEN if kind == "apns" else _TOKEN
        if not isinstance(token, str) or not pattern.fullmatch(token):
            raise bad_request('"token" must be a device token: at least 20 characters of '
                              + ("hex digits (APNs)" if kind == "apns"
                                 else "letters, digits, '-', '_' or ':'"))
        if request.method == b"DELETE":
            await devices.unregister(identity.jid, kind, bundle, sandbox, token)
        else:
            await devices.register(identity.jid, kind, bundle, sandbox, token)
        return _no_content(request)

    @app.route("/mx/<mx>/voicemail", methods=["GET"])
    async def voicemail_list(self, request: Request, mx: str) -> bytes:
        caller = self._caller(request, mx)

        async def mails(session: UserSession) -> VoiceMailList:
            await session.ensure_mail_monitor()
            reply = await session.protocol.request(commands.mail_list(session.identity.ext))
            return VoiceMailList.from_xml(reply.element)

        listing = await self._on_session(caller, mails)
        return _json(request, {"voicemails": [mail.to_json() for mail in listing.mails]})

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["GET"])
    async def voicemail_download(self, request: Request, mx: str, mail_id: str) -> None:
        caller = self._caller(request, mx)
        pool = caller.access.pool
        session = await self._guarded(caller, pool.acquire(caller.login, caller.password))
        try:
            await session.ensure_mail_monitor()
            try:
                reply = await session.protocol.request(commands.mail_receive(mail_id, False))
            except CSTAError:
                raise not_found(f"no voicemail {mail_id!r}") from None
            first = Chunk.from_xml(reply.element)
            check_first(first)
        except BaseException:
            pool.release(session)
            raise
        request.setHeader(b"Content-Type", content_type(first.file_format).encode())
        request.setHeader(b"Content-Disposition",
                          attachment(first.document_name, mail_id, first.file_format).encode())
        request.write(first.content)
        stream = VoicemailStream(request, session.protocol, mail_id, first)
        stream.when_done().addCallback(lambda _: pool.release(session))
        stream.start()
        await stream.when_done()

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["PATCH"])
    async def voicemail_update(self, request: Request, mx: str, mail_id: str) -> bytes:
        caller = self._caller(request, mx)
        fields = _fields(request)
        note = fields.get("note")
        read = _flag(fields.get("readed", fields.get("read")))
        if note is None and read is None:
            raise bad_request('give "note", "readed" (or "read"), or both')
        if note is not None and not isinstance(note, str):
            raise bad_request('"note" must be a string')
        if read is not None and not isinstance(read, bool):
            raise bad_request('"readed" must be true or false')

        async def update(session: UserSession) -> None:
            await session.ensure_mail_monitor()
            try:
                if read is not None:
                    await session.protocol.request(commands.mail_set_status(mail_id, read))
                if note is not None:
                    await session.protocol.request(commands.update_vm_note(mail_id, note))
            except CSTAError:
                raise not_found(f"no voicemail {mail_id!r}") from None

        await self._on_session(caller, update)
        return _no_content(request)

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["DELETE"])
    async def voicemail_delete(self, request: Request, mx: str, mail_id: str) -> bytes:
        caller = self._caller(request, mx)

        async def delete(session: UserSession) -> None:
            await session.ensure_mail_monitor()
            try:
                await session.protocol.request(commands.mail_delete(mail_id))
            except CSTAError as error:  # unknown or foreign ids succeed, as in the original
                log.info("voicemail {id}: delete refused by the MX: {error}", id=mail_id,
                         error=error)

        await self._on_session(caller, delete)
        return _no_content(request)

    # -- errors -------------------------------------------------------------------------------

    @app.handle_errors(NotFound)
    def _not_found(self, request: Any, failure: Failure) -> bytes:
        return write_error(request, not_found())

    @app.handle_errors(MethodNotAllowed)
    def _wrong_method(self, request: Any, failure: Failure) -> bytes:
        allowed = ", ".join(sorted(failure.value.valid_methods or ()))
        return write_error(request, HTTPError(405, "method not allowed", {"Allow": allowed}))

    @app.handle_errors(Exception)
    def _failed(self, request: Any, failure: Failure) -> bytes:
        error = as_http_error(failure.value)
        if error.status == 500:
            log.failure("unexpected failure serving {path}", failure,
                        path=request.path.decode("utf-8", "replace"))
        return write_error(request, error)

    # -- authentication -----------------------------------------------------------------------

    def _caller(self, request: Request, mx: str) -> Caller:
        access = self._access.get(mx)
        if access is None:
            raise not_found(f"unknown MX {mx!r}")
        login, password = _basic_credentials(request)
        address = _client_address(request)
        wait = self.throttle.retry_after((mx, login), address)
        if wait is not None:
            raise HTTPError(429, "too many failed logins; try again later",
                            {"Retry-After": str(math.ceil(wait))})
        return Caller(mx, access, login, password, address)

    async def _identify(self, caller: Caller) -> Identity:
        """Who the caller is: from the auth cache, else by a login (which pools the session)."""
        identity = self.auth.check(caller.mx, caller.login, caller.password)
        if identity is None:
            session = await self._guarded(
                caller, caller.access.pool.session(caller.login, caller.password))
            identity = session.identity
        return identity

    async def _on_session(self, caller: Caller, work: Callable[[UserSession], Awaitable[T]],
                          retry: bool = True) -> T:
        return await self._guarded(
            caller, caller.access.pool.use(caller.login, caller.password, work, retry))

    async def _guarded(self, caller: Caller, step: Awaitable[T]) -> T:
        """Await a step that may log in: record the outcome in the cache and the throttle."""
        try:
            result = await step
        except LoginError:
            self.auth.evict(caller.mx, caller.login)
            self.throttle.failed((caller.mx, caller.login), caller.address)
            raise
        session = caller.access.pool.logged_in(caller.login, caller.password)
        if session is not None:
            self.auth.store(caller.mx, caller.login, caller.password, session.identity)
            self.throttle.succeeded((caller.mx, caller.login))
        return result


_TEMPLATES = {rule.endpoint: _VARIABLE.sub(r"{\1}", rule.rule)
              for rule in API.app.url_map.iter_rules()}
"""Route template by endpoint, as OpenAPI writes it: ``/mx/{mx}/voicemail/{mail_id}``."""
_ADDRESS_BOOK = _TEMPLATES["addressbook"]


class _Routes(Resource):
    """Klein routes every request, except that the busiest one (the address book with a cached
    login) is answered without Klein's per-request machinery, which costs more than the answer
    itself (bench/http_addressbook.py). Every answer is counted and timed."""

    isLeaf = True

    def __init__(self, api: API) -> None:
        super().__init__()
        self._api = api
        self._klein = api.app.resource()
        self._clock = api.clock
        self._metrics = api.metrics
        # The fast path's series, found once: looking them up per request costs ~2 µs
        self._book_answers = api.metrics.http_requests.labels(_ADDRESS_BOOK, "GET", "200")
        self._book_seconds = api.metrics.http_duration.labels(_ADDRESS_BOOK, "GET")

    def render(self, request: APIRequest) -> Any:
        started = self._clock.seconds()
        refusal = request.refusal()
        if refusal is None:
            body = self._api.cached_address_book(request)
            if body is not None:
                self._book_answers.inc()
                self._book_seconds.observe(self._clock.seconds() - started)
                return body
        request.notifyFinish().addBoth(self._finished, request, started)
        return refusal if refusal is not None else self._klein.render(request)

    def _finished(self, result: object, request: APIRequest, started: float) -> None:
        status = DISCONNECTED if isinstance(result, Failure) else str(request.code)
        self._metrics.http_request(request.route, request.method, status,
                                   self._clock.seconds() - started)


# -- request reading ---------------------------------------------------------------------------


def _client_address(request: Request) -> str:
    return getattr(request.getClientAddress(), "host", "unknown")



def _basic_credentials(request: Request) -> tuple[str, str]:
    header = request.getHeader(b"Authorization") or b""
    scheme, _, encoded = header.partition(b" ")
    try:
        if scheme.lower() != b"basic":
            raise ValueError
        login, colon, password = base64.b64decode(encoded.strip(), validate=True).decode(
            "utf-8").partition(":")
        if not colon or not login:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HTTPError(401, "HTTP Basic credentials of an MX user are required",
                        {"WWW-Authenticate": 'Basic realm="mxproxy"'}) from None
    return login, password


def _fields(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or as an HTML form. A body that is a JSON object counts as
    JSON whatever its label (``curl -d '{...}'`` calls it a form)."""
    body = b""
    if request.content is not None:
        request.content.seek(0)  # twisted.web has read a POSTed form already
        body = request.content.read()
    if not body.strip():
        return {}
    if body.lstrip().startswith(b"{") or _media_type(request) == b"application/json":
        try:
            fields = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise bad_request(f"malformed JSON: {error}") from None
        if not isinstance(fields, dict):
            raise bad_request("the JSON body must be an object")
        return fields
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in form.items()}


def _media_type(request: Request) -> bytes:
    return (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()


def _flag(value: Any) -> Any:
    """Booleans as JSON gives them, or as a form spells them."""
    spelled = {"true": True, "1": True, "false": False, "0": False}
    return spelled.get(value.lower(), value) if isinstance(value, str) else value


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f'"{name}" is required (a non-empty string)')
    return value.strip()


def _seconds(fields: Mapping[str, Any], name: str, default: int, lowest: int,
             highest: int) -> int:
    value = fields.get(name, default)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise bad_request(f'"{name}" must be a whole number of seconds from {lowest} to '
                          f"{highest}")
    return value


def _timestamp(request: Request) -> int | None:
    """``timestamp`` as Unix seconds or RFC 3339 (with a zone); absent means the whole log."""
    values = _args(request).get(b"timestamp")
    if not values:
        return None
    raw = values[-1].decode("utf-8", "replace").strip()
    if _DIGITS.fullmatch(raw):
        return int(raw)
    moment = None
    if _RFC3339.fullmatch(raw):
        try:
            moment = datetime.fromisoformat(raw.upper())
        except ValueError:
            pass
    if moment is None:
        raise bad_request(f"timestamp {raw[:40]!r}: expected Unix seconds or RFC 3339 with a "
                          "time zone, e.g. 2017-07-28T14:31:47Z")
    return int(moment.timestamp())


def _args(request: Request) -> dict[bytes, list[bytes]]:
    return request.args or {}


def _has_key(request: Request, name: bytes) -> bool:
    """Whether the query string has the key ``name``, with or without a value: a bare
    ``?sandbox`` counts, though twisted.web leaves keys without ``=`` out of ``request.args``."""
    query = request.uri.partition(b"?")[2]
    return name in parse_qs(query, keep_blank_values=True)


def _json(request: Request, value: object) -> bytes:
    return _json_body(request, _encode(value))


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _json_body(request: Request, body: bytes) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def _no_content(request: Request) -> bytes:
    request.setResponseCode(204)
    return b""
