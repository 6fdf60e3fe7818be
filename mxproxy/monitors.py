"""Call monitors on an MX's server link for the users who registered a device.

A user's first device token starts ``MonitorStart`` on their extension; the MX then reports
that extension's calls tagged with the monitor's ``monitorCrossRefID``, which this module maps
back to the user. Monitors live and die with the link, so every (re)connect restarts them for
every user the token store knows on that MX; an extension change in the address book moves
the monitor; the last token removed stops it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred

from mxproxy.csta import commands
from mxproxy.csta.errors import MXError
from mxproxy.csta.messages import EVENTS, Contact, MonitorStarted
from mxproxy.csta.protocol import CSTAProtocol, Message
from mxproxy.csta.records import XMLRecord
from mxproxy.logs import Logger
from mxproxy.mx import MXServer

CALL_EVENTS = ("DeliveredEvent", "EstablishedEvent", "ConnectionClearedEvent")

CallObserver = Callable[[str, XMLRecord], None]
"""Receives (JID of the monitored user, typed call event)."""


class CallMonitors:
    """The monitors of one MX: which user each ``monitorCrossRefID`` belongs to."""

    log = Logger()

    def __init__(self, server: MXServer, stored_users: Callable[[str], Awaitable[list[str]]],
                 on_call_event: CallObserver) -> None:
        """``stored_users(sn)``: the JIDs of the users with devices on the MX ``sn``."""
        self._server = server
        self._stored_users = stored_users
        self._on_call_event = on_call_event
        self._wanted: set[str] = set()
        self._starting: set[str] = set()
        self._by_ref: dict[int, str] = {}
        self._by_jid: dict[str, tuple[int, str]] = {}
        server.on_link_up(self._link_up)
        server.on_contact_changed(self._contact_changed)

    def __len__(self) -> int:
        return len(self._by_jid)

    def monitored(self, jid: str) -> str | None:
        """The extension monitored for ``jid``, if a monitor is running."""
        entry = self._by_jid.get(jid)
        return entry[1] if entry is not None else None

    async def watch(self, jid: str) -> None:
        """Make sure the user's calls are monitored (now if the link is up, else on connect)."""
        self._wanted.add(jid)
        protocol = self._server.protocol
        if protocol is not None and jid not in self._by_jid:
            await self._start(protocol, jid)

    async def unwatch(self, jid: str) -> None:
        """Stop monitoring a user whose last device is gone."""
        self._wanted.discard(jid)
        await self._stop(jid)

    # -- link life ----------------------------------------------------------------------------

    def _link_up(self, protocol: CSTAProtocol) -> None:
        for name in CALL_EVENTS:
            protocol.subscribe(name, self._call_event)
        protocol.when_closed().addCallback(lambda _: self._link_down())
        Deferred.fromCoroutine(self._restart(protocol))

    def _link_down(self) -> None:
        """The MX drops a link's monitors with it; the next link-up starts them again."""
        self._by_ref.clear()
        self._by_jid.clear()

    async def _restart(self, protocol: CSTAProtocol) -> None:
        sn = self._server.sn
        try:
            stored = await self._stored_users(sn or "")
        except Exception:
            self.log.failure("mx.{name}: cannot read the users to monitor", name=self._server.name)
            return
        self._wanted.update(stored)
        for jid in sorted(self._wanted):
            if protocol.up and jid not in self._by_jid:
                await self._start(protocol, jid)
        self.log.info("mx.{name}: monitoring calls of {count} users", name=self._server.name,
                      count=len(self._by_jid))

    async def _start(self, protocol: CSTAProtocol, jid: str) -> None:
        contact = self._server.address_book.get(jid)
        if contact is None or not contact.ext:
            self.log.warn("mx.{name}: user {jid} has no extension in the address book; "
                          "not monitored", name=self._server.name, jid=jid)
            return
        if jid in self._starting:
            return
        self._starting.add(jid)
        try:
            reply = await protocol.request(commands.monitor_start(contact.ext))
            ref = MonitorStarted.from_xml(reply.element).cross_ref_id
        except MXError as error:
            self.log.error("mx.{name}: MonitorStart for {ext} failed: {error}",
                           name=self._server.name, ext=contact.ext, error=error)
            return
        finally:
            self._starting.discard(jid)
        if protocol is not self._server.protocol:
            return  # the link changed meanwhile; the restart covers this user
        self._by_ref[ref] = jid
        self._by_jid[jid] = (ref, contact.ext)

    async def _stop(self, jid: str) -> None:
        entry = self._by_jid.pop(jid, None)
        if entry is None:
            return
        ref, ext = entry
        self._by_ref.pop(ref, None)
        protocol = self._server.protocol
        if protocol is None:
            return
        try:
            await protocol.request(commands.monitor_stop(ref))
        except MXError as error:
            self.log.warn("mx.{name}: MonitorStop for {ext} failed: {error}",
                          name=self._server.name, ext=ext, error=error)

    def _contact_changed(self, before: Contact | None, after: Contact | None) -> None:
        contact = after or before
        if contact is None:
            return
        jid = contact.jid
        entry = self._by_jid.get(jid)
        if entry is None or (after is not None and after.ext == entry[1]):
            return
        Deferred.fromCoroutine(self._move(jid))

    async def _move(self, jid: str) -> None:
        await self._stop(jid)
        protocol = self._server.protocol
        if jid in self._wanted and protocol is not None:
            await self._start(protocol, jid)

    # -- events -------------------------------------------------------------------------------

    def _call_event(self, message: Message) -> None:
        event = EVENTS[message.name].from_xml(message.element)
        ref = getattr(event, "monitor_cross_ref_id", None)
        jid = self._by_ref.get(ref) if isinstance(ref, int) else None
        if jid is None:
            self.log.debug("mx.{name}: {event} for an unknown monitor {ref}",
                           name=self._server.name, event=message.name, ref=ref)
            return
        self._on_call_event(jid, event)
