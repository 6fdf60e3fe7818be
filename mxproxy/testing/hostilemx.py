"""HostileMX: a server speaking just enough of the MX protocol to misbehave on purpose.

A test double for the hardening of the server link (tests and ``bench/hostile_mx.py``); the
simulator (``mxsim``) is the well-behaved MX. It logs anyone in with the ``sn`` of its
:class:`Script`, answers ``MonitorStartAb``, address-book pages as the script says, and any other
request with ``CSTAErrorCode`` (as the simulator does); once the last page is out it does what
the script asks: flood malformed frames, send half a frame and fall silent, or only fall silent.
The script is read at each step, so a test may change it between connections.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, cast

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IListeningPort,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mxproxy.csta.frame import EVENT_ID, FrameDecoder, encode
from mxproxy.csta.protocol import no_delay
from mxproxy.csta.xml import Element, XMLError, parse, serialize
from mxproxy.testing.certs import self_signed
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.model import Contact
from mxproxy.testing.mxsim.server import command_name

AfterLoad = Literal["flood", "partial", "silent", "deaf"]
JID_BASE = 43884850000000000
MALFORMED_FRAME = encode(EVENT_ID, b"<flood")
"""A well-framed event whose XML never parses: what the flood is made of."""
FLOOD_FRAMES = 65_536 // len(MALFORMED_FRAME)
FLOOD_BATCH = MALFORMED_FRAME * FLOOD_FRAMES
PARTIAL_FRAME = b"\0\0\xff\xff9999<ablist"
"""A header announcing 65,535 bytes, and the first few of them."""
KEPT = 1000


@attrs.define
class Script:
    """What the double does; the defaults make a small, well-behaved MX."""

    sn: str = "HOSTILE1"
    contacts: int = 0
    """Contacts in the address book, made up when a page asks for them (any number is free)."""
    announced: int | None = None
    """The ``size`` every page announces (None: ``contacts``)."""
    growing: bool = False
    """Each page announces one page more than sent so far: a book that never ends."""
    page_size: int = 50
    index_shift: int = 0
    """Pages answer with the asked index plus this (0: the one asked for)."""
    page_delay: float = 0.0
    """Seconds (of the double's clock) each page takes: a page goes out this long after it was
    asked for or after the page before it, whichever is later (an MX working through the pages
    asked for ahead one at a time)."""
    adds_per_page: int = 0
    """``AbAddUserEvent`` of contacts not in the book sent before each page."""
    hold_logins: bool = False
    """Logins wait for :meth:`HostileMX.release_logins`."""
    after_load: AfterLoad | None = None
    """Once the last page is out: ``flood`` malformed frames, send half a frame and fall
    ``silent``, only fall silent, or go ``deaf`` (stop reading the socket: a hung MX)."""


class HostileMX(ServerFactory):
    """The listening side: the script, the open sessions, and what the client sent."""

    def __init__(self, script: Script, clock: IReactorTime) -> None:
        self.script = script
        self.clock = clock
        self.sessions: set[Session] = set()
        self.connections = 0
        self.received: deque[str] = deque(maxlen=KEPT)
        """Names of the commands received (``iq:addressbook`` for pages), oldest first."""
        self.flooded = 0
        """Malformed frames written by floods."""
        self.added = 0
        """Contacts announced by ``AbAddUserEvent`` so far."""
        self._held: list[tuple[Session, int]] = []
        self._waiters: list[tuple[str, Deferred[None]]] = []

    def buildProtocol(self, addr: IAddress | None) -> Session:
        return Session(self)

    def listen(self, reactor: Any, tls: bool = False) -> IListeningPort:
        """On an ephemeral loopback port; TLS with the self-signed test certificate if asked."""
        if tls:
            port: IListeningPort = reactor.listenSSL(0, self, self_signed().server_options(),
                                                     interface="127.0.0.1")
        else:
            port = reactor.listenTCP(0, self, interface="127.0.0.1")
        return port

    def wait_for(self, name: str) -> Deferred[None]:
        """Fires when the next command named ``name`` arrives."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append((name, waiter))
        return waiter

    def release_logins(self) -> None:
        self.script.hold_logins = False
        held, self._held = self._held, []
        for session, invoke_id in held:
            session.logged_in(invoke_id)

    def drop(self) -> None:
        """Cut every session (a restarted MX)."""
        for session in tuple(self.sessions):
            session.abort()

    def flood(self) -> None:
        """Flood every open session now, and every new one after its address book."""
        self.script.after_load = "flood"
        for session in tuple(self.sessions):
            session.flood()

    def calm(self) -> None:
        """End every flood; the sessions stay open and silent."""
        self.script.after_load = None
        for session in tuple(self.sessions):
            session.calm()

    def record(self, name: str) -> None:
        self.received.append(name)
        ready = [waiter for wanted, waiter in self._waiters if wanted == name]
        self._waiters = [(wanted, waiter) for wanted, waiter in self._waiters
                         if wanted != name]
        for waiter in ready:
            waiter.callback(None)

    def hold(self, session: Session, invoke_id: int) -> None:
        self._held.append((session, invoke_id))


@implementer(IPullProducer)
class Session(Protocol):
    """One client connection; a pull producer of malformed frames while it floods."""

    def __init__(self, mx: HostileMX) -> None:
        self.mx = mx
        self.silent = False
        self._flooding = False
        self._decoder = FrameDecoder()
        self._page_due = 0.0
        """When the last page asked for goes out (with a ``page_delay``)."""

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.mx.sessions.add(self)
        self.mx.connections += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.mx.sessions.discard(self)
        self.silent = True

    def dataReceived(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            try:
                element = parse(frame.body)
            except XMLError:
                continue
            name = command_name(element)
            if not self.silent:
                self._answer(frame.invoke_id, name, element)
            self.mx.record(name)

    def _answer(self, invoke_id: int, name: str, element: Element) -> None:
        if name == "keepalive":
            return
        if name == "logout":
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif name == "loginRequest":
            if self.mx.script.hold_logins:
                self.mx.hold(self, invoke_id)
            else:
                self.logged_in(invoke_id)
        elif name == "MonitorStartAb":
            self._send(invoke_id, wire.empty("MonitorStartAbResponse"))
        elif name == "iq:addressbook":
            index = int(element.get("index", "0"))
            if self.mx.script.page_delay > 0:
                now = self.mx.clock.seconds()
                self._page_due = max(now, self._page_due) + self.mx.script.page_delay
                self.mx.clock.callLater(self._page_due - now, self._page, index)
            else:
                self._page(index)
        else:
            self._send(invoke_id, wire.csta_error(operation="unknownCommand"))

    def logged_in(self, invoke_id: int) -> None:
        self._send(invoke_id, wire.login_ok(self.mx.script.sn, "", "0", ""))

    def _page(self, index: int) -> None:
        script = self.mx.script
        first = index * script.page_size
        count = max(0, min(script.page_size, script.contacts - first))
        contacts = [Contact(jid=str(JID_BASE + first + n), first_name=f"Hostile{first + n}")
                    for n in range(count)]
        size = script.contacts if script.announced is None else script.announced
        if script.growing:
            size = first + count + script.page_size
        for _ in range(script.adds_per_page):
            self.mx.added += 1
            added = Contact(jid=str(JID_BASE - self.mx.added), first_name="Added")
            self._send(EVENT_ID, wire.ab_event("AbAddUserEvent", added))
        self._send(EVENT_ID, wire.ablist(size, index + script.index_shift, contacts))
        if first + count >= size:
            self._after_load()

    def _after_load(self) -> None:
        action = self.mx.script.after_load
        if action == "flood":
            self.flood()
        elif action == "partial":
            self.transport.write(PARTIAL_FRAME)  # type: ignore[union-attr]
            self.silent = True
        elif action == "silent":
            self.silent = True
        elif action == "deaf":
            self.silent = True
            cast(IPushProducer, self.transport).pauseProducing()

    def flood(self) -> None:
        if self.transport is not None and not self._flooding:
            self.silent = self._flooding = True
            cast(IConsumer, self.transport).registerProducer(self, False)

    def calm(self) -> None:
        if self.transport is not None and self._flooding:
            self._flooding = False
            cast(IConsumer, self.transport).unregisterProducer()

    def resumeProducing(self) -> None:
        """The client has read the last batch: write the next one."""
        if self.transport is not None:
            self.transport.write(FLOOD_BATCH)
            self.mx.flooded += FLOOD_FRAMES

    def stopProducing(self) -> None:
        pass

    def abort(self) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _send(self, invoke_id: int, element: Element) -> None:
        if self.transport is not None and not self.silent:
            self.transport.write(encode(invoke_id, serialize(element)))
