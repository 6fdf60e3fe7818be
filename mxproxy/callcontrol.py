"""Call control on a user's MX session: the conversations behind the API's call routes.

Each function sends one command (mx-protocol.md §4.1-4.3) on a user session and returns once
the MX has confirmed it, with what the confirmation says. Some commands are confirmed by a
same-id reply (``AnswerCall``, ``SingleStepTransferCall``, ``DeflectCall``, ``StartRecording``,
``StopRecording``), the others by an event matched by name and call id
(``ConnectionClearedEvent``, ``HeldEvent``, ``RetrievedEvent``), ``AssignDevice`` by an
``AssignDeviceInfo`` event: the original client's waits, with the wait registered before the
command is written and matched on the call, not on the name alone (§7.2, §7.4). A same-id
``CSTAErrorCode`` ends any wait at once.

Call events reach only the connections that monitor a device of the call (§1.7), so these run
on a session that monitors the user's own extension (``UserSession.ensure_monitor``).

Failures: :class:`~mxproxy.csta.errors.UnknownCall`,
:class:`~mxproxy.csta.errors.CallStateError` or another ``CSTAError`` when the MX refuses
(with its text), :class:`~mxproxy.csta.errors.DeviceNotAssigned` when it binds another device
than the one asked for, ``MXTimeout`` when a step is not confirmed within ``timeout``
seconds (each step has its own: ``answer`` has two), ``MXUnavailable`` when the link ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs
from twisted.internet.defer import FailureGroup, race

from mxproxy.csta import commands
from mxproxy.csta.errors import DeviceNotAssigned
from mxproxy.csta.events import AssignDeviceInfo, CallEvent, ConnectionCleared, Held, Retrieved
from mxproxy.csta.messages import TransferResult, csta_error
from mxproxy.csta.protocol import CSTAProtocol, Message
from mxproxy.csta.xml import Element

RING_DELAY = (1, 0, 120)
"""Seconds before the MX rings the user's devices in remote mode: default, lowest, highest."""
VM_DELAY = (30, 0, 300)
"""Seconds of ringing before the MX hands the call to voicemail: default, lowest, highest."""
TIMEOUT = 7.0
"""Seconds the MX has to confirm each step: what the original's client library allowed it for
every answer (mx-protocol.md §1.6)."""


@attrs.frozen
class Answered:
    """The call is connected on ``device``, the user's SIP device."""

    call_id: int
    device: str


async def answer(protocol: CSTAProtocol, call_id: int, ext: str, device: str,
                 timeout: float = TIMEOUT) -> Answered:
    """Answer the call ringing at extension ``ext`` on the SIP device ``device``: bind the
    device to the session (``AssignDevice``), then ``AnswerCall``. A call that no longer rings
    there (answered elsewhere, transferred, over) is a ``CallStateError``; of two answers to
    one call, the MX accepts one."""
    message = await _confirmed(protocol, commands.assign_device(device), "AssignDeviceInfo",
                               None, timeout)
    bound = AssignDeviceInfo.from_xml(message.element).device_id
    if bound != device:
        raise DeviceNotAssigned(f"the MX did not bind the device {device!r} (it named "
                                f"{bound!r})")
    await protocol.request(commands.answer_call(call_id, ext), timeout=timeout)
    return Answered(call_id, device)


async def hang_up(protocol: CSTAProtocol, call_id: int, ext: str,
                  timeout: float = TIMEOUT) -> ConnectionCleared:
    """Clear ``ext``'s connection to the call; the event's ``cause`` says how it ended."""
    message = await _confirmed(protocol, commands.clear_connection(call_id, ext),
                               "ConnectionClearedEvent", _about(ConnectionCleared, call_id),
                               timeout)
    return ConnectionCleared.from_xml(message.element)


async def hold(protocol: CSTAProtocol, call_id: int, ext: str,
               timeout: float = TIMEOUT) -> Held:
    message = await _confirmed(protocol, commands.hold_call(call_id, ext), "HeldEvent",
                               _about(Held, call_id), timeout)
    return Held.from_xml(message.element)


async def retrieve(protocol: CSTAProtocol, call_id: int, ext: str,
                   timeout: float = TIMEOUT) -> Retrieved:
    message = await _confirmed(protocol, commands.retrieve_call(call_id, ext),
                               "RetrievedEvent", _about(Retrieved, call_id), timeout)
    return Retrieved.from_xml(message.element)


async def transfer(protocol: CSTAProtocol, call_id: int, ext: str, to: str,
                   timeout: float = TIMEOUT) -> TransferResult:
    """Hand the connected call to ``to``; ``ext`` leaves it, ``to`` rings."""
    reply = await protocol.request(commands.single_step_transfer(call_id, ext, to),
                                   timeout=timeout)
    return TransferResult.from_xml(reply.element)


async def deflect(protocol: CSTAProtocol, call_id: int, ext: str, to: str,
                  timeout: float = TIMEOUT) -> None:
    """Send the call ringing at ``ext`` on to ``to`` (another number, or voicemail)."""
    await protocol.request(commands.deflect_call(call_id, ext, to), timeout=timeout)


async def start_recording(protocol: CSTAProtocol, call_id: int, ext: str,
                          timeout: float = TIMEOUT) -> None:
    """Record ``ext``'s connected call (mx-protocol.md §4.3). The MX confirms with a same-id
    reply and a ``RecordingStateEvent``; the recording, once stopped, comes to the user's
    mailbox (``MailIncomingReadyEvent``, ``mediaType`` ``Recording``)."""
    await protocol.request(commands.start_recording(call_id, ext), timeout=timeout)


async def stop_recording(protocol: CSTAProtocol, call_id: int, ext: str,
                         timeout: float = TIMEOUT) -> None:
    await protocol.request(commands.stop_recording(call_id, ext), timeout=timeout)


def set_mode(protocol: CSTAProtocol, mode: Literal["local", "remote"], address: str = "",
             ring_delay: int = 1, vm_delay: int = 30) -> None:
    """Where the user's calls ring: on the user's own devices (``local``) or at ``address``
    (``remote``). Fire-and-forget, as in every version of the original: the MX answers
    nothing (mx-protocol.md §3.3)."""
    protocol.send(commands.set_mode(mode, address, ring_delay, vm_delay))


Match = Callable[[Message], bool]


def _about(kind: type[CallEvent], call_id: int) -> Match:
    return lambda message: kind.from_xml(message.element).call_id == call_id


async def _confirmed(protocol: CSTAProtocol, command: Element, name: str, match: Match | None,
                     timeout: float) -> Message:
    """Send ``command``; the first message named ``name`` (and matching) confirms it, a
    ``CSTAErrorCode`` with its invoke id refuses it. Both waits exist before the write."""
    sent: list[int] = []
    confirmation = protocol.expect(name, timeout, match)
    refusal = protocol.expect("CSTAErrorCode", timeout, lambda message: message.invoke_id in sent)
    try:
        sent.append(protocol.send(command))
    except BaseException:
        for wait in (confirmation, refusal):
            wait.addErrback(lambda _: None)
            wait.cancel()
        raise
    try:
        which, message = await race([confirmation, refusal])
    except FailureGroup as failed:  # neither came: the confirmation's failure says why
        failed.failures[0].raiseException()
    if which == 1:
        raise csta_error(message.element)
    return message
