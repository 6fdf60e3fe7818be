"""Call monitors on an MX's server link, one per user whose calls someone needs to follow.

A monitor is wanted for reasons: :data:`DEVICES` (the user registered a device for pushes),
:data:`CALLS` (the user asked for their calls or used call control: it lapses after 10 minutes
without use), :data:`STREAM` (an open event stream); it runs while any reason holds.
``MonitorStart`` on the user's extension makes the MX report that extension's calls tagged with
the monitor's ``monitorCrossRefID``, which this module maps back to the user. Monitors live and
die with the link, so every (re)connect restarts them for every wanted user, after the sources
given to :meth:`CallMonitors.restore` (the token store's users) added theirs; an extension
change in the address book moves the monitor; the last reason released stops it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mxproxy.csta import commands
from mxproxy.csta.errors import MXError
from mxproxy.csta.events import CallEvent, MailIncomingReady
from mxproxy.csta.messages import EVENTS, Contact, MonitorStarted
from mxproxy.csta.protocol import CSTAProtocol, Message
from mxproxy.logs import Logger
from mxproxy.mx import MXServer

DEVICES = "devices"
CALLS = "calls"
STREAM = "stream"
LEASES: Mapping[str, float] = MappingProxyType({CALLS: 600.0})
"""The reasons that lapse by themselves: seconds after the last :meth:`CallMonitors.want`."""

CALL_EVENTS = tuple(name for name, kind in EVENTS.items() if issubclass(kind, CallEvent))
"""Every call event the CSTA layer can read; the call state takes what it knows of each."""

EventSink = Callable[[str, str, CallEvent], None]
"""Receives (JID of the monitored user, their monitored extension, typed call event); a
``RecordingStateEvent`` is a call event too."""

MailSink = Callable[[str, MailIncomingReady], None]
"""Receives (JID of the monitored user, a new voicemail or recording of theirs)."""

UserSource = Callable[[], Awaitable[Iterable[str]]]
"""The JIDs of users to monitor for one reason, read again at every link-up."""


class CallMonitors:
    """The monitors of one MX: why each user is monitored, and which user each
    ``monitorCrossRefID`` belongs to."""

    log = Logger()

    def __init__(self, server: MXServer, clock: IReactorTime, on_event: EventSink) -> None:
        self._server = server
        self._clock = clock
        self._on_event = on_event
        self._reasons: dict[str, set[str]] = {}
        self._leases: dict[tuple[str, str], IDelayedCall] = {}
        self._sources: list[tuple[str, UserSource]] = []
        self._starting: set[str] = set()
        self._by_ref: dict[int, str] = {}
        self._by_jid: dict[str, tuple[int, str]] = {}
        self._mail_observers: list[MailSink] = []
        server.on_link_up(self._link_up)
        server.on_link_down(self._link_down)
        server.on_contact_changed(self._contact_changed)

    def __len__(self) -> int:
        return len(self._by_jid)

    def monitored(self, jid: str) -> str | None:
        """The extension monitored for ``jid``, if a monitor is running."""
        entry = self._by_jid.get(jid)
        return entry[1] if entry is not None else None

    def reasons(self, jid: str) -> frozenset[str]:
        """Why ``jid`` is to be monitored (empty: not)."""
        return frozenset(self._reasons.get(jid, ()))

    def wanting(self, reason: str) -> list[str]:
        """The users to be monitored for ``reason``."""
        return sorted(jid for jid, reasons in self._reasons.items() if reason in reasons)

    def on_mail(self, observer: MailSink) -> None:
        """Call ``observer(jid, event)`` for every ``MailIncomingReadyEvent`` a monitor reports:
        the MX tells the monitors of a user's extension of new voicemail and recordings."""
        self._mail_observers.append(observer)

    def restore(self, reason: str, source: UserSource) -> None:
        """At every link-up, want ``reason`` for each user ``source`` gives, before the
        monitors restart (the push side's users with devices: they outlive the daemon)."""
        self._sources.append((reason, source))

    async def want(self, jid: str, reason: str) -> None:
        """Monitor the user's calls for ``reason`` (now if the link is up, else on connect);
        a reason of :data:`LEASES` lapses that long after the last call."""
        self._reasons.setdefault(jid, set()).add(reason)
        lease = LEASES.get(reason)
        if lease is not None:
            self._lease(jid, reason, lease)
        protocol = self._server.protocol
        if protocol is not None and jid not in self._by_jid:
            await self._start(protocol, jid)

    async def release(self, jid: str, reason: str) -> None:
        """``reason`` no longer holds; the monitor stops with the last one."""
        timer = self._leases.pop((jid, reason), None)
        if timer is not None and timer.active():
            timer.cancel()
        reasons = self._reasons.get(jid, set())
        reasons.discard(reason)
        if reasons:
            return
        self._reasons.pop(jid, None)
        await self._stop(jid)

    def _lease(self, jid: str, reason: str, seconds: float) -> None:
        timer = self._leases.get((jid, reason))
        if timer is not None and timer.active():
            timer.reset(seconds)
            return
        self._leases[(jid, reason)] = self._clock.callLater(
            seconds, lambda: Deferred.fromCoroutine(self.release(jid, reason)))

    # -- link life ----------------------------------------------------------------------------

    def _link_up(self, protocol: CSTAProtocol) -> None:
        for name in CALL_EVENTS:
            protocol.subscribe(name, self._call_event)
        protocol.subscribe("MailIncomingReadyEvent", self._mail_event)
        Deferred.fromCoroutine(self._restart(protocol))

    def _link_down(self, reason: Exception) -> None:
        """The MX drops a link's monitors with it; the next link-up starts them again. A
        stopping daemon lets go of its leases too."""
        self._by_ref.clear()
        self._by_jid.clear()
        if not self._server.running:
            for timer in self._leases.values():
                if timer.active():
                    timer.cancel()
            self._leases.clear()

    async def _restart(self, protocol: CSTAProtocol) -> None:
        for reason, source in self._sources:
            try:
                users = await source()
            except Exception:
                self.log.failure("mx.{name}: cannot read the users to monitor",
                                 name=self._server.name)
                continue
            for jid in users:
                self._reasons.setdefault(jid, set()).add(reason)
        for jid in sorted(self._reasons):
            if protocol.up and jid in self._reasons and jid not in self._by_jid:
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
        if jid not in self._reasons:
            await self._stop(jid)  # released while the MX was starting it

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
        if jid in self._reasons and protocol is not None:
            await self._start(protocol, jid)

    # -- events -------------------------------------------------------------------------------

    def _call_event(self, message: Message) -> None:
        event = EVENTS[message.name].from_xml(message.element)
        assert isinstance(event, CallEvent)
        jid = self._user_of(message.name, event.monitor_cross_ref_id)
        if jid is not None:
            self._on_event(jid, self._by_jid[jid][1], event)

    def _mail_event(self, message: Message) -> None:
        event = MailIncomingReady.from_xml(message.element)
        jid = self._user_of(message.name, event.monitor_cross_ref_id)
        if jid is None:
            return
        for observer in tuple(self._mail_observers):  # the push system, the event hub
            try:
                observer(jid, event)
            except Exception:  # one observer's bug must not keep the mail from the others
                self.log.failure("mx.{mx}: a mail observer failed", mx=self._server.name)

    def _user_of(self, name: str, ref: int) -> str | None:
        jid = self._by_ref.get(ref)
        if jid is None:
            self.log.debug("mx.{mx}: {event} for an unknown monitor {ref}",
                           mx=self._server.name, event=name, ref=ref)
        return jid
