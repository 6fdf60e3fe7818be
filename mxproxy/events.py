"""The live events of one MX's users, for their open streams (``GET events``).

Each user has a short memory of their events: the last :data:`KEEP` events of the last
:data:`KEEP_FOR` seconds, so that a client that lost its stream resumes where it stopped
(``Last-Event-ID``) without missing anything. An event id is ``<epoch>-<n>``: ``n`` counts the
user's events, the epoch this process, so that an id from before a restart (or from nowhere)
is told apart from one merely too old: both get a ``reset`` first, which tells the client to
fetch its state afresh.

A user is remembered from their first stream until their buffer has aged out after their last
stream closed: events for users nobody follows are not kept (the hub's memory grows with the
streams, not with the MX's users). Every subscriber is a :class:`Sink` that decides itself what
a slow reader costs (:mod:`mxproxy.api.events` cuts it at 1 MiB waiting).
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime

from mxproxy.calls import Call, CallState
from mxproxy.csta.events import (
    CallEvent,
    ConnectionCleared,
    Delivered,
    Diverted,
    Established,
    Held,
    MailIncomingReady,
    Originated,
    Retrieved,
    Transferred,
)
from mxproxy.csta.messages import Contact
from mxproxy.mx import MXServer

KEEP = 256
KEEP_FOR = 600.0
SWEEP_INTERVAL = 60.0
CALL, VOICEMAIL, CONTACT, LINK, RESET = "call", "voicemail", "contact", "link", "reset"


class Sink(Protocol):
    """One open stream: takes encoded frames."""

    def send(self, frame: bytes) -> None: ...


@attrs.frozen
class Event:
    number: int
    at: float
    frame: bytes
    """The whole Server-Sent Events frame: ``event:``, ``id:``, one ``data:`` line."""


def frame(kind: str, event_id: str, data: bytes) -> bytes:
    return b"event: %s\nid: %s\ndata: %s\n\n" % (kind.encode(), event_id.encode(), data)


def encode(data: dict[str, Any]) -> bytes:
    """One line of JSON: ``json.dumps`` escapes line breaks inside strings."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class _User:
    def __init__(self) -> None:
        self.events: deque[Event] = deque(maxlen=KEEP)
        self.count = 0
        self.sinks: list[Sink] = []
        self.left = 0.0
        """When the last stream closed."""


class EventHub:
    """The events of one MX's followed users."""

    def __init__(self, clock: IReactorTime, epoch: str | None = None, keep: int = KEEP,
                 keep_for: float = KEEP_FOR) -> None:
        self._clock = clock
        self.epoch = epoch if epoch is not None else os.urandom(4).hex()
        self._keep = keep
        self._keep_for = keep_for
        self._users: dict[str, _User] = {}
        self._swept = clock.seconds()

    def __len__(self) -> int:
        """Open streams."""
        return sum(len(user.sinks) for user in self._users.values())

    def streams(self, jid: str) -> int:
        user = self._users.get(jid)
        return len(user.sinks) if user is not None else 0

    def publish(self, jid: str, kind: str, data: dict[str, Any]) -> None:
        """An event of ``jid``'s: to their open streams and their buffer, if they are
        followed."""
        user = self._users.get(jid)
        if user is not None:
            self._publish(jid, user, kind, encode(data))

    def publish_all(self, kind: str, data: dict[str, Any]) -> None:
        """An event of every followed user (the address book, the MX link), encoded once."""
        body = encode(data)
        for jid, user in list(self._users.items()):
            self._publish(jid, user, kind, body)

    def subscribe(self, jid: str, sink: Sink, last_event_id: str | None) -> Callable[[], None]:
        """Send ``sink`` what it missed since ``last_event_id`` (``reset`` first when that is
        unknown or too old), then every new event; returns the unsubscribe call."""
        now = self._clock.seconds()
        self._forget_idle()
        user = self._users.get(jid)
        if user is None:
            user = self._users[jid] = _User()
        self._expire(user, now)
        if last_event_id is not None:
            for missed in self._since(jid, user, last_event_id):
                sink.send(missed)
        user.sinks.append(sink)

        def unsubscribe() -> None:
            if sink in user.sinks:
                user.sinks.remove(sink)
                user.left = self._clock.seconds()

        return unsubscribe

    def _since(self, jid: str, user: _User, last_event_id: str) -> list[bytes]:
        epoch, _, number = last_event_id.strip().rpartition("-")
        seen = int(number) if epoch == self.epoch and number.isdigit() else None
        oldest = user.events[0].number if user.events else user.count + 1
        if seen is None or seen > user.count or seen < oldest - 1:
            user.count += 1
            return [frame(RESET, f"{self.epoch}-{user.count}", b"{}")]
        return [event.frame for event in user.events if event.number > seen]

    def _publish(self, jid: str, user: _User, kind: str, body: bytes) -> None:
        now = self._clock.seconds()
        self._expire(user, now)
        user.count += 1
        event = Event(user.count, now, frame(kind, f"{self.epoch}-{user.count}", body))
        user.events.append(event)
        for sink in tuple(user.sinks):
            sink.send(event.frame)

    def _expire(self, user: _User, now: float) -> None:
        horizon = now - self._keep_for
        while user.events and user.events[0].at < horizon:
            user.events.popleft()

    def _forget_idle(self) -> None:
        """Drop the users without streams whose buffer has aged out; a look at most once a
        minute, not one per closed stream."""
        now = self._clock.seconds()
        if now - self._swept < SWEEP_INTERVAL:
            return
        self._swept = now
        horizon = now - self._keep_for
        for jid in [jid for jid, user in self._users.items()
                    if not user.sinks and user.left < horizon]:
            del self._users[jid]


