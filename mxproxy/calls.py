"""The calls of one MX's users, as the monitors on their extensions report them: the one source
of truth for the API (``GET calls``, the 409 answers), the push dispatcher
(``answeredElsewhere``) and, later, the event hub.

Each monitored event moves one user's call to its next state (:func:`advance`); a call that is
over for the user leaves the table, and so does one without any event for an hour (an end the
MX never reported must not stay forever). Observers get every event with the user's call
before and after it. When the link goes down the table is emptied, and the observers are not
told call by call: the MX no longer reports those calls, so any ending would be a guess (a
"call ended" push would silence a phone that still rings); whoever shows calls subscribes to
:meth:`mxproxy.mx.MXServer.on_link_down` and fetches them again.

The MX says nothing about calls already in progress when a monitor starts: a user's table
holds the calls that had an event since their monitor started.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime

from mxproxy.csta.events import (
    CallEvent,
    ConnectionCleared,
    Delivered,
    Diverted,
    Established,
    Held,
    Originated,
    Retrieved,
    Transferred,
)
from mxproxy.logs import Logger, RateLimitedLog
from mxproxy.monitors import CallMonitors
from mxproxy.mx import MXServer

T = TypeVar("T")

RINGING, DIALING, CONNECTED, HELD = "ringing", "dialing", "connected", "held"
INCOMING, OUTGOING = "incoming", "outgoing"

FORGET_AFTER = 3600.0
"""Seconds without an event after which a call is dropped, ended or not."""
SWEEP_INTERVAL = 60.0
"""Seconds between two looks for such calls: not one per event."""
MAX_CALLS_PER_USER = 16
"""Calls one user keeps; beyond them the least recently active goes (an MX that reports calls
without ever ending them must not grow memory)."""
ENDED_KEPT = 32
"""Ended calls remembered per user, for ``ENDED_FOR`` seconds: an answer to a call that is
over is a conflict (409), not an unknown call, and the MX forgets ended calls at once."""
ENDED_FOR = 600.0


@attrs.frozen
class Call:
    """One call as it stands for one user. ``since``: when it entered ``state`` (clock
    seconds); ``peer``: the other party's number, ``peer_name`` their name when known."""

    call_id: int
    state: str
    direction: str
    peer: str
    peer_name: str | None = None
    since: float = 0.0
    global_call_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The API's form: ``peerName`` and ``globalCallId`` only when known."""
        body: dict[str, Any] = {"callId": self.call_id, "state": self.state,
                                "direction": self.direction, "peer": self.peer}
        if self.peer_name:
            body["peerName"] = self.peer_name
        body["since"] = int(self.since)
        if self.global_call_id:
            body["globalCallId"] = self.global_call_id
        return body


CallObserver = Callable[[str, CallEvent, Call | None, Call | None], None]
"""Receives (JID, typed event, the user's call before it, after it); None: no call."""

NameOf = Callable[[str], str]
"""The address book's name for a number, "" when it has none."""


def advance(call: Call | None, event: CallEvent, ext: str, now: float,
            name_of: NameOf) -> Call | None:
    """The user's call after ``event`` on the monitor of their extension ``ext``: None once it
    is over for them (or when the event is about no call of theirs). An event this module does
    not know changes nothing."""
    step = _STEPS.get(type(event))
    after = call if step is None else step(call, event, ext, name_of)
    if after is None or after is call:
        return after
    if call is None or after.state != call.state:
        after = attrs.evolve(after, since=now)
    if after.global_call_id is None and call is not None:
        after = attrs.evolve(after, global_call_id=call.global_call_id)
    return after


def _party(call: Call | None, event: CallEvent, state: str, direction: str, peer: str,
           display_name: str, name_of: NameOf) -> Call:
    """``call`` (or a new one) in ``state`` with ``peer``, named by the event, by the book, or
    as before."""
    known = call.peer_name if call is not None and call.peer == peer else None
    return Call(event.call_id, state, direction, peer,
                display_name or name_of(peer) or known, call.since if call is not None else 0.0,
                event.global_call_id or None)


