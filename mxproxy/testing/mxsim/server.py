"""One simulated MX connection (framing, login gate, faults, reply delay) and ``listen()``.

What each command does lives in ``operations.py`` and ``mailbox.py``; this module only decides
*whether* and *when* a command runs: keep-alives are counted and never answered, nothing but a
login runs before a successful login, ``Faults.no_reply`` silences, ``Faults.reply_delay``
postpones (in arrival order), and a broken stream closes the connection.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxproxy.csta.frame import EVENT_ID, Frame, FrameDecoder, encode
from mxproxy.csta.protocol import no_delay
from mxproxy.csta.xml import Element, XMLError, attr, local_name, parse, serialize
from mxproxy.testing.certs import self_signed
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.callcontrol import CALL_CONTROL
from mxproxy.testing.mxsim.mailbox import MAILBOX, Download
from mxproxy.testing.mxsim.model import ReceivedCommand, User
from mxproxy.testing.mxsim.operations import CORE
from mxproxy.testing.mxsim.pbx import PBX, default_reactor

OPERATIONS = {**CORE.table, **MAILBOX.table, **CALL_CONTROL.table}
SESSION_KEPT = 1000  # commands remembered per session
_ALWAYS_ALLOWED = frozenset({"loginRequest", "logout"})

log = Logger()


def command_name(element: Element) -> str:
    """The name commands are recorded and dispatched under (``iq`` qualified by its id)."""
    name = local_name(element)
    return f"iq:{attr(element, 'id')}" if name == "iq" else name


class Session(Protocol):
    """The MX side of one client connection, and what tests inspect about it.

    ``login``/``kind`` (``"Server"`` or ``"User"``) are None until a login succeeds; ``monitors``
    maps each monitorCrossRefID to the device it watches; ``ab_notify`` says whether address-book
    events are wanted; ``device`` is the SIP device ``AssignDevice`` bound ("" for none);
    ``received`` lists the latest commands (newest last); ``closed`` turns true as soon as the
    simulator or the peer starts closing.
    """

    def __init__(self, pbx: PBX) -> None:
        self.pbx: PBX = pbx
        self.login: str | None = None
        self.kind: str | None = None
        self.user: User | None = None
        self.monitors: dict[int, str] = {}
        self.ab_notify = False
        self.device: str = ""
        self.download: Download | None = None
        self.received: deque[ReceivedCommand] = deque(maxlen=SESSION_KEPT)
        self.keepalives = 0
        self.closed = False
        self._decoder = FrameDecoder()
        self._pending: deque[tuple[float, ReceivedCommand]] = deque()
        self._timer: IDelayedCall | None = None
        self._broken_round = 0
        self._lost = False
        self._close_waiters: list[Deferred[None]] = []

    @property
    def peer(self) -> IAddress | None:
        return self.transport.getPeer() if self.transport is not None else None

    # -- incoming ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.pbx.attach(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = self._lost = True
        self.monitors.clear()
        self.download = None
        self._pending.clear()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.pbx.detach(self)
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (at once if it already is)."""
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def dataReceived(self, data: bytes) -> None:
        for frame in self._decoder.feed(data):
            if self.closed:
                return
            self._frame_received(frame)
        if self._decoder.error is not None and not self.closed:
            log.warn("mxsim: closing a session on a broken stream: {error}",
                     error=self._decoder.error)
            self.close()

    def _frame_received(self, frame: Frame) -> None:
        try:
            element = parse(frame.body)
        except XMLError as error:
            log.warn("mxsim: closing a session on an unparseable command: {error}", error=error)
            self.close()
            return
        command = ReceivedCommand(command_name(element), frame.invoke_id, element, self)
        self.received.append(command)
        self._handle(command)
        self.pbx.record(command)  # after handling, so a waiter sees its effects (or its queueing)

    def _handle(self, command: ReceivedCommand) -> None:
        if command.name == "keepalive":
            self.keepalives += 1
            self.pbx.keepalives += 1
            return
        delay = self.pbx.faults.reply_delay
        if delay <= 0 and not self._pending:
            self._run(command)
            return
        self._pending.append((self.pbx.clock.seconds() + delay, command))
        if self._timer is None:
            self._arm()

    def _arm(self) -> None:
        due = self._pending[0][0]
        self._timer = self.pbx.clock.callLater(max(0.0, due - self.pbx.clock.seconds()),
                                               self._run_due)

    def _run_due(self) -> None:
        self._timer = None
        now = self.pbx.clock.seconds()
        while self._pending and self._pending[0][0] <= now and not self.closed:
            self._run(self._pending.popleft()[1])
        if self._pending and not self.closed:
            self._arm()

    def _run(self, command: ReceivedCommand) -> None:
        if command.name == "logout":
            self.close()
            return
        if self.pbx.faults.silences(command.name):
            return
        if self.login is None and command.name not in _ALWAYS_ALLOWED:
            return  # the MX processes nothing before a successful login
        operation = OPERATIONS.get(command.name)
        if operation is None:
            self.fail(command.invoke_id, operation="unknownCommand")
            return
        try:
            operation(self, command)
        except XMLError as error:  # a field with a value of the wrong kind
            self.fail(command.invoke_id, private=str(error))

    # -- outgoing ----------------------------------------------------------------------------

    def reply(self, invoke_id: int, element: Element) -> None:
        """The direct answer to a request: same invoke id."""
        self._send(invoke_id, element)

    def fail(self, invoke_id: int, operation: str = "", private: str = "", state: str = "") -> None:
        self._send(invoke_id, wire.csta_error(operation, private, state))

    def send_event(self, body: Element | bytes) -> None:
        """An unsolicited message (id 9999), as an element or serialized already."""
        self._send(EVENT_ID, body)

    def _send(self, invoke_id: int, body: Element | bytes) -> None:
        if self.closed or self.transport is None:
            return
        frame = encode(invoke_id, body if isinstance(body, bytes) else serialize(body))
        faults = self.pbx.faults
        if faults.malformed_next is not None and self._broken_round != faults.malformed_round:
            self._broken_round = faults.malformed_round
            frame = wire.corrupt(frame, faults.malformed_next)
        self.transport.write(frame)

    # -- ending ------------------------------------------------------------------------------

    def logout(self, mode: str) -> None:
        """Tell the client it was logged out (``Logout`` event), then close."""
        self.send_event(wire.logout(mode))
        self.close()

    def close(self) -> None:
        """Close after what was written has gone out."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.loseConnection()

    def drop(self) -> None:
        """Cut the connection without flushing (a crashed MX)."""
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abortConnection()  # type: ignore[attr-defined]


class SessionFactory(ServerFactory):
    """Builds a :class:`Session` per connection, all sharing one PBX."""

    def __init__(self, pbx: PBX) -> None:
        self.pbx = pbx

    def buildProtocol(self, addr: IAddress | None) -> Session:
        session = Session(self.pbx)
        session.factory = self
        return session


def listen(pbx: PBX, port: int = 0, interface: str = "127.0.0.1",
           tls: CertificateOptions | bool | None = None, reactor: Any = None) -> IListeningPort:
    """Serve ``pbx`` on TCP, or TLS when ``tls`` is given (``True``: a self-signed certificate
    for localhost/127.0.0.1/::1 from :mod:`mxproxy.testing.certs`, whose fingerprint
    ``certs.self_signed().fingerprint`` returns). ``port=0`` picks a free port.
    """
    reactor = reactor if reactor is not None else default_reactor()
    factory = SessionFactory(pbx)
    if tls is None or tls is False:
        port_: IListeningPort = reactor.listenTCP(port, factory, interface=interface)
        return port_
    options = self_signed().server_options() if tls is True else tls
    port_ = reactor.listenSSL(port, factory, options, interface=interface)
    return port_
