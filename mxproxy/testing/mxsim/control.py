"""The simulator's control API: drive the PBX from a shell, a demo script or another process.

Plain HTTP with JSON bodies, bound to a loopback address only (it has no authentication).
Every answer is JSON; errors are ``{"error": "<reason>"}`` with 400 (bad JSON or field),
404 (unknown route, call, user or contact), 405 (method not allowed on the route) or 409
(conflict, e.g. a taken extension, or a call whose state does not allow the step: answering
it twice, holding it while it rings).

=======  ======================  ==============================================================
Method   Path                    Body -> answer
=======  ======================  ==============================================================
GET      /state                  -> PBX summary: sn, users, serverLogins, contacts (count),
                                 calls, sessions (login, kind, monitors, abNotify), counters,
                                 faults, variants
GET      /calls                  -> ``{"calls": [call...]}``, the calls in progress; a call is
                                 ``{"callId", "globalCallId", "from", "to" (dialled), "state"
                                 ("alerting", "established", "held"), "parties" (caller,
                                 callee), "ringing" (where it rings), "answeredBy",
                                 "answeredOn" (the SIP device it was answered on), "heldBy",
                                 "recordedBy" (the parties recording it)}``
GET      /calls/<id>             -> the call
POST     /calls                  ``{"from", "to", "callerName"?}`` rings extension ``to``
                                 -> 201 ``{"callId", "globalCallId"}``
POST     /calls/<id>/answer      ``{"device"?}`` (default: the callee; another device picks
                                 the call up) -> the call
POST     /calls/<id>/hangup      ``{"device"?}`` (default: the caller) -> the call (cleared)
POST     /calls/<id>/hold        ``{"device"}`` (a party) -> the call; ``/retrieve`` likewise
POST     /calls/<id>/transfer    ``{"device", "to"}``: ``device`` hands the call to ``to``
POST     /calls/<id>/deflect     ``{"device"?, "to"}``: the callee sends it on while ringing;
                                 ``*86`` (voicemail) ends it
POST     /users                  ``{"login", "password", "extension", "firstName"?,
                                 "lastName"?, "jid"?, "clearTextOnly"?}`` -> 201 the user
DELETE   /users/<login>          -> ``{}`` (also removes the address-book entry)
POST     /users/<login>/voicemail  ``{"from", "fromName"?, "duration"?}`` (seconds, 5 by
                                 default) a caller leaves a message (a tone):
                                 ``MailIncomingReadyEvent`` to the monitors of the user's
                                 extension -> 201 ``{"mailId"}``
POST     /contacts               contact fields (``jid``? ``firstName`` ``lastName``
                                 ``businessPhone`` ``homePhone`` ``cellPhone`` ``email``
                                 ``did`` ``exchangeId`` ``homeSystem`` ``presence``
                                 ``presenceNote``) -> 201 the contact (AbAddUserEvent)
PUT      /contacts/<jid>         fields to change -> the contact (AbUpdateUserEvent)
DELETE   /contacts/<jid>         -> ``{}`` (AbDeleteUserEvent)
POST     /logout                 ``{"login", "mode"?}`` (default mode ``forced``)
                                 -> ``{"sessions": n}``
POST     /drop                   -> ``{"sessions": n}`` (every connection cut)
POST     /faults                 any of ``{"replyDelay", "noReply" (list or "*"),
                                 "malformedNext" ("xml"|"header"|"length"|"id"|null),
                                 "refuseLogins"}`` -> the faults now in force
GET      /services               -> ``{"services": [{"id", "name", "type", "ext",
                                 "homeSystem"}]}``, what ``GetServiceList`` answers
PUT      /services               the same shape (``id`` and ``homeSystem`` optional) ->
                                 the new list
POST     /variants               ``{"callLogEnd": "short"|"empty-terminator",
                                 "recordingState": "connection"|"root"}`` -> variants
=======  ======================  ==============================================================

Example: ``curl -s -d '{"from":"+12125550142","to":"3001"}' localhost:7780/calls``. The far
end of a call is what this API plays; the user's side is what a CSTA session does
(``AssignDevice``, ``AnswerCall``...), though every step is here too for a demo without one.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from mxproxy.testing.mxsim.audio import wav_tones
from mxproxy.testing.mxsim.calls import call_json
from mxproxy.testing.mxsim.model import (
    Conflict,
    Contact,
    Faults,
    Service,
    UnknownObject,
    User,
    Variants,
)
from mxproxy.testing.mxsim.pbx import PBX, SERVICE_ID_BASE, SYSTEM_JID, default_reactor

Answer = tuple[int, Any]
Route = tuple[str, tuple[str, ...], Callable[..., Answer]]
_ANY = "*"


class BadRequest(ValueError):
    """The request's JSON or one of its fields is unusable (400)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


