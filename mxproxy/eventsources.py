"""What feeds an MX's event hub (:mod:`mxproxy.events`): the changes of each user's calls, of
the address book, and of the MX link. The service wires them with :func:`feed`, once per MX.

Whom each kind reaches:

* ``call``: the user whose call changed, with the call as ``GET calls/<id>`` shows it and
  ``event``, what happened (:data:`HAPPENED`); once the call is over for them,
  ``{"callId", "event": "ended", "state": "ended", "cause"}``.
* ``contact``: every user the hub follows on that MX (one address book for all its users), as
  ``{"jid", "change": "added"|"changed"|"removed", "contact"}``, the contact as ``GET
  addressbook`` shows it (none once removed).
* ``link``: every followed user, ``{"state": "down"}`` when the MX link is lost and ``{"state":
  "up"}`` when it is back: the calls in between went unreported, so a client refetches them.
* ``voicemail``: the user whose mailbox changed: ``{"id", "event": "new", "from", "fromName",
  "duration", "mediaType"}`` for a voicemail or recording the MX announces, ``{"id", "event":
  "updated", "read"?, "note"?}`` and ``{"id", "event": "deleted"}`` for the API's own changes
  (the MX tells nobody of those).

A user the hub follows has their calls monitored (reason :data:`~mxproxy.monitors.STREAM`) for
as long as it follows them, which outlasts their last stream by the resume window: a client
that reconnects within it gets the call events it missed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from mxproxy.calls import CONNECTED, HELD, Call, CallState
from mxproxy.csta.events import (
    CallEvent,
    ConnectionCleared,
    Diverted,
    Established,
    MailIncomingReady,
    Retrieved,
    Transferred,
)
from mxproxy.csta.messages import Contact
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.events import CALL, CONTACT, LINK, VOICEMAIL, EventHub
from mxproxy.logs import Logger
from mxproxy.monitors import STREAM
from mxproxy.mx import MXServer

ENDED = "ended"
HAPPENED = ("ringing", "dialing", "connected", "held", "retrieved", "transferred", "diverted",
            ENDED)
"""The values of a call event's ``event``: a new state, or what moved the call without one."""
_ENDED_BY: dict[type, str] = {Established: "answeredElsewhere", Transferred: "transferred",
                              Diverted: "diverted"}
"""The cause of a call's end for this user, by the event that ended it, when the event gives
none of its own (a ``ConnectionClearedEvent`` says why: ``normalClearing``...)."""

log = Logger(__name__)


def feed(hub: EventHub, server: MXServer, calls: CallState) -> None:
    """Publish the call, contact and link events of ``server`` on ``hub``; monitor the calls
    of the users it follows."""

    def call_event(jid: str, event: CallEvent, before: Call | None, after: Call | None) -> None:
        data = call_change(event, before, after)
        if data is not None:
            hub.publish(jid, CALL, data)

    def mail(jid: str, event: MailIncomingReady) -> None:
        hub.publish(jid, VOICEMAIL, new_mail(event))

    def contact_changed(before: Contact | None, after: Contact | None) -> None:
        data = contact_change(before, after)
        if data is not None:
            hub.publish_all(CONTACT, data)

    def follow(jid: str, followed: bool) -> None:
        step = calls.monitors.want(jid, STREAM) if followed else \
            calls.monitors.release(jid, STREAM)
        Deferred.fromCoroutine(step).addErrback(
            lambda failure: log.failure("mx.{name}: the call monitor of {jid} for its event "
                                        "stream", failure, name=server.name, jid=jid))

    def link_down(reason: Exception) -> None:
        hub.publish_all(LINK, {"state": "down"})

    def link_up(protocol: CSTAProtocol) -> None:
        hub.publish_all(LINK, {"state": "up"})

    calls.on_call_event(call_event)
    calls.monitors.on_mail(mail)
    server.on_contact_changed(contact_changed)
    server.on_link_down(link_down)
    server.on_link_up(link_up)
    hub.on_follow(follow)


def call_change(event: CallEvent, before: Call | None,
                after: Call | None) -> dict[str, Any] | None:
    """The ``call`` event's data for a user whose call went from ``before`` to ``after`` on
    ``event``; None when nothing changed for them."""
    if after is None:
        if before is None:
            return None
        cause = event.cause if isinstance(event, ConnectionCleared) and event.cause else \
            _ENDED_BY.get(type(event), ENDED)
        data: dict[str, Any] = {"callId": before.call_id, "event": ENDED, "state": ENDED,
                                "cause": cause}
        if before.global_call_id:
            data["globalCallId"] = before.global_call_id
        return data
    if after == before:
        return None
    data = after.to_json()
    if isinstance(event, Retrieved) and before is not None and before.state == HELD \
            and after.state == CONNECTED:
        data["event"] = "retrieved"
    elif isinstance(event, (Transferred, Diverted)):
        data["event"] = "transferred" if isinstance(event, Transferred) else "diverted"
    else:
        data["event"] = after.state
    return data


def new_mail(event: MailIncomingReady) -> dict[str, Any]:
    """The ``voicemail`` event's data for a mail the MX announces (read or not: a client shows
    it either way)."""
    return {"id": event.mail_id, "event": "new", "from": event.sender,
            "fromName": event.from_name, "duration": event.duration,
            "mediaType": event.media_type}


def contact_change(before: Contact | None, after: Contact | None) -> dict[str, Any] | None:
    """The ``contact`` event's data for an address-book change; None when it changed nothing."""
    if after is None:
        return None if before is None else {"jid": before.jid, "change": "removed"}
    if after == before:
        return None
    return {"jid": after.jid, "change": "added" if before is None else "changed",
            "contact": after.to_json()}