def _delivered(call: Call | None, event: Delivered, ext: str, name_of: NameOf) -> Call | None:
    # The device that rings is this user's: ``calledDevice`` stays the number first dialled,
    # which after a transfer or a hunt group is no longer where the call rings.
    if (event.alerting_device or event.called_device) == ext:
        return _party(call, event, RINGING, INCOMING, event.calling_device,
                      event.calling_display_name, name_of)
    if event.calling_device == ext:  # the far end of this user's own call rings
        return _party(call, event, DIALING, OUTGOING,
                      event.alerting_device or event.called_device,
                      event.alerting_display_name, name_of)
    return call


def _established(call: Call | None, event: Established, ext: str,
                 name_of: NameOf) -> Call | None:
    if (event.answering_device or event.device_id) == ext:
        if call is not None:
            return attrs.evolve(call, state=CONNECTED)
        return _party(None, event, CONNECTED, INCOMING, event.calling_device,
                      event.calling_display_name, name_of)
    if event.calling_device == ext:  # the far end answered this user's call
        return _party(call, event, CONNECTED, OUTGOING, event.answering_device,
                      event.answering_display_name, name_of)
    if call is None or call.state == RINGING:
        return None  # answered elsewhere: no longer this user's call
    return call


def _cleared(call: Call | None, event: ConnectionCleared, ext: str,
             name_of: NameOf) -> Call | None:
    # Whoever hung up: in a call of two that ends it. (A conference that goes on without the
    # party that left would end here too; the MX's events on it are not modelled yet.)
    return None


def _held(call: Call | None, event: Held, ext: str, name_of: NameOf) -> Call | None:
    if call is None or event.holding_device not in (ext, ""):
        return call  # held by the other party: still connected for this user
    return attrs.evolve(call, state=HELD)


def _retrieved(call: Call | None, event: Retrieved, ext: str, name_of: NameOf) -> Call | None:
    if call is None or call.state != HELD or event.retrieving_device not in (ext, ""):
        return call
    return attrs.evolve(call, state=CONNECTED)


def _originated(call: Call | None, event: Originated, ext: str,
                name_of: NameOf) -> Call | None:
    if (event.calling_device or event.device_id) != ext or (
            call is not None and call.state != DIALING):
        return call
    return _party(call, event, DIALING, OUTGOING, event.called_device, "", name_of)


def _diverted(call: Call | None, event: Diverted, ext: str, name_of: NameOf) -> Call | None:
    if call is None or event.new_destination == ext:
        return call  # now ringing here: a DeliveredEvent says so
    if call.direction == OUTGOING and event.diverting_device != ext and event.new_destination:
        return _with_peer(call, event.new_destination, name_of)
    return None  # went elsewhere


def _transferred(call: Call | None, event: Transferred, ext: str,
                 name_of: NameOf) -> Call | None:
    if call is None or event.transferring_device == ext:
        return None  # handed on by this user
    peer = event.transferred_to_device
    if not peer or peer == ext:
        return call
    return _with_peer(call, peer, name_of)


def _with_peer(call: Call, peer: str, name_of: NameOf) -> Call:
    """The call, now with another far end (the MX names it in no event: the book does)."""
    return attrs.evolve(call, peer=peer, peer_name=name_of(peer) or None)


_STEPS: dict[type, Callable[[Any, Any, str, NameOf], Call | None]] = {
    Delivered: _delivered, Established: _established, ConnectionCleared: _cleared,
    Held: _held, Retrieved: _retrieved, Originated: _originated, Diverted: _diverted,
    Transferred: _transferred}