_CONTACT_FIELDS = {_camel(f.name) for f in attrs.fields(Contact)}


_MISSING = object()


def _get(body: dict[str, Any], key: str, kind: type, default: Any = _MISSING) -> Any:
    """``body[key]`` checked against ``kind``; missing is an error unless a default is given."""
    if key not in body:
        if default is _MISSING:
            raise BadRequest(f"missing field {key!r}")
        return default
    value = body[key]
    # JSON true is a Python int too: keep booleans and numbers apart
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f"field {key!r} must be a {kind.__name__}")
    return value


def _contact_changes(body: dict[str, Any]) -> dict[str, str]:
    unknown = set(body) - _CONTACT_FIELDS
    if unknown:
        raise BadRequest(f"unknown contact fields: {', '.join(sorted(unknown))}")
    return {_snake(key): _get(body, key, str) for key in body}


def _user_json(user: User) -> dict[str, Any]:
    return {"login": user.login, "extension": user.extension, "jid": user.jid,
            "firstName": user.first_name, "lastName": user.last_name,
            "clearTextOnly": user.clear_text_only, "callLog": len(user.call_log),
            "voicemails": len(user.voicemails), "recordings": len(user.recordings)}


def _service(item: Any, n: int) -> Service:
    """One service of ``PUT /services``; the ``n``-th gets an id if it has none."""
    if not isinstance(item, dict):
        raise BadRequest("each service must be an object")
    service_id = _get(item, "id", str, str(SERVICE_ID_BASE + n))
    if not service_id.isdigit() or int(service_id) >= 2 ** 64:
        raise BadRequest(f"service id {service_id[:30]!r} is not a uint64")
    return Service(int(service_id), _get(item, "name", str), _get(item, "type", str),
                   _get(item, "ext", str), _get(item, "homeSystem", str, SYSTEM_JID))


def _service_json(service: Service) -> dict[str, Any]:
    return {"id": str(service.service_id), "name": service.name, "type": service.service_type,
            "ext": service.extension, "homeSystem": service.home_system}


def _attrs_json(instance: Any) -> dict[str, Any]:
    return {_camel(k): sorted(v) if isinstance(v, frozenset) else v
            for k, v in attrs.asdict(instance).items() if k != "malformed_round"}


