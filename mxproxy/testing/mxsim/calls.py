"""The calls of a simulated MX: who rings whom, who answered, and the events each step causes.

:class:`CallSwitch` is the call half of the PBX, which mixes it in and provides what it
declares: the directory (who is an extension, names, call logs, services) and the monitors.
Tests, the control API and the CSTA operations drive it. A call is a state machine::

    alerting --answer--> established --hold--> held --retrieve--> established
    alerting --deflect--> alerting (at the new destination)
    established --transfer--> alerting (at the target; the transferring party has left)
    any --hang up--> cleared (forgotten; written to the call log of its users)
    established --start recording--> established, recorded by that party until it stops
        recording or leaves (hang-up, transfer): then the recording goes to its mailbox

Deflecting or transferring to the voicemail service (``*86``, the ``VM`` service) ends the
call as taken by voicemail (the message itself is not modelled). Every event goes to each
monitor of each device involved (mx-protocol.md §1.7: call events reach monitors only).

A command the call's state does not allow raises :class:`WrongState` with the ECMA-323
``stateIncompatibility`` value the MX answers (listed in :mod:`mxproxy.csta.errors`); an id
with no call in progress raises :class:`UnknownObject` (``invalidCallID``), ended calls
included: a switch releases a call's id when it ends [assumption: the MX's answer for an
ended call is not documented]. Each command takes ``confirm``, called once the command is
accepted and before its events go out, so that a same-id answer precedes them (as MakeCall's
does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mxproxy.csta.errors import (
    INVALID_OBJECT_STATE,
    NO_ACTIVE_CALL,
    NO_CALL_TO_ANSWER,
    NO_CONNECTION_TO_CLEAR,
    NO_HELD_CALL,
)
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.model import (
    Call,
    CallRecord,
    Contact,
    Service,
    UnknownObject,
    User,
    Variants,
    Voicemail,
    WrongState,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mxproxy.testing.mxsim.server import Session

Confirm = Callable[[Call], None]
Event = Callable[[int], wire.Element]


def _accepted(call: Call) -> None:
    """The default ``confirm``: nobody to tell."""


class InvalidDestination(ValueError):
    """A transfer or deflection to a number the PBX cannot reach (``invalidDestination``)."""


class CallSwitch:
    """The calls in progress (``calls``, by call id) and what happens to them."""

    if TYPE_CHECKING:  # provided by the PBX
        clock: IReactorTime
        services: list[Service]
        variants: Variants

        def is_extension(self, device: str) -> bool: ...
        def is_dialable(self, number: str) -> bool: ...
        def display_name(self, device: str) -> str: ...
        def user_by_extension(self, extension: str) -> User | None: ...
        def contact_at(self, extension: str) -> Contact | None: ...
        def add_call_record(self, login: str, **fields: Any) -> CallRecord: ...
        def monitors_of(self, device: str) -> list[tuple[Session, int]]: ...
        def file_recording(self, login: str, call: Call, peer: str,
                           duration: int) -> Voicemail: ...

    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}
        self._last_call_id = 0

    # -- calls coming and going ------------------------------------------------------------

    def place_call(self, calling: str, called_ext: str, calling_name: str = "") -> Call:
        """Ring extension ``called_ext`` from ``calling`` (extension or outside number).

        DeliveredEvent goes to every monitor of the callee and, for an internal caller, to the
        caller's monitors as well (the far end of their outgoing call), as the real MX does.
        """
        if not calling:
            raise ValueError("a call needs a calling number")
        if not self.is_extension(called_ext):
            raise UnknownObject(f"no extension {called_ext!r}")
        call = self.create_call(calling, called_ext, calling_name)
        self.ring(call)
        return call

    def create_call(self, calling: str, called: str, calling_name: str = "") -> Call:
        """A new alerting call to any number, without events yet (MakeCall replies first)."""
        self._last_call_id += 1
        now = int(self.clock.seconds())
        call = Call(self._last_call_id, f"{now:010d}{self._last_call_id:09d}", calling, called,
                    calling_name or self.display_name(calling), self.display_name(called),
                    started=now)
        self.calls[call.call_id] = call
        return call

    def ring(self, call: Call, cause: str = "normal") -> None:
        """DeliveredEvent to the monitors of both parties (outside numbers have none);
        ``cause`` says why it rings there (``redirected`` after a deflection...)."""
        self._notify(call.involved,
                     lambda cross_ref: wire.delivered_event(cross_ref, call, cause))

    def call(self, call_id: int) -> Call:
        """The call in progress with this id."""
        try:
            return self.calls[call_id]
        except KeyError:
            raise UnknownObject(f"no call {call_id}") from None

    # -- what the parties do ---------------------------------------------------------------

    def answer(self, call: Call | int, device: str | None = None, on: str = "",
               pickup: bool = True, confirm: Confirm = _accepted) -> Call:
        """``device`` (the callee by default) answers, on the SIP device ``on`` if given:
        EstablishedEvent to both parties and to where it rang. Another device than the callee
        picks the call up, unless ``pickup`` is false (``AnswerCall``: ``noCallToAnswer`` where
        the call does not ring). Once answered, a call is not answered again: of two answers,
        one wins."""
        call = self._live(call)
        device = device or call.callee
        if call.state != "alerting" or not (pickup or device == call.callee):
            raise WrongState(NO_CALL_TO_ANSWER, f"call {call.call_id} is not ringing at {device}")
        confirm(call)
        call.state, call.answered_by, call.answered_on = "established", device, on
        call.answered = int(self.clock.seconds())
        name = self.display_name(device)
        self._notify(call.involved,
                     lambda cross_ref: wire.established_event(cross_ref, call, name))
        return call

    def hang_up(self, call: Call | int, device: str | None = None,
                confirm: Confirm = _accepted) -> Call:
        """``device`` (the caller by default) hangs up: ConnectionClearedEvent to both
        parties (a call has two: when one leaves, it ends), then the call log."""
        call = self._live(call)
        releasing = device or call.calling
        if releasing not in call.ends:
            raise WrongState(NO_CONNECTION_TO_CLEAR,
                             f"{releasing} has no connection in call {call.call_id}")
        confirm(call)
        self._end(call, releasing)
        return call

    def hold(self, call: Call | int, device: str, confirm: Confirm = _accepted) -> Call:
        """A party of a connected call puts it on hold: HeldEvent to both parties."""
        call = self._live(call)
        if call.state != "established" or device not in call.ends:
            raise WrongState(NO_ACTIVE_CALL, f"call {call.call_id} is not connected at {device}")
        confirm(call)
        call.state, call.held_by = "held", device
        self._notify(call.involved, lambda cross_ref: wire.held_event(cross_ref, call))
        return call

    def retrieve(self, call: Call | int, device: str, confirm: Confirm = _accepted) -> Call:
        """The party that held the call takes it back: RetrievedEvent to both parties."""
        call = self._live(call)
        if call.state != "held" or device != call.held_by:
            raise WrongState(NO_HELD_CALL, f"call {call.call_id} is not held by {device}")
        confirm(call)
        call.state, call.held_by = "established", ""
        self._notify(call.involved,
                     lambda cross_ref: wire.retrieved_event(cross_ref, call, device))
        return call

    def transfer(self, call: Call | int, device: str, target: str,
                 confirm: Confirm = _accepted) -> Call:
        """A party of a connected call hands it to ``target`` and leaves: TransferedEvent to
        everyone involved, ConnectionClearedEvent to the leaving party's monitors, then the
        target rings with the other party as its caller."""
        call = self._live(call)
        if call.state != "established" or device not in call.ends:
            raise WrongState(NO_ACTIVE_CALL, f"call {call.call_id} is not connected at {device}")
        self._check_destination(call, target)
        remaining = call.other_end(device)
        recorders = self._recorders(call)
        self._log_leg(call, device, answered=True)
        if remaining != call.calling:  # the caller leaves: the other party becomes the caller
            call.calling, call.calling_name = remaining, self.display_name(remaining)
        self._move(call, device, target)
        confirm(call)
        self._finish_recordings(call, recorders)  # it rings anew: nobody records it
        self._notify((device, remaining, target), lambda cross_ref: wire.transferred_event(
            cross_ref, call, device, target))
        self._notify((device,), lambda cross_ref: wire.connection_cleared_event(
            cross_ref, call, device, cause="singleStepTransfer"))
        self._arrive(call, "singleStepTransfer")
        return call

    def deflect(self, call: Call | int, device: str, target: str,
                confirm: Confirm = _accepted) -> Call:
        """The callee sends a call still ringing there on to ``target``: DivertedEvent to
        everyone involved, then the target rings (or voicemail takes the call)."""
        call = self._live(call)
        if call.state != "alerting" or device != call.callee:
            raise WrongState(INVALID_OBJECT_STATE,
                             f"call {call.call_id} is not ringing at {device}")
        self._check_destination(call, target)
        self._log_leg(call, device, answered=False)
        self._move(call, device, target)
        confirm(call)
        self._notify((call.calling, device, target), lambda cross_ref: wire.diverted_event(
            cross_ref, call, device, target))
        self._arrive(call, "redirected")
        return call

    def start_recording(self, call: Call | int, device: str,
                        confirm: Confirm = _accepted) -> Call:
        """A party of a connected call records it: RecordingStateEvent (active) to its
        monitors. The recording goes on through hold and retrieve, until it is stopped or the
        party leaves the call."""
        call = self._live(call)
        if call.state != "established" or device not in call.ends:
            raise WrongState(NO_ACTIVE_CALL, f"call {call.call_id} is not connected at {device}")
        if device in call.recordings:
            raise WrongState(INVALID_OBJECT_STATE, f"{device} records call {call.call_id} "
                                                   "already")
        confirm(call)
        call.recordings[device] = int(self.clock.seconds())
        self._recording_state(call, device, True)
        return call

    def stop_recording(self, call: Call | int, device: str,
                       confirm: Confirm = _accepted) -> Call:
        """RecordingStateEvent (inactive), then the recording is filed in the party's
        mailbox (:meth:`file_recording`)."""
        call = self._live(call)
        if device not in call.recordings:
            raise WrongState(INVALID_OBJECT_STATE,
                             f"{device} does not record call {call.call_id}")
        confirm(call)
        self._finish_recording(call, device, call.other_end(device))
        return call

    # -- the parts ---------------------------------------------------------------------------

    def _recording_state(self, call: Call, device: str, active: bool) -> None:
        shape = self.variants.recording_state
        self._notify((device,), lambda cross_ref: wire.recording_state_event(
            cross_ref, call, device, active, shape))

    def _finish_recording(self, call: Call, device: str, peer: str) -> None:
        """``device`` stops recording its conversation with ``peer``."""
        started = call.recordings.pop(device)
        self._recording_state(call, device, False)
        user = self.user_by_extension(device)
        if user is not None:
            self.file_recording(user.login, call, peer, int(self.clock.seconds()) - started)

    def _finish_recordings(self, call: Call, peers: dict[str, str]) -> None:
        """Every recording of the call, which ends or rings anew; ``peers`` is each recording
        party's far end before that (:meth:`_recorders`)."""
        for device, peer in peers.items():
            self._finish_recording(call, device, peer)

    @staticmethod
    def _recorders(call: Call) -> dict[str, str]:
        return {device: call.other_end(device) for device in call.recordings}

    def _live(self, call: Call | int) -> Call:
        return self.call(call if isinstance(call, int) else call.call_id)

    def _check_destination(self, call: Call, target: str) -> None:
        if target in call.ends or not (self.is_dialable(target) or self._is_voicemail(target)):
            raise InvalidDestination(f"cannot send call {call.call_id} to {target!r}")

    def _is_voicemail(self, number: str) -> bool:
        return any(service.service_type == "VM" and service.extension == number
                   for service in self.services)

    def _move(self, call: Call, leaving: str, target: str) -> None:
        """``target`` takes the callee's place of a call that ``leaving`` left."""
        call.state, call.callee = "alerting", target
        call.callee_name = self.display_name(target)
        call.answered_by = call.answered_on = call.held_by = ""
        call.answered, call.redirected_by = None, leaving

    def _arrive(self, call: Call, cause: str) -> None:
        """The moved call rings at its new callee, or ends in voicemail."""
        if self._is_voicemail(call.callee):
            self._end(call, call.callee)
        else:
            self.ring(call, cause)

    def _end(self, call: Call, releasing: str) -> None:
        self._finish_recordings(call, self._recorders(call))
        call.state = "cleared"
        self._notify(call.involved, lambda cross_ref: wire.connection_cleared_event(
            cross_ref, call, releasing))
        del self.calls[call.call_id]
        for device in call.involved:
            self._log_leg(call, device, answered=call.answered is not None)

    def _notify(self, devices: tuple[str, ...], event: Event) -> None:
        for device in dict.fromkeys(d for d in devices if d):
            for session, cross_ref in self.monitors_of(device):
                session.send_event(event(cross_ref))

    def _log_leg(self, call: Call, device: str, answered: bool) -> None:
        """The call-log record of ``device``'s part in the call, if it is a user's: outgoing
        for the caller, incoming (missed unless answered) for the callee."""
        user = self.user_by_extension(device)
        if user is None:
            return
        outgoing = device == call.calling
        other = call.other_end(device)
        contact = self.contact_at(other) or Contact("")
        self.add_call_record(
            user.login, direction="outgoing" if outgoing else "incoming",
            disconnect=int(self.clock.seconds()), calling_party=call.calling,
            original_called_party=call.called, connect=call.answered if answered else None,
            missed=not outgoing and not answered, first_name=contact.first_name,
            last_name=contact.last_name, extension=contact.business_phone)


def call_json(call: Call) -> dict[str, Any]:
    """A call for the control API: its parties, state, and where it rings or was answered."""
    return {"callId": call.call_id, "globalCallId": call.global_call_id, "from": call.calling,
            "to": call.called, "state": call.state, "parties": list(call.ends),
            "ringing": call.callee if call.state == "alerting" else "",
            "answeredBy": call.answered_by, "answeredOn": call.answered_on,
            "heldBy": call.held_by, "recordedBy": sorted(call.recordings)}