class CallState:
    """The calls of one MX's users, fed by its :class:`~mxproxy.monitors.CallMonitors`
    (``monitors``: want and release a user's monitor there); built by the service for every
    MX, with or without push."""

    log = Logger()

    def __init__(self, server: MXServer, clock: IReactorTime) -> None:
        self._server = server
        self._clock = clock
        self.monitors = CallMonitors(server, clock, self._event)
        self._calls: dict[str, dict[int, tuple[Call, float]]] = {}
        """JID → call id → (the call, when it last had an event)."""
        self._ended: dict[str, dict[int, float]] = {}
        """JID → call id → when it ended for the user (at most ``ENDED_KEPT`` each)."""
        self._observers: list[CallObserver] = []
        self._swept = clock.seconds()
        self._crowded = RateLimitedLog(self.log, clock,
                                       f"mx.{server.name}: a user with too many calls again",
                                       600.0)
        server.on_link_down(self._link_down)

    def on_call_event(self, observer: CallObserver) -> None:
        """Call ``observer(jid, event, before, after)`` for every monitored call event."""
        self._observers.append(observer)

    def calls_of(self, jid: str) -> list[Call]:
        """The user's current calls, oldest first."""
        self._sweep()
        return [call for call, _ in self._calls.get(jid, {}).values()]

    def call(self, jid: str, call_id: int) -> Call | None:
        """One current call of the user; None once it has ended for them."""
        self._sweep()
        entry = self._calls.get(jid, {}).get(call_id)
        return entry[0] if entry is not None else None

    def ended(self, jid: str, call_id: int) -> bool:
        """Whether the call ended for the user within the last ``ENDED_FOR`` seconds."""
        self._sweep()
        return call_id in self._ended.get(jid, {})

    def _name_of(self, number: str) -> str:
        """The address book's name for an extension, "" when it has none."""
        contact = self._server.address_book.by_ext(number)
        if contact is None:
            return ""
        return " ".join(part for part in (contact.first_name, contact.last_name) if part)

    def _event(self, jid: str, ext: str, event: CallEvent) -> None:
        now = self._clock.seconds()
        self._sweep()
        calls = self._calls.setdefault(jid, {})
        entry = calls.get(event.call_id)
        before = entry[0] if entry is not None else None
        after = advance(before, event, ext, now, self._name_of)
        if after is None:
            calls.pop(event.call_id, None)
            if before is not None:
                self._remember_ended(jid, event.call_id, now)
        else:
            calls[event.call_id] = (after, now)
            if len(calls) > MAX_CALLS_PER_USER:
                oldest = min(calls, key=lambda call_id: calls[call_id][1])
                del calls[oldest]
                self._crowded.emit("mx.{name}: user {jid} has more than {count} calls; "
                                   "dropping the least recently active", name=self._server.name,
                                   jid=jid, count=MAX_CALLS_PER_USER)
        if not calls:
            del self._calls[jid]
        for observer in tuple(self._observers):
            observer(jid, event, before, after)

    def _remember_ended(self, jid: str, call_id: int, now: float) -> None:
        ended = self._ended.setdefault(jid, {})
        ended.pop(call_id, None)
        ended[call_id] = now
        if len(ended) > ENDED_KEPT:
            del ended[next(iter(ended))]  # the earliest ended: dicts keep insertion order

    def _sweep(self) -> None:
        now = self._clock.seconds()
        if now - self._swept < SWEEP_INTERVAL:
            return
        self._swept = now
        _drop_before(self._calls, now - FORGET_AFTER, lambda entry: entry[1])
        _drop_before(self._ended, now - ENDED_FOR, lambda when: when)

    def _link_down(self, reason: Exception) -> None:
        self._calls.clear()


def _drop_before(table: dict[str, dict[int, T]], horizon: float,
                 when: Callable[[T], float]) -> None:
    """Drop every user's entries whose time (``when``) is before ``horizon``, and the users
    left with none."""
    for jid in list(table):
        entries = table[jid]
        for call_id in [call_id for call_id, entry in entries.items() if when(entry) < horizon]:
            del entries[call_id]
        if not entries:
            del table[jid]
