"""The call loop of a softphone app: who the user is on the MX (``GET user``, the SIP password
its softphone registers with), their current calls, and call control: answer on a SIP device,
hang up, hold, retrieve, transfer, deflect, record, and where calls ring (``PUT mode``).

The calls come from the MX's call state (:mod:`mxproxy.calls`), fed by a monitor on the user's
extension on the server link; using these routes keeps one running for ten minutes
(:data:`mxproxy.monitors.CALLS`). The commands run on the user's own session
(:mod:`mxproxy.callcontrol`), never repeated on a fresh login: a repeated answer or transfer
could act twice.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.web.server import Request

from mxproxy import callcontrol
from mxproxy.api.auth import Caller
from mxproxy.api.errors import HTTPError, bad_request, not_found
from mxproxy.api.fields import body_fields, seconds, text
from mxproxy.api.routing import Endpoints, app, json_answer, no_content
from mxproxy.callcontrol import RING_DELAY, VM_DELAY
from mxproxy.calls import RINGING, CallState
from mxproxy.csta.errors import CallStateError, UnknownCall
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.monitors import CALLS
from mxproxy.sessions import UserSession

_CALL_ID = re.compile(r"[0-9]{1,18}")
Step = Callable[[CSTAProtocol, int, str], Awaitable[object]]
"""A call-control command of :mod:`mxproxy.callcontrol` taking (protocol, call id, extension)."""
_SHORT = 128
"""Characters a device name or a number may have: more fits no MX field."""


class CallRoutes(Endpoints):
    """``/mx/<mx>/user``, ``/mx/<mx>/calls...`` and ``/mx/<mx>/mode``."""

    @app.route("/mx/<mx>/user", methods=["GET"])
    async def user(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)

        async def login_reply(session: UserSession) -> dict[str, Any]:
            info = session.info
            return {"jid": info.user_id, "ext": info.ext, "sn": info.sn,
                    "softPhonePwd": info.soft_phone_pwd, "apiVersion": info.apiversion}

        body = await self.auth.on_session(caller, login_reply)
        request.setHeader(b"Cache-Control", b"no-store")  # it carries the SIP password
        return json_answer(request, body)

    @app.route("/mx/<mx>/calls", methods=["GET"])
    async def calls(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        state, jid = await self._followed(caller)
        return json_answer(request, {"calls": [call.to_json() for call in state.calls_of(jid)]})

    @app.route("/mx/<mx>/calls/<call_id>", methods=["GET"])
    async def one_call(self, request: Request, mx: str, call_id: str) -> bytes:
        caller, number = self._call_of(request, mx, call_id)
        state, jid = await self._followed(caller)
        call = state.call(jid, number)
        if call is None:
            raise not_found(f"no call {number}" + (" (it has ended)"
                                                   if state.ended(jid, number) else ""))
        return json_answer(request, call.to_json())

    @app.route("/mx/<mx>/calls/<call_id>/answer", methods=["POST"])
    async def answer(self, request: Request, mx: str, call_id: str) -> bytes:
        caller, number = self._call_of(request, mx, call_id)
        fields = body_fields(request)
        device = short_text(fields, "device")
        token = fields.get("token")
        if token is not None and not isinstance(token, str):
            raise bad_request('"token" must be the answering device\'s push token')

        async def on_device(session: UserSession, state: CallState) -> dict[str, Any]:
            jid = session.identity.jid
            call = state.call(jid, number)
            if state.ended(jid, number) or (call is not None and call.state != RINGING):
                raise no_longer_ringing(number)
            devices = caller.access.devices
            if token and devices is not None:
                await devices.answered_here(jid, number, token)
            try:
                answered = await callcontrol.answer(session.protocol, number,
                                                    session.identity.ext, device)
            except CallStateError as error:
                raise no_longer_ringing(number, error.text) from None
            except UnknownCall:
                if state.ended(jid, number):
                    raise no_longer_ringing(number) from None
                raise
            return {"callId": answered.call_id, "device": answered.device}

        return await self._control(request, caller, on_device)

    @app.route("/mx/<mx>/calls/<call_id>", methods=["DELETE"])
    async def hang_up(self, request: Request, mx: str, call_id: str) -> bytes:
        caller, number = self._call_of(request, mx, call_id)

        async def clear(session: UserSession, state: CallState) -> dict[str, Any]:
            cleared = await callcontrol.hang_up(session.protocol, number, session.identity.ext)
            return {"callId": number, "cause": cleared.cause}

        return await self._control(request, caller, clear)

    @app.route("/mx/<mx>/calls/<call_id>/hold", methods=["POST"])
    async def hold(self, request: Request, mx: str, call_id: str) -> bytes:
        return await self._step(request, mx, call_id, callcontrol.hold, {"state": "held"})

    @app.route("/mx/<mx>/calls/<call_id>/retrieve", methods=["POST"])
    async def retrieve(self, request: Request, mx: str, call_id: str) -> bytes:
        return await self._step(request, mx, call_id, callcontrol.retrieve,
                                {"state": "connected"})

    @app.route("/mx/<mx>/calls/<call_id>/transfer", methods=["POST"])
    async def transfer(self, request: Request, mx: str, call_id: str) -> bytes:
        caller, number = self._call_of(request, mx, call_id)
        target = short_text(body_fields(request), "to")

        async def hand_on(session: UserSession, state: CallState) -> dict[str, Any]:
            result = await callcontrol.transfer(session.protocol, number,
                                                session.identity.ext, target)
            return {"callId": number, "to": target, "transferredCallId": result.call_id or None}

        return await self._control(request, caller, hand_on)

    @app.route("/mx/<mx>/calls/<call_id>/deflect", methods=["POST"])
    async def deflect(self, request: Request, mx: str, call_id: str) -> bytes:
        caller, number = self._call_of(request, mx, call_id)
        target = short_text(body_fields(request), "to")

        async def send_on(session: UserSession, state: CallState) -> dict[str, Any]:
            await callcontrol.deflect(session.protocol, number, session.identity.ext, target)
            return {"callId": number, "to": target}

        return await self._control(request, caller, send_on)

    @app.route("/mx/<mx>/calls/<call_id>/recording", methods=["POST", "DELETE"])
    async def recording(self, request: Request, mx: str, call_id: str) -> bytes:
        """Start or stop recording a connected call; once stopped, the recording is in the
        user's mailbox (``GET voicemail?media=Recording``, a ``voicemail`` event)."""
        start = request.method == b"POST"
        command = callcontrol.start_recording if start else callcontrol.stop_recording
        return await self._step(request, mx, call_id, command, {"recording": start})

    @app.route("/mx/<mx>/mode", methods=["PUT"])
    async def mode(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        fields = body_fields(request)
        mode = fields.get("mode")
        if mode not in ("remote", "local"):
            raise bad_request('"mode" must be "remote" or "local"')
        device = short_text(fields, "device") if mode == "remote" else ""
        ring_delay = seconds(fields, "ringDelay", *RING_DELAY)
        vm_delay = seconds(fields, "vmDelay", *VM_DELAY)

        async def ring_where(session: UserSession) -> None:
            callcontrol.set_mode(session.protocol, mode, device, ring_delay, vm_delay)

        await self.auth.on_session(caller, ring_where, retry=False)
        return no_content(request)

    # -- shared steps -------------------------------------------------------------------------

    async def _followed(self, caller: Caller) -> tuple[CallState, str]:
        """The MX's call state and the caller's JID, their calls followed from now on (for ten
        minutes after the last use)."""
        identity = await self.auth.identify(caller)
        state = caller.access.calls
        await state.monitors.want(identity.jid, CALLS)
        return state, identity.jid

    async def _step(self, request: Request, mx: str, call_id: str, command: Step,
                    answer: dict[str, Any]) -> bytes:
        """A command on the call that needs only its id and the user's extension; once the
        MX confirms it, ``{"callId", **answer}``."""
        caller, number = self._call_of(request, mx, call_id)

        async def run(session: UserSession, state: CallState) -> dict[str, Any]:
            await command(session.protocol, number, session.identity.ext)
            return {"callId": number, **answer}

        return await self._control(request, caller, run)

    def _call_of(self, request: Request, mx: str, call_id: str) -> tuple[Caller, int]:
        return self.auth.caller(request, mx), known_call_id(call_id)

    async def _control(self, request: Request, caller: Caller,
                       work: Callable[[UserSession, CallState], Awaitable[Any]]) -> bytes:
        """Run one call-control conversation on the caller's session, monitoring the user's
        extension there (the confirming events reach monitors only) and on the server link
        (the call state that answers ``GET calls`` and the 409s); its result is the answer."""
        state = caller.access.calls

        async def run(session: UserSession) -> Any:
            await session.ensure_monitor()
            await state.monitors.want(session.identity.jid, CALLS)
            return await work(session, state)

        return json_answer(request, await self.auth.on_session(caller, run, retry=False))


def known_call_id(call_id: str) -> int:
    """``call_id`` if an MX could have issued it (a decimal number), else a 404 without a word
    to the MX."""
    if not _CALL_ID.fullmatch(call_id):
        raise not_found(f"no call {call_id[:40]!r}")
    return int(call_id)


def short_text(fields: dict[str, Any], name: str) -> str:
    value = text(fields, name)
    if len(value) > _SHORT:
        raise bad_request(f'"{name}" is longer than {_SHORT} characters')
    return value


def no_longer_ringing(call_id: int, mx_text: str = "") -> HTTPError:
    return HTTPError(409, f"call {call_id} is no longer ringing"
                     + (f" (the MX: {mx_text})" if mx_text else ""))
