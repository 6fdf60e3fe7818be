"""MXServer: one per configured MX — the server (CTI) link, reconnects, the address-book cache.

The server link is long-lived: logged in as the configured server account, it loads the whole
address book, asks for live ``Ab*UserEvent`` updates, and is re-established after any loss with
capped exponential backoff and a full reload, so the cache is never older than the link.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from mxproxy.config import MXConfig
from mxproxy.csta import commands
from mxproxy.csta.client import CSTAFactory, MXAddress, endpoint, login
from mxproxy.csta.errors import MXError, MXTimeout
from mxproxy.csta.messages import AbDelete, AbUpdate, AddressBookPage, Contact, LoginResponse
from mxproxy.csta.protocol import CSTAProtocol, Message, Trace
from mxproxy.logs import Logger

RECONNECT_INITIAL = 1.0
RECONNECT_MAX = 30.0


class DuplicateSerial(MXError):
    """Two configured MX entries lead to the same phone system (same ``sn``)."""


class SerialRegistry:
    """Which configured MX answered with which ``sn``; one system must not be served twice."""

    def __init__(self) -> None:
        self._owners: dict[str, str] = {}

    def claim(self, sn: str, name: str) -> None:
        owner = self._owners.setdefault(sn, name)
        if owner != name:
            raise DuplicateSerial(f"mx.{name} and mx.{owner} are the same MX (sn {sn})")


class AddressBook:
    """Contacts by JID, with a lookup by extension."""

    def __init__(self, contacts: dict[str, Contact] | None = None) -> None:
        self._by_jid: dict[str, Contact] = dict(contacts or {})

    def __len__(self) -> int:
        return len(self._by_jid)

    def __iter__(self) -> Iterator[Contact]:
        return iter(self._by_jid.values())

    def get(self, jid: str) -> Contact | None:
        return self._by_jid.get(jid)

    def by_ext(self, ext: str) -> Contact | None:
        return next((contact for contact in self._by_jid.values() if contact.ext == ext), None)

    def upsert(self, contact: Contact) -> None:
        self._by_jid[contact.jid] = contact

    def delete(self, jid: str) -> None:
        self._by_jid.pop(jid, None)


@attrs.define
class LinkState:
    """What a health check reports about the server link."""

    connected: bool = False
    since: float | None = None
    last_error: str | None = None
    reconnects: int = 0


async def load_address_book(protocol: CSTAProtocol) -> dict[str, Contact]:
    """Every contact, page by page, until ``size`` entries arrived (page size is the MX's)."""
    contacts: dict[str, Contact] = {}
    received = 0
    index = 0
    while True:
        waiter = protocol.expect("ablist", match=_page_matcher(str(index)))
        protocol.send(commands.addressbook_page(index))
        page = AddressBookPage.from_xml((await waiter).element)
        for contact in page.contacts:
            contacts[contact.jid] = contact
        received += len(page.contacts)
        if received >= page.size:
            return contacts
        if not page.contacts:
            raise MXError(f"address book page {index} is empty after {received} of {page.size}")
        index += 1


def _page_matcher(index: str) -> Callable[[Message], bool]:
    """Pages are told apart by ``index``; an MX that omits it is trusted to answer in order."""
    return lambda message: message.element.get("index", index) == index


class MXServer(Service):
    """The long-lived link to one MX and what it keeps up to date."""

    log = Logger()

    def __init__(
        self,
        config: MXConfig,
        reactor: Any,
        serials: SerialRegistry,
        trace: Trace | None = None,
        on_fatal: Callable[[Exception], None] | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.setName(config.name)
        self.config = config
        self.address = MXAddress(config.host, config.port, config.tls, config.fingerprint,
                                 config.ca)
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._serials = serials
        self._on_fatal = on_fatal
        self._factory = CSTAFactory(reactor, trace)
        self._retry = backoffPolicy(RECONNECT_INITIAL, RECONNECT_MAX, 2.0, jitter)
        self._client: ClientService | None = None
        self.protocol: CSTAProtocol | None = None
        self.info: LoginResponse | None = None
        self.address_book = AddressBook()
        self.state = LinkState()
        self._connected_once = False
        self._ready_waiters: list[Deferred[None]] = []

    @property
    def sn(self) -> str | None:
        return self.info.sn if self.info is not None else None

    def startService(self) -> None:
        super().startService()
        self._client = ClientService(
            endpoint(self._reactor, self.address), self._factory, retryPolicy=self._retry,
            clock=self._clock, prepareConnection=self._prepare)
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.protocol is not None:
            self.protocol.logout()
        client, self._client = self._client, None
        return client.stopService() if client is not None else succeed(None)

    def when_ready(self) -> Deferred[None]:
        """Fires once the link is logged in and the address book is loaded."""
        deferred: Deferred[None] = Deferred()
        if self.state.connected:
            deferred.callback(None)
        else:
            self._ready_waiters.append(deferred)
        return deferred

    # -- one connection's life --------------------------------------------------------------

    def _prepare(self, protocol: Any) -> Deferred[None]:
        """ClientService hands over a transparent proxy of the CSTAProtocol."""
        deferred = Deferred.fromCoroutine(self._establish(protocol))
        deferred.addErrback(self._failed, protocol)
        return deferred

    async def _establish(self, protocol: CSTAProtocol) -> None:
        info = await login(protocol, self.config.login, self.config.password, kind="Server",
                           clear_text_retry=self.config.clear_text_retry)
        self._serials.claim(info.sn, self.config.name)
        pending: list[Message] = []
        unsubscribes = [protocol.subscribe(name, pending.append)
                        for name in ("AbAddUserEvent", "AbUpdateUserEvent", "AbDeleteUserEvent")]
        try:
            await protocol.request(commands.monitor_start_ab())
        except MXTimeout:
            self.log.warn("mx.{name}: no reply to MonitorStartAb; expecting updates anyway",
                          name=self.name)
        contacts = await load_address_book(protocol)
        for unsubscribe in unsubscribes:
            unsubscribe()
        book = AddressBook(contacts)
        for message in pending:
            _apply(book, message)
        for name in ("AbAddUserEvent", "AbUpdateUserEvent", "AbDeleteUserEvent"):
            protocol.subscribe(name, lambda message: _apply(self.address_book, message))
        self.address_book, self.info, self.protocol = book, info, protocol
        if self._connected_once:
            self.state.reconnects += 1
        self._connected_once = True
        self.state.connected, self.state.since = True, self._clock.seconds()
        self.state.last_error = None
        protocol.when_closed().addCallback(self._lost, protocol)
        self.log.info("mx.{name}: connected to MX {sn}, address book of {size} contacts",
                      name=self.name, sn=info.sn, size=len(book))
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _failed(self, failure: Any, protocol: CSTAProtocol) -> Any:
        self.state.last_error = failure.getErrorMessage()
        if failure.check(DuplicateSerial):
            self.log.critical("mx.{name}: {error}", name=self.name, error=failure.value)
            if self._on_fatal is not None:
                self._on_fatal(failure.value)
        else:
            self.log.error("mx.{name}: cannot establish the MX link: {error}", name=self.name,
                           error=failure.getErrorMessage())
        protocol.close()
        return failure

    def _lost(self, reason: Exception, protocol: CSTAProtocol) -> None:
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.state.connected, self.state.since = False, self._clock.seconds()
        self.state.last_error = str(reason)
        if self.running:
            self.log.warn("mx.{name}: link lost ({reason}); reconnecting", name=self.name,
                          reason=reason)


def _apply(book: AddressBook, message: Message) -> None:
    if message.name == "AbDeleteUserEvent":
        book.delete(AbDelete.from_xml(message.element).jid)
    else:
        book.upsert(AbUpdate.from_xml(message.element).contact)
