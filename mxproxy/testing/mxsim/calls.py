"""The calls of a simulated MX: who rings whom, who answered, and the events each step causes.

:class:`CallSwitch` is the call half of the PBX, which mixes it in and provides what it
declares: the directory (who is an extension, names, call logs) and the monitors. Every event
goes to each monitor of each device involved (mx-protocol.md §1.7: call events reach monitors
only), and a call that ends is written to the call log of its users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.model import Call, CallRecord, Conflict, Contact, UnknownObject, User

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mxproxy.testing.mxsim.server import Session


class CallSwitch:
    """The calls in progress (``calls``, by call id) and what happens to them."""

    if TYPE_CHECKING:  # provided by the PBX
        clock: IReactorTime

        def is_extension(self, device: str) -> bool: ...
        def display_name(self, device: str) -> str: ...
        def user_by_extension(self, extension: str) -> User | None: ...
        def contact_at(self, extension: str) -> Contact | None: ...
        def add_call_record(self, login: str, **fields: Any) -> CallRecord: ...
        def monitors_of(self, device: str) -> list[tuple[Session, int]]: ...

    def __init__(self) -> None:
        self.calls: dict[int, Call] = {}
        self._last_call_id = 0

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

    def ring(self, call: Call) -> None:
        """DeliveredEvent to the monitors of both parties (outside numbers have none)."""
        self._notify(call, lambda cross_ref: wire.delivered_event(cross_ref, call))

    def answer(self, call: Call | int, device: str | None = None) -> Call:
        """``device`` (the callee by default) answers: EstablishedEvent to both parties."""
        call = self._live_call(call)
        if call.state != "alerting":
            raise Conflict(f"call {call.call_id} is {call.state}")
        call.state = "established"
        call.answered_by = device or call.called
        call.answered = int(self.clock.seconds())
        name = self.display_name(call.answered_by)
        self._notify(call, lambda cross_ref: wire.established_event(cross_ref, call, name))
        return call

    def hang_up(self, call: Call | int, device: str | None = None) -> Call:
        """``device`` (the caller by default) hangs up: ConnectionClearedEvent to both parties.

        The call is then written to the call log of each party that is a user.
        """
        call = self._live_call(call)
        releasing = device or call.calling
        call.state = "cleared"
        self._notify(call, lambda cross_ref: wire.connection_cleared_event(
            cross_ref, call, releasing))
        del self.calls[call.call_id]
        self._log_call(call)
        return call

    def _live_call(self, call: Call | int) -> Call:
        call_id = call if isinstance(call, int) else call.call_id
        try:
            return self.calls[call_id]
        except KeyError:
            raise UnknownObject(f"no call {call_id}") from None

    def _notify(self, call: Call, event: Any) -> None:
        devices = dict.fromkeys(d for d in (call.called, call.calling, call.answered_by) if d)
        for device in devices:
            for session, cross_ref in self.monitors_of(device):
                session.send_event(event(cross_ref))

    def _log_call(self, call: Call) -> None:
        now = int(self.clock.seconds())
        for extension, direction, other in ((call.calling, "outgoing", call.called),
                                            (call.called, "incoming", call.calling)):
            user = self.user_by_extension(extension)
            if user is None:
                continue
            contact = self.contact_at(other) or Contact("")
            self.add_call_record(
                user.login, direction=direction, disconnect=now, calling_party=call.calling,
                original_called_party=call.called, connect=call.answered,
                missed=direction == "incoming" and call.answered is None,
                first_name=contact.first_name, last_name=contact.last_name,
                extension=contact.business_phone)