# -- what feeds the hub ------------------------------------------------------------------------

_CALL_STEPS: dict[type, str] = {
    Delivered: "ringing", Established: "connected", Held: "held", Retrieved: "retrieved",
    Transferred: "transferred", Diverted: "diverted", Originated: "dialing",
    ConnectionCleared: "ended"}
"""What happened, by the event that says so; a ``DeliveredEvent`` of the user's own call says
its far end rings (``dialing``)."""


def call_data(event: CallEvent, before: Call | None, after: Call | None) -> dict[str, Any] | None:
    """The ``call`` event for a change of the user's call: the call as ``GET calls/<id>`` shows
    it, with ``event`` (what happened); ``state: ended`` with the cause once it is over for the
    user. None when nothing changed for them."""
    if after is None:
        if before is None:
            return None
        return {"callId": before.call_id, "state": "ended", "event": "ended",
                "cause": event.cause}
    if after == before:
        return None
    happened = _CALL_STEPS.get(type(event), after.state)
    if happened == "ringing" and after.state != "ringing":
        happened = after.state
    return {**after.to_json(), "event": happened}


def follow(hub: EventHub, server: MXServer, calls: CallState) -> None:
    """Feed ``hub`` from one MX: its users' calls and new voicemail, its address book and its
    link."""

    def call_event(jid: str, event: CallEvent, before: Call | None,
                   after: Call | None) -> None:
        data = call_data(event, before, after)
        if data is not None:
            hub.publish(jid, CALL, data)

    def mail(jid: str, event: MailIncomingReady) -> None:
        hub.publish(jid, VOICEMAIL, {"id": event.mail_id, "event": "new", "from": event.sender,
                                     "fromName": event.from_name, "duration": event.duration,
                                     "mediaType": event.media_type})

    def contact(before: Contact | None, after: Contact | None) -> None:
        change = "removed" if after is None else "added" if before is None else "changed"
        entry = after if after is not None else before
        assert entry is not None
        hub.publish_all(CONTACT, {"jid": entry.jid, "event": change,
                                  "contact": None if after is None else after.to_json()})

    calls.on_call_event(call_event)
    calls.monitors.on_mail(mail)
    server.on_contact_changed(contact)
    server.on_link_up(lambda protocol: hub.publish_all(LINK, {"state": "up"}))
    server.on_link_down(lambda reason: hub.publish_all(LINK, {"state": "down"}))