class ControlResource(Resource):
    """The whole API as one leaf resource with a small route table."""

    isLeaf = True

    def __init__(self, pbx: PBX) -> None:
        super().__init__()
        self.pbx = pbx
        self._routes: list[Route] = [
            ("GET", ("state",), self.state),
            ("GET", ("calls",), self.list_calls),
            ("GET", ("calls", _ANY), self.show_call),
            ("POST", ("calls",), self.place_call),
            ("POST", ("calls", _ANY, "answer"), self.answer),
            ("POST", ("calls", _ANY, "hangup"), self.hang_up),
            ("POST", ("calls", _ANY, "hold"), self.hold),
            ("POST", ("calls", _ANY, "retrieve"), self.retrieve),
            ("POST", ("calls", _ANY, "transfer"), self.transfer),
            ("POST", ("calls", _ANY, "deflect"), self.deflect),
            ("POST", ("users",), self.add_user),
            ("DELETE", ("users", _ANY), self.remove_user),
            ("POST", ("users", _ANY, "voicemail"), self.leave_voicemail),
            ("POST", ("contacts",), self.add_contact),
            ("PUT", ("contacts", _ANY), self.update_contact),
            ("DELETE", ("contacts", _ANY), self.remove_contact),
            ("POST", ("logout",), self.logout),
            ("POST", ("drop",), self.drop),
            ("POST", ("faults",), self.set_faults),
            ("POST", ("variants",), self.set_variants),
            ("GET", ("services",), self.list_services),
            ("PUT", ("services",), self.set_services),
        ]

    def render(self, request: Request) -> bytes:
        method = (request.method or b"").decode("ascii", "replace")
        path = tuple(s.decode("utf-8", "replace") for s in request.postpath or [] if s)
        try:
            status, result = self._dispatch(method, path, request)
        except BadRequest as error:
            status, result = 400, {"error": str(error)}
        except UnknownObject as error:
            status, result = 404, {"error": str(error)}
        except Conflict as error:
            status, result = 409, {"error": str(error)}
        except (ValueError, TypeError) as error:  # attrs validators of the model
            status, result = 400, {"error": str(error)}
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(result).encode("utf-8") + b"\n"

    def _dispatch(self, method: str, path: tuple[str, ...], request: Request) -> Answer:
        matches = [(m, function, [s for s, p in zip(path, pattern, strict=True) if p == _ANY])
                   for m, pattern, function in self._routes
                   if len(pattern) == len(path)
                   and all(p in (_ANY, s) for s, p in zip(path, pattern, strict=True))]
        if not matches:
            return 404, {"error": f"no route /{'/'.join(path)}"}
        for route_method, function, arguments in matches:
            if route_method == method:
                return function(self._body(request), *arguments)
        allowed = ", ".join(m for m, _, _ in matches)
        request.setHeader(b"allow", allowed.encode("ascii"))
        return 405, {"error": f"method {method} not allowed here (allowed: {allowed})"}

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise BadRequest(f"body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def state(self, body: dict[str, Any]) -> Answer:
        pbx = self.pbx
        return 200, {
            "sn": pbx.sn, "pageSize": pbx.page_size, "chunkSize": pbx.chunk_size,
            "users": [_user_json(u) for u in pbx.users.values()],
            "serverLogins": sorted(pbx.server_logins),
            "contacts": len(pbx.contacts),
            "calls": [call_json(c) for c in pbx.calls.values()],
            "sessions": [{"login": s.login, "kind": s.kind, "abNotify": s.ab_notify,
                          "device": s.device,
                          "monitors": {str(k): v for k, v in s.monitors.items()},
                          "peer": str(s.peer)} for s in pbx.sessions],
            "counters": {"logins": dict(pbx.logins), "failedLogins": dict(pbx.failed_logins),
                         "keepalives": pbx.keepalives, "received": len(pbx.received)},
            "faults": _attrs_json(pbx.faults), "variants": _attrs_json(pbx.variants),
        }

    def place_call(self, body: dict[str, Any]) -> Answer:
        call = self.pbx.place_call(_get(body, "from", str), _get(body, "to", str),
                                   _get(body, "callerName", str, ""))
        return 201, {"callId": call.call_id, "globalCallId": call.global_call_id}

    @staticmethod
    def _call_id(text: str) -> int:
        if not text.isdigit():
            raise UnknownObject(f"no call {text}")
        return int(text)

    def list_calls(self, body: dict[str, Any]) -> Answer:
        return 200, {"calls": [call_json(call) for call in self.pbx.calls.values()]}

    def show_call(self, body: dict[str, Any], call_id: str) -> Answer:
        return 200, call_json(self.pbx.call(self._call_id(call_id)))

    def answer(self, body: dict[str, Any], call_id: str) -> Answer:
        call = self.pbx.answer(self._call_id(call_id), _get(body, "device", str, ""))
        return 200, call_json(call)

    def hang_up(self, body: dict[str, Any], call_id: str) -> Answer:
        call = self.pbx.hang_up(self._call_id(call_id), _get(body, "device", str, ""))
        return 200, call_json(call)

    def hold(self, body: dict[str, Any], call_id: str) -> Answer:
        return 200, call_json(self.pbx.hold(self._call_id(call_id), _get(body, "device", str)))

    def retrieve(self, body: dict[str, Any], call_id: str) -> Answer:
        return 200, call_json(self.pbx.retrieve(self._call_id(call_id),
                                                _get(body, "device", str)))

    def transfer(self, body: dict[str, Any], call_id: str) -> Answer:
        return 200, call_json(self.pbx.transfer(self._call_id(call_id), _get(body, "device", str),
                                                _get(body, "to", str)))

    def deflect(self, body: dict[str, Any], call_id: str) -> Answer:
        call = self.pbx.call(self._call_id(call_id))
        return 200, call_json(self.pbx.deflect(call, _get(body, "device", str, call.callee),
                                               _get(body, "to", str)))

    def add_user(self, body: dict[str, Any]) -> Answer:
        user = self.pbx.add_user(
            _get(body, "login", str), _get(body, "password", str), _get(body, "extension", str),
            first_name=_get(body, "firstName", str, ""), last_name=_get(body, "lastName", str, ""),
            jid=_get(body, "jid", str, ""),
            clear_text_only=_get(body, "clearTextOnly", bool, False))
        return 201, _user_json(user)

    def remove_user(self, body: dict[str, Any], login: str) -> Answer:
        self.pbx.remove_user(login)
        return 200, {}

    def leave_voicemail(self, body: dict[str, Any], login: str) -> Answer:
        """A message of ``duration`` seconds (a tone, at most 30 s of it) from ``from``."""
        duration = _get(body, "duration", int, 5)
        if not 1 <= duration <= 300:
            raise BadRequest('"duration" must be 1 to 300 seconds')
        mail = self.pbx.leave_voicemail(
            login, wav_tones(((440.0, min(duration, 30)),)),
            from_number=_get(body, "from", str), from_name=_get(body, "fromName", str, ""),
            caller_name=_get(body, "fromName", str, ""), duration=duration)
        return 201, {"mailId": str(mail.mail_id)}

    def list_services(self, body: dict[str, Any]) -> Answer:
        return 200, {"services": [_service_json(item) for item in self.pbx.services]}

    def set_services(self, body: dict[str, Any]) -> Answer:
        items = _get(body, "services", list)
        self.pbx.services = [_service(item, n) for n, item in enumerate(items, 1)]
        return self.list_services({})

    def add_contact(self, body: dict[str, Any]) -> Answer:
        contact = self.pbx.add_contact(Contact(**{"jid": "", **_contact_changes(body)}))
        return 201, _attrs_json(contact)

    def update_contact(self, body: dict[str, Any], jid: str) -> Answer:
        return 200, _attrs_json(self.pbx.update_contact(jid, **_contact_changes(body)))

    def remove_contact(self, body: dict[str, Any], jid: str) -> Answer:
        self.pbx.remove_contact(jid)
        return 200, {}

    def logout(self, body: dict[str, Any]) -> Answer:
        ended = self.pbx.logout(_get(body, "login", str), _get(body, "mode", str, "forced"))
        return 200, {"sessions": ended}

    def drop(self, body: dict[str, Any]) -> Answer:
        return 200, {"sessions": self.pbx.drop()}

    def set_faults(self, body: dict[str, Any]) -> Answer:
        changes = self._changes(body, Faults, {"replyDelay", "noReply", "malformedNext",
                                               "refuseLogins"})
        Faults(**changes)  # validates every value before any takes effect
        for name, value in changes.items():
            setattr(self.pbx.faults, name, value)
        return 200, _attrs_json(self.pbx.faults)

    def set_variants(self, body: dict[str, Any]) -> Answer:
        changes = self._changes(body, Variants, {"callLogEnd", "recordingState"})
        Variants(**changes)
        for name, value in changes.items():
            setattr(self.pbx.variants, name, value)
        return 200, _attrs_json(self.pbx.variants)

    @staticmethod
    def _changes(body: dict[str, Any], kind: type, known: set[str]) -> dict[str, Any]:
        unknown = set(body) - known
        if unknown:
            raise BadRequest(f"unknown {kind.__name__.lower()} fields: "
                             f"{', '.join(sorted(unknown))}")
        return {_snake(key): value for key, value in body.items()}


def control_site(pbx: PBX) -> Site:
    """The control API as a ``Site``, for an endpoint of your choice (keep it on loopback)."""
    return Site(ControlResource(pbx))


def listen_control(pbx: PBX, port: int = 0, interface: str = "127.0.0.1",
                   reactor: Any = None) -> IListeningPort:
    """Serve the control API; refuses any interface that is not a loopback address."""
    if not ipaddress.ip_address(interface).is_loopback:
        raise ValueError(f"the control API has no authentication: bind it to loopback, "
                         f"not {interface}")
    reactor = reactor if reactor is not None else default_reactor()
    listening: IListeningPort = reactor.listenTCP(port, control_site(pbx), interface=interface)
    return listening
