"""Call-control and recording commands of the simulated MX (mx-protocol.md §4.1-4.3).

Each names a connection, ``<callID>`` and ``<deviceID>``, inside its own wrapper element. A
user session controls only its own extension (a server session any extension): another
device is ``privilegeViolationOnSpecifiedDevice``. The call switch (``calls.py``) decides
the rest; its refusals become ``CSTAErrorCode`` with the ECMA-323 value
(:mod:`mxproxy.csta.errors` lists them) and the switch's reason as ``privateErrorCode``.
An accepted command is answered with the same id (``XxxResponse``) before its events, though
clients of the original waited for the events alone (``ClearConnection``, ``HoldCall``,
``RetrieveCall``) and may ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mxproxy.csta.errors import UNKNOWN_CALL
from mxproxy.csta.xml import Element, text, to_int
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.calls import CallSwitch, Confirm, InvalidDestination
from mxproxy.testing.mxsim.model import Call, ReceivedCommand, UnknownObject, WrongState
from mxproxy.testing.mxsim.operations import CommandTable, controls

if TYPE_CHECKING:
    from mxproxy.testing.mxsim.server import Session

CALL_CONTROL = CommandTable()
NOT_OWN_DEVICE = "privilegeViolationOnSpecifiedDevice"
INVALID_DESTINATION = "invalidDestination"

Act = Callable[["Session", Element, int, str, Confirm], object]
"""What a command does: (session, element, call id, device, confirm)."""


def _call_command(name: str, wrapper: str, act: Act,
                  answer: Callable[[Call], Element] | None = None) -> None:
    """Register ``name``, whose connection is in ``wrapper``; ``answer`` builds the same-id
    reply from the call once the switch accepts the command (an empty ``<nameResponse/>``
    by default)."""
    reply = answer or (lambda call: wire.empty(f"{name}Response"))

    def operation(session: Session, command: ReceivedCommand) -> None:
        element, invoke_id = command.element, command.invoke_id
        call_id = to_int(text(element, f"{wrapper}/callID"), "callID")
        device = text(element, f"{wrapper}/deviceID")
        if not controls(session, device):
            session.fail(invoke_id, operation=NOT_OWN_DEVICE,
                         private=f"{device or 'no device'} is not this session's device")
            return
        try:
            act(session, element, call_id, device,
                lambda call: session.reply(invoke_id, reply(call)))
        except UnknownObject as error:
            session.fail(invoke_id, operation=UNKNOWN_CALL, private=str(error))
        except WrongState as error:
            session.fail(invoke_id, state=error.value, private=str(error))
        except InvalidDestination as error:
            session.fail(invoke_id, operation=INVALID_DESTINATION, private=str(error))

    CALL_CONTROL(name)(operation)


def _step(step: Callable[[CallSwitch, int, str, Confirm], object]) -> Act:
    """A command that names nothing but the connection: that step of the call switch."""
    return lambda session, element, call_id, device, confirm: step(
        session.pbx, call_id, device, confirm)


_call_command("AnswerCall", "callToBeAnswered",
              lambda session, element, call_id, device, confirm: session.pbx.answer(
                  call_id, device, on=session.device, pickup=False, confirm=confirm))
_call_command("ClearConnection", "connectionToBeCleared", _step(CallSwitch.hang_up))
_call_command("HoldCall", "callToBeHeld", _step(CallSwitch.hold))
_call_command("RetrieveCall", "callToBeRetrieved", _step(CallSwitch.retrieve))
_call_command("SingleStepTransferCall", "activeCall",
              lambda session, element, call_id, device, confirm: session.pbx.transfer(
                  call_id, device, text(element, "transferredTo"), confirm=confirm),
              wire.transfer_response)
_call_command("DeflectCall", "callToBeDiverted",
              lambda session, element, call_id, device, confirm: session.pbx.deflect(
                  call_id, device, text(element, "newDestination"), confirm=confirm))
_call_command("StartRecording", "Call", _step(CallSwitch.start_recording))
_call_command("StopRecording", "Call", _step(CallSwitch.stop_recording))

@CALL_CONTROL("AssignDevice")
def assign_device(session: Session, command: ReceivedCommand) -> None:
    """Bind one of the user's SIP devices; ``AnswerCall`` then connects calls there.

    No same-id answer (mx-protocol.md §4.2): an ``AssignDeviceInfo`` event (id 9999) names
    the device bound now, the one asked for if it is one of the user's, else the one bound
    before (the extension itself when none was): a different name is how the original client
    learnt of a refusal ("bad device name").
    """
    name = text(command.element, "deviceID")
    user = session.user
    if user is not None and name in user.devices:
        session.device = name
    session.send_event(wire.assign_device_info(
        session.device or (user.extension if user is not None else "")))
