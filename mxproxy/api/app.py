"""The routes of the original product under ``/mx/<mx-name>/`` (see docs/openapi.yaml).

Each request: find the MX, check the caller (``auth``), then either answer from the server
link's cache (address book) or run MX commands on the user's pooled session.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from mxproxy.addressbook import AddressBook
from mxproxy.api.access import MXAccess
from mxproxy.api.auth import Authenticator
from mxproxy.api.calls import CallRoutes
from mxproxy.api.clients import ClientAddresses
from mxproxy.api.errors import HTTPError, as_http_error, bad_request, not_found, write_error
from mxproxy.api.events import EventRoutes
from mxproxy.api.fields import (
    body_fields,
    query_flag,
    seconds,
    text,
    timestamp,
)
from mxproxy.api.routing import Routes, app, encode, json_answer, json_body, no_content
from mxproxy.api.services import ServiceCache, ServiceRoutes
from mxproxy.api.voicemail import VoicemailRoutes
from mxproxy.callcontrol import RING_DELAY, VM_DELAY
from mxproxy.calllog import CallLogTiming, fetch_call_log
from mxproxy.csta import commands
from mxproxy.csta.messages import MakeCallResult
from mxproxy.logs import Logger
from mxproxy.metrics import Metrics
from mxproxy.mx import MXServer
from mxproxy.sessions import UserSession

log = Logger(__name__)

DEFAULT_TIMING = CallLogTiming()
_TOKEN = re.compile(r"[A-Za-z0-9_:-]{20,4096}")
_APNS_TOKEN = re.compile(r"(?:[0-9A-Fa-f]{2}){10,2048}")
ADDRESS_BOOK_ROUTE = "/mx/{mx}/addressbook"


class API(CallRoutes, ServiceRoutes, VoicemailRoutes, EventRoutes):
    """The Klein application; one instance serves every configured MX. ``metrics`` receives the
    HTTP requests (a registry of its own when not given)."""

    app = app

    def __init__(self, access: Mapping[str, MXAccess], clock: IReactorTime,
                 call_log_timing: CallLogTiming = DEFAULT_TIMING,
                 metrics: Metrics | None = None, clients: ClientAddresses | None = None) -> None:
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.auth = Authenticator(access, clock, clients)
        self.services = ServiceCache(clock)
        self._call_log_timing = call_log_timing
        self._books: dict[str, tuple[AddressBook, int, bytes]] = {}
        """The encoded address book per MX, valid while the book and its version are."""

    def resource(self) -> Resource:
        return Routes(self.app.resource(), self, ADDRESS_BOOK_ROUTE, self.clock, self.metrics)

    def fast_answer(self, request: Request) -> bytes | None:
        """The answer to ``GET /mx/<mx>/addressbook`` when nothing but the happy path applies
        (valid cached credentials, not throttled, book loaded); otherwise None. Its
        Content-Length is left to twisted.web, which sets it for a body returned whole."""
        postpath = request.postpath or []
        if (request.method != b"GET" or len(postpath) != 3 or postpath[0] != b"mx"
                or postpath[2] != b"addressbook"):
            return None
        mx = postpath[1].decode("utf-8", "replace")
        access = self.auth.cached(request, mx)
        if access is None or access.server.info is None:
            return None
        request.setHeader(b"Content-Type", b"application/json")
        return self._address_book(mx, access.server)

    # -- routes -------------------------------------------------------------------------------

    @app.route("/mx/<mx>/addressbook", methods=["GET"])
    async def addressbook(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        await self.auth.identify(caller)
        return json_body(request, self._address_book(mx, caller.access.server))

    def _address_book(self, mx: str, server: MXServer) -> bytes:
        """The encoded book, made again only when the book or its version changed."""
        if server.info is None:
            raise HTTPError(503, "the address book of this MX has not been loaded yet")
        book = server.address_book
        cached = self._books.get(mx)
        if cached is None or cached[0] is not book or cached[1] != book.version:
            body = encode({"addressbook": {c.jid: c.to_json() for c in book}})
            cached = self._books[mx] = (book, book.version, body)
        return cached[2]

    @app.route("/mx/<mx>/calllog", methods=["GET"])
    async def calllog(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        since = timestamp(request)

        async def fetch(session: UserSession) -> list[Any]:
            return await fetch_call_log(session.protocol, since, self._call_log_timing)

        entries = await self.auth.on_session(caller, fetch)
        return json_answer(request, {"callog": [entry.to_json() for entry in entries]})

    @app.route("/mx/<mx>/call", methods=["POST"])
    async def call(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        fields = body_fields(request)
        source, target = text(fields, "from"), text(fields, "to")
        ring_delay = seconds(fields, "ringDelay", *RING_DELAY)
        vm_delay = seconds(fields, "vmDelay", *VM_DELAY)

        async def make_call(session: UserSession) -> MakeCallResult:
            session.protocol.send(commands.set_mode("remote", source, ring_delay, vm_delay))
            reply = await session.protocol.request(
                commands.make_call(session.identity.ext, target))
            return MakeCallResult.from_xml(reply.element)

        result = await self.auth.on_session(caller, make_call, retry=False)
        return json_answer(request, result.to_json())

    @app.route("/mx/<mx>/token/<kind>/<bundle>", methods=["POST", "DELETE"])
    async def token(self, request: Request, mx: str, kind: str, bundle: str) -> bytes:
        caller = self.auth.caller(request, mx)
        identity = await self.auth.identify(caller)
        devices = caller.access.devices
        if devices is None:
            raise HTTPError(501, "push notifications are not configured on this server")
        sandbox = query_flag(request, "sandbox") and kind == "apns"
        if kind not in ("apns", "gfcm"):
            raise not_found(f"unsupported push type {kind!r}: use apns or gfcm")
        if not devices.supports(kind, bundle, sandbox):
            raise not_found(f"unsupported {kind} bundle {bundle!r}"
                            + (" (sandbox)" if sandbox else ""))
        token = body_fields(request).get("token")
        pattern = _APNS_TOKEN if kind == "apns" else _TOKEN
        if not isinstance(token, str) or not pattern.fullmatch(token):
            raise bad_request('"token" must be a device token: at least 20 characters of '
                              + ("hex digits (APNs)" if kind == "apns"
                                 else "letters, digits, '-', '_' or ':'"))
        if request.method == b"DELETE":
            await devices.unregister(identity.jid, kind, bundle, sandbox, token)
        else:
            await devices.register(identity.jid, kind, bundle, sandbox, token)
        return no_content(request)

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
