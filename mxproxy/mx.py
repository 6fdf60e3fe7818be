"""MXServer: one per configured MX — the server (CTI) link, reconnects, the address-book cache.

The server link is long-lived: logged in as the configured server account, it loads the whole
address book, asks for live ``Ab*UserEvent`` updates, and is re-established after any loss with
capped exponential backoff and a full reload, so the cache is never older than the link.

One MX cannot hurt the others: whatever it answers (another entry's serial number, an endless
address book, a flood of bad frames, silence), only its own link fails and is retried.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from mxproxy.addressbook import (
    AddressBook,
    AddressBookTooLarge,
    load_address_book,
    load_time_limit,
)
from mxproxy.config import MXConfig
from mxproxy.csta import commands
from mxproxy.csta.client import CSTAFactory, MXAddress, open_session
from mxproxy.csta.errors import (
    CertificateRefused,
    LinkFailed,
    LoggedOut,
    LoginError,
    MXError,
    MXTimeout,
    MXUnavailable,
    Unreachable,
    WrongTransport,
)
from mxproxy.csta.messages import AbDelete, AbUpdate, Contact, LoginResponse
from mxproxy.csta.protocol import CSTAProtocol, Message, RoundTrip, Trace
from mxproxy.logs import Logger, RateLimitedLog

RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 30.0
STABLE_AFTER = 60.0
"""Seconds a link must stay up before the reconnect delays start again from 1 s: an MX whose
link fails soon after every login (a flood of bad frames, silence) is retried ever more slowly."""
REFUSED_RETRY = 300.0
"""Seconds before an entry the MX refused is tried again: a wrong server password retried every
30 s could lock the MX account, and an entry that answered with another entry's ``sn`` may
become right (a spoof ends, the other entry's MX is replaced) but not in seconds."""
FAILURE_LOG_WINDOW = 600.0
"""Seconds during which failed attempts like the last one logged are only counted: a link that
stays down for the same reason is said again every 10 minutes, with how many attempts failed
alike, instead of every retry; a new reason is logged at once."""
LOGOUT_GRACE = 2.0
"""Seconds a stopping link waits for the MX to take its logout and close; then it is cut: a
hung MX never says goodbye (which a close over TLS waits for), and a stop must end."""
ContactObserver = Callable[[Contact | None, Contact | None], None]
LinkDownObserver = Callable[[Exception], None]
AB_EVENTS = ("AbAddUserEvent", "AbUpdateUserEvent", "AbDeleteUserEvent")


class DuplicateSerial(MXError):
    """An entry's MX answered with the ``sn`` of a system another entry already serves: the
    same MX configured twice, or one impersonating the other."""


CAUSES: tuple[tuple[type[Exception], str], ...] = (
    (LoginError, "loginFailed"), (DuplicateSerial, "duplicateSerial"),
    (WrongTransport, "wrongTransport"), (CertificateRefused, "certificateRefused"),
    (Unreachable, "unreachable"))
"""The word ``/healthz`` shows for a failed attempt, by the class of its error."""


class SerialRegistry:
    """Which configured MX serves which ``sn``; one phone system must not be served twice.

    The entry that claimed a serial keeps it while its link is up and releases it when the
    link ends: after a drop, whichever entry logs in first holds it, and the other is then
    the duplicate (a legitimate MX may thus lose to an impostor that reconnects faster).
    """

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def claim(self, sn: str, name: str) -> None:
        owner = self._owners.setdefault(sn, name)
        if owner != name:
            raise DuplicateSerial(f"the MX answered with serial number {sn}, which mx.{owner} "
                                  "already serves: the same MX configured twice, or an "
                                  "impostor")

    def release(self, name: str) -> None:
        """Whatever ``name`` holds: its link ended."""
        for sn in [sn for sn, owner in self._owners.items() if owner == name]:
            del self._owners[sn]


@attrs.define
class LinkState:
    """What a health check reports about the server link."""

    connected: bool = False
    since: float | None = None
    last_error: str | None = None
    cause: str | None = None
    """Why the link is down, one word of :data:`CAUSES` (``lost`` after a loss, ``failed`` for
    any other failed attempt); None while it is up or before the first attempt ended."""
    login_failed: tuple[int, str] | None = None
    """The code and text of the MX's ``loginFailed``, while that is why the link is down."""
    reconnects: int = 0
    next_attempt: float | None = None
    """When the next connection attempt is due (clock seconds), while one is scheduled."""


class MXServer(Service):
    """The long-lived link to one MX and what it keeps up to date.

    One connection attempt at a time: connect, log in, load; on failure or loss, the next
    attempt after a capped exponential backoff (1 s doubling to 30 s, plus jitter), or 5
    minutes after a refusal (the server login, a serial another entry serves). Each failure
    is logged as what happened and what to check, once while it repeats (see
    :data:`FAILURE_LOG_WINDOW`); ``state`` tells ``/healthz`` the same.
    """

    log = Logger()

    def __init__(
        self,
        config: MXConfig,
        reactor: Any,
        serials: SerialRegistry,
        trace: Trace | None = None,
        jitter: Callable[[], float] = random.random,
        clock: IReactorTime | None = None,
        on_round_trip: RoundTrip | None = None,
    ) -> None:
        self.setName(config.name)
        self.config = config
        self.address = MXAddress(config.host, config.port, config.tls, config.fingerprint,
                                 config.ca)
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._serials = serials
        self._failures = RateLimitedLog(self.log, self._clock,
                                        f"mx.{config.name}: the same failure again",
                                        FAILURE_LOG_WINDOW, LogLevel.error)
        self._failure: str | None = None
        """The error of the last failed attempt logged or counted, until an attempt succeeds."""
        self._factory = CSTAFactory(self._clock, trace, on_round_trip=on_round_trip)
        self._backoff = backoffPolicy(RECONNECT_INITIAL, RECONNECT_MAX, 2.0, jitter)
        self._jitter = jitter
        self._retries = 0
        """Consecutive retries without success; the n-th waits ``backoff(n)``."""
        self._attempt: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._ready_waiters: list[Deferred[None]] = []
        self._link_observers: list[Callable[[CSTAProtocol], None]] = []
        self._down_observers: list[LinkDownObserver] = []
        self._contact_observers: list[ContactObserver] = []
        self.protocol: CSTAProtocol | None = None
        self.info: LoginResponse | None = None
        self.address_book = AddressBook()
        self.state = LinkState()

    @property
    def sn(self) -> str | None:
        return self.info.sn if self.info is not None else None

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Deferred[None]:
        """Stop retrying, abandon an attempt in progress, log out of a live link."""
        super().stopService()
        self._failures.stop()
        self._serials.release(self.config.name)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self.protocol
        if protocol is None:
            return succeed(None)
        closed = protocol.when_closed()
        protocol.logout()
        cut = self._clock.callLater(LOGOUT_GRACE, protocol.abort,
                                    MXUnavailable("the MX did not close after the logout"))
        return closed.addCallback(lambda _: cut.cancel() if cut.active() else None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the link is logged in and the address book is loaded."""
        if self.state.connected:
            return succeed(None)
        deferred: Deferred[None] = Deferred()
        self._ready_waiters.append(deferred)
        return deferred

    # -- one connection's life --------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        self.state.next_attempt = None
        self._attempt = Deferred.fromCoroutine(self._establish())
        self._attempt.addBoth(self._attempt_ended)

    async def _establish(self) -> None:
        protocol, info = await open_session(self._reactor, self.address, self._factory,
                                            self.config.login, self.config.password,
                                            kind="Server",
                                            clear_text_retry=self.config.clear_text_retry)
        try:
            self._serials.claim(info.sn, self.config.name)
            book = await self._load(protocol)
        except BaseException:
            # Aborted, not closed: over TLS a polite close waits for the peer's goodbye, which
            # a hung MX never sends, and each failed attempt would leave a descriptor behind.
            protocol.abort(MXUnavailable("the attempt to establish the link failed"))
            raise
        self.address_book, self.info, self.protocol = book, info, protocol
        protocol.when_closed().addCallback(self._lost, protocol)
        self.log.info("mx.{name}: connected to MX {sn}, address book of {size} contacts",
                      name=self.name, sn=info.sn, size=len(book))

    async def _load(self, protocol: CSTAProtocol) -> AddressBook:
        """The whole address book, kept current by the events that arrive while it loads (the
        last change of each contact, so a flood of them is bounded like the book)."""
        limit = self.config.max_contacts
        pending: dict[str, Contact | None] = {}

        def hold(message: Message) -> None:
            jid, contact = _change(message)
            pending[jid] = contact
            if len(pending) > limit:
                protocol.abort(AddressBookTooLarge(f"more than maxContacts ({limit}) contacts "
                                                   "changed while the address book loaded"))

        unsubscribes = [protocol.subscribe(name, hold) for name in AB_EVENTS]
        try:
            await protocol.request(commands.monitor_start_ab())
        except MXTimeout:
            self.log.warn("mx.{name}: no reply to MonitorStartAb; expecting updates anyway",
                          name=self.name)
        book = AddressBook(await load_address_book(protocol, limit, self._clock,
                                                   load_time_limit(limit)))
        for unsubscribe in unsubscribes:
            unsubscribe()
        for jid, contact in pending.items():
            book.apply(jid, contact)
        if len(book) > limit:
            raise AddressBookTooLarge(f"the address book grew to {len(book)} contacts while it "
                                      f"loaded, over maxContacts ({limit})")
        for name in AB_EVENTS:
            protocol.subscribe(name, lambda message: self._live_update(protocol, message))
        return book

    def _live_update(self, protocol: CSTAProtocol, message: Message) -> None:
        jid, after = _change(message)
        book = self.address_book
        before = book.get(jid)
        if after is not None and before is None and len(book) >= self.config.max_contacts:
            protocol.abort(AddressBookTooLarge(f"the MX adds a contact beyond maxContacts "
                                               f"({self.config.max_contacts})"))
            return
        book.apply(jid, after)
        for observer in tuple(self._contact_observers):
            observer(before, after)

    def on_link_up(self, observer: Callable[[CSTAProtocol], None]) -> None:
        """Call ``observer`` with the protocol each time the link is up and loaded."""
        self._link_observers.append(observer)

    def on_link_down(self, observer: LinkDownObserver) -> None:
        """Call ``observer`` with the reason each time a live link is lost, the stop of the
        service included: what the MX held for it (monitors, call state) is gone with it."""
        self._down_observers.append(observer)

    def on_contact_changed(self, observer: ContactObserver) -> None:
        """Call ``observer(before, after)`` for every live address-book change."""
        self._contact_observers.append(observer)

    def _attempt_ended(self, result: object) -> None:
        self._attempt = None
        if not isinstance(result, Failure):
            if self.state.since is not None:
                self.state.reconnects += 1
            self._failures.stop()  # how many attempts failed since the last line about them
            self._failure = None
            self.state.connected, self.state.since = True, self._clock.seconds()
            self.state.last_error = self.state.cause = self.state.login_failed = None
            assert self.protocol is not None
            for observer in tuple(self._link_observers):
                observer(self.protocol)
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            return
        if not self.running:
            return  # stopService abandoned the attempt
        self._serials.release(self.config.name)
        error = result.value
        self.state.last_error = result.getErrorMessage()
        self.state.cause = next((word for kind, word in CAUSES if isinstance(error, kind)),
                                "failed")
        self.state.login_failed = (error.code, error.message) \
            if isinstance(error, LoginError) else None
        # The MX said no: asking again at once would not change its mind.
        delay = self._schedule_retry(REFUSED_RETRY + self._jitter()
                                     if isinstance(error, (LoginError, DuplicateSerial))
                                     else self._backoff(self._retries))
        if self.state.last_error != self._failure:
            self._failures.stop()  # the count of the previous reason, before the new one
            self._failure = self.state.last_error
        self._failures.emit("mx.{name}: {account}; retrying in {delay}", name=self.name,
                            account=self._account(error), delay=_duration(delay))

    def _account(self, error: BaseException) -> str:
        """What a failed attempt means for this entry, and what to check first."""
        entry = f"mx.{self.name}"
        if isinstance(error, LoginError):
            reply = f"code {error.code}: {error.message}" if error.message else \
                f"code {error.code}"
            return (f"the MX refused the server login ({reply}): check {entry}.login and "
                    f"{entry}.password")
        if isinstance(error, LinkFailed):
            return f"{error}: {error.hint}"
        if isinstance(error, DuplicateSerial):
            return f"refused: {error}; only this link stays down"
        return f"cannot establish the MX link: {error}"

    def _lost(self, reason: Exception, protocol: CSTAProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self._serials.release(self.config.name)
        now = self._clock.seconds()
        if self.state.since is not None and now - self.state.since >= STABLE_AFTER:
            self._retries = 0
        self.state.connected, self.state.since = False, now
        self.state.last_error, self.state.cause = str(reason), "lost"
        for observer in tuple(self._down_observers):
            observer(reason)
        if not self.running:
            return
        # After a Logout from the MX (another session took over, an admin kicked us) wait the
        # longest delay, so that two clients cannot keep displacing each other.
        delay = self._schedule_retry(RECONNECT_MAX + self._jitter()
                                     if isinstance(reason, LoggedOut)
                                     else self._backoff(self._retries))
        self.log.warn("mx.{name}: link lost ({reason}); reconnecting in {delay:.1f} s",
                      name=self.name, reason=reason, delay=delay)

    def _schedule_retry(self, delay: float) -> float:
        self._retries += 1
        self._retry = self._clock.callLater(delay, self._connect)
        self.state.next_attempt = self._clock.seconds() + delay
        return delay


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def _change(message: Message) -> tuple[str, Contact | None]:
    """What one Ab*UserEvent says: the JID and its contact from now on (None: deleted)."""
    if message.name == "AbDeleteUserEvent":
        return AbDelete.from_xml(message.element).jid, None
    contact = AbUpdate.from_xml(message.element).contact
    return contact.jid, contact
