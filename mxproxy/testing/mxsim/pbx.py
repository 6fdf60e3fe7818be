"""The simulated MX: one PBX in memory, its live sessions, and the events its changes cause.

Tests, the control API and the demo drive the PBX from Python (add contacts, ring phones, log a
user out); each change is pushed as id-9999 events to the sessions entitled to it. The PBX also
records every command its sessions receive, so tests wait on facts (:meth:`PBX.wait_for`)
instead of sleeping.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mxproxy.csta.commands import RECORDING
from mxproxy.csta.xml import serialize
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.audio import beeps
from mxproxy.testing.mxsim.calls import CallSwitch
from mxproxy.testing.mxsim.model import (
    Call,
    CallRecord,
    Conflict,
    Contact,
    Faults,
    ReceivedCommand,
    Service,
    UnknownObject,
    User,
    Variants,
    Voicemail,
)

if TYPE_CHECKING:
    from mxproxy.testing.mxsim.server import Session

DEFAULT_PAGE_SIZE = 50
DEFAULT_CHUNK_SIZE = 32768
MAX_CHUNK_SIZE = 48 * 1024  # base64 of this plus markup still fits a 65,527-byte frame body
RECEIVED_KEPT = 10_000  # long benchmark runs must not grow memory without bound
_JID_BASE = 43884850000000000
SYSTEM_JID = str(_JID_BASE - 1)  # the services' homeSystem, outside the users' JIDs
SERVICE_ID_BASE = 3458764513956069000
_OUTSIDE_NUMBER = re.compile(r"\+?\d{7,}")


def default_services() -> list[Service]:
    """The services every MX has, with the codes of mx-protocol.md §4.4."""
    return [Service(SERVICE_ID_BASE + 1, "voicemail", "VM", "*86", SYSTEM_JID),
            Service(SERVICE_ID_BASE + 2, "Auto Attendant", "AA", "3900", SYSTEM_JID),
            Service(SERVICE_ID_BASE + 3, "Park Server", "ParkServer", "3950", SYSTEM_JID)]


def default_reactor() -> Any:
    """The global reactor, imported late so that importing the simulator never installs one."""
    from twisted.internet import reactor
    return reactor


class PBX(CallSwitch):
    """One simulated MX. ``clock`` drives every timer (reply delays); tests pass ``task.Clock``.

    ``page_size`` is the address-book page length (50 on the real MX, smaller values catch
    clients that hard-code 50); ``chunk_size`` the raw bytes per voicemail chunk.
    """

    def __init__(self, sn: str = "SIM01", clock: IReactorTime | None = None,
                 page_size: int = DEFAULT_PAGE_SIZE, chunk_size: int = DEFAULT_CHUNK_SIZE
                 ) -> None:
        super().__init__()
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}, got {chunk_size}")
        self.sn = sn
        self.clock = clock if clock is not None else default_reactor()
        self.page_size = page_size
        self.chunk_size = chunk_size
        self.faults = Faults()
        self.variants = Variants()
        self.users: dict[str, User] = {}
        self.server_logins: dict[str, str] = {}
        self.contacts: dict[str, Contact] = {}
        """The address book; changed only by the methods below, which keep its pages right."""
        self._pages: dict[tuple[int, int], bytes] = {}
        """Address-book pages as sent, by (page size, index), until the book changes."""
        self.services = default_services()
        self.received: deque[ReceivedCommand] = deque(maxlen=RECEIVED_KEPT)
        self.logins: Counter[str] = Counter()
        self.failed_logins: Counter[str] = Counter()
        self.keepalives = 0
        self._sessions: list[Session] = []
        self._waiters: dict[str, list[Deferred[ReceivedCommand]]] = {}
        self._last_jid = _JID_BASE
        self._last_cross_ref = 0
        self._last_mail_id = 0
        self._last_record_id = 0

    # -- directory ---------------------------------------------------------------------------

    def add_server_login(self, login: str, password: str) -> None:
        self.server_logins[login] = password

    def add_user(self, login: str, password: str, extension: str, *, first_name: str = "",
                 last_name: str = "", jid: str = "", clear_text_only: bool = False,
                 soft_phone_pwd: str = "", devices: Iterable[str] = (),
                 **contact_fields: str) -> User:
        """A user, listed in the address book too (as every MX user is); emits AbAddUserEvent.

        ``devices`` are the SIP devices it may bind with ``AssignDevice``; by default one,
        ``<login>-softphone``."""
        if login in self.users:
            raise Conflict(f"login {login!r} exists")
        if self.is_extension(extension):
            raise Conflict(f"extension {extension!r} is taken")
        user = User(login, password, extension, jid or self.new_jid(), first_name, last_name,
                    soft_phone_pwd or f"sip-{login}-{extension}", clear_text_only,
                    devices=list(devices) or [f"{login}-softphone"])
        contact_fields.setdefault("email", f"{login}@example.invalid")
        self.add_contact(Contact(user.jid, first_name, last_name, extension, **contact_fields))
        self.users[login] = user
        return user

    def remove_user(self, login: str) -> None:
        """Forget a user and its address-book entry; open sessions stay (see :meth:`logout`)."""
        user = self.user(login)
        del self.users[login]
        if user.jid in self.contacts:
            self.remove_contact(user.jid)

    def user(self, login: str) -> User:
        try:
            return self.users[login]
        except KeyError:
            raise UnknownObject(f"no user {login!r}") from None

    def user_by_extension(self, extension: str) -> User | None:
        return next((u for u in self.users.values() if u.extension == extension), None)

    def new_jid(self) -> str:
        """A fresh 17-digit JID (a string: it does not fit a JavaScript number)."""
        self._last_jid += 1
        while str(self._last_jid) in self.contacts:
            self._last_jid += 1
        return str(self._last_jid)

    def add_contact(self, contact: Contact) -> Contact:
        """Add an entry (a new JID if ``contact.jid`` is empty); emits AbAddUserEvent."""
        if not contact.jid:
            contact.jid = self.new_jid()
        if contact.jid in self.contacts:
            raise Conflict(f"jid {contact.jid} exists")
        self.contacts[contact.jid] = contact
        self._book_changed(wire.ab_event("AbAddUserEvent", contact))
        return contact

    def update_contact(self, jid: str, **changes: Any) -> Contact:
        """Change fields of an entry (``Contact`` attribute names); emits AbUpdateUserEvent."""
        contact = self.contact(jid)
        updated = attrs.evolve(contact, **changes)
        if updated.jid != jid:
            raise ValueError("a contact's jid cannot change")
        self.contacts[jid] = updated
        self._book_changed(wire.ab_event("AbUpdateUserEvent", updated))
        return updated

    def remove_contact(self, jid: str) -> None:
        """Remove an entry; emits AbDeleteUserEvent."""
        self.contact(jid)
        del self.contacts[jid]
        self._book_changed(wire.ab_delete_event(jid))

    def contact(self, jid: str) -> Contact:
        try:
            return self.contacts[jid]
        except KeyError:
            raise UnknownObject(f"no contact with jid {jid}") from None

    def is_extension(self, device: str) -> bool:
        """An internal device: a user's extension or an address-book business phone."""
        return bool(device) and (self.user_by_extension(device) is not None
                                 or self.contact_at(device) is not None)

    def is_dialable(self, number: str) -> bool:
        """What MakeCall accepts: an extension, or an outside number of 7+ digits (``+`` ok)."""
        return self.is_extension(number) or _OUTSIDE_NUMBER.fullmatch(number) is not None

    def contact_at(self, extension: str) -> Contact | None:
        """The address-book entry whose business phone is ``extension``."""
        return next((c for c in self.contacts.values() if c.business_phone == extension), None)

    def display_name(self, device: str) -> str:
        contact = self.contact_at(device)
        return contact.display_name if contact else ""

    def address_book_page(self, index: int) -> bytes:
        """The XML of ``ablist`` page ``index``, built once per state of the book: a client
        loads the whole book at every connect, and the simulator, standing for another machine,
        should cost the benchmarks as little CPU as it can (a page of 50 takes ~2.5 ms to build).
        Pages past the end are not kept, since any index may be asked for."""
        key = (self.page_size, index)
        page = self._pages.get(key)
        if page is None:
            contacts = list(self.contacts.values())
            first = index * self.page_size
            page = serialize(wire.ablist(len(contacts), index,
                                         contacts[first:first + self.page_size]))
            if first < len(contacts):
                self._pages[key] = page
        return page

    def _book_changed(self, event: wire.Element) -> None:
        """Every change of the address book: its pages are built again, and the sessions that
        asked for changes get ``event``."""
        self._pages.clear()
        for session in self._sessions:
            if session.ab_notify:
                session.send_event(event)

    # -- call log and mailbox ----------------------------------------------------------------

    def add_call_record(self, login: str, **fields: Any) -> CallRecord:
        """Append to a user's call log; ``record_id`` and ``gcid`` are assigned if not given."""
        self._last_record_id += 1
        fields.setdefault("record_id", self._last_record_id)
        fields.setdefault("gcid", f"{self.sn}-00-0000D-{fields['record_id']:X}")
        record = CallRecord(**fields)
        self.user(login).call_log.append(record)
        return record

    def add_voicemail(self, login: str, content: bytes, **fields: Any) -> Voicemail:
        """Put a message (or, ``media_type="Recording"``, a recording) into a user's mailbox
        without a word to anyone; the mail id is unique per PBX."""
        user = self.user(login)
        self._last_mail_id += 1
        fields.setdefault("to", user.extension)
        fields.setdefault("received", int(self.clock.seconds()))
        mail = Voicemail(self._last_mail_id, content, **fields)
        user.mailbox(mail.media_type)[mail.mail_id] = mail
        return mail

    def leave_voicemail(self, login: str, content: bytes, **fields: Any) -> Voicemail:
        """A caller leaves a message (or, ``media_type="Recording"``, a recording is filed):
        into the mailbox, and a ``MailIncomingReadyEvent`` to every monitor of the user's
        extension (server links and the user's sessions)."""
        mail = self.add_voicemail(login, content, **fields)
        user = self.user(login)
        for session, cross_ref in self.monitors_of(user.extension):
            session.send_event(wire.mail_incoming_ready_event(cross_ref, mail, user.jid))
        return mail

    def file_recording(self, login: str, call: Call, peer: str, duration: int) -> Voicemail:
        """A finished recording of ``call`` with ``peer`` goes to the user's recordings (beeps
        as long as it lasted), announced like a voicemail with ``mediaType`` ``Recording``."""
        name = self.display_name(peer) or (call.calling_name if peer == call.calling else "")
        return self.leave_voicemail(login, beeps(duration), media_type=RECORDING,
                                    from_number=peer, from_name=name, caller_name=name,
                                    duration=duration, gcid=call.global_call_id)

    # -- monitors and calls ------------------------------------------------------------------

    def new_cross_ref(self) -> int:
        self._last_cross_ref += 1
        return self._last_cross_ref

    def monitors_of(self, device: str) -> list[tuple[Session, int]]:
        """Every (session, monitorCrossRefID) watching ``device``."""
        return [(session, cross_ref) for session in self._sessions
                for cross_ref, watched in session.monitors.items() if watched == device]

    # -- sessions ----------------------------------------------------------------------------

    @property
    def sessions(self) -> list[Session]:
        """Connected sessions, logged in or not (``session.login`` is None until login)."""
        return list(self._sessions)

    def attach(self, session: Session) -> None:
        self._sessions.append(session)

    def detach(self, session: Session) -> None:
        if session in self._sessions:
            self._sessions.remove(session)

    def sessions_of(self, login: str) -> list[Session]:
        return [s for s in self._sessions if s.login == login]

    def logout(self, login_or_session: str | Session, mode: str = "forced") -> int:
        """Send ``<Logout mode=.../>`` and close; returns how many sessions were ended."""
        targets: Iterable[Session] = (self.sessions_of(login_or_session)
                                      if isinstance(login_or_session, str)
                                      else [login_or_session])
        ended = 0
        for session in list(targets):
            session.logout(mode)
            ended += 1
        return ended

    def drop(self) -> int:
        """Cut every connection now, without a word (a crashed or rebooted MX)."""
        victims = list(self._sessions)
        for session in victims:
            session.drop()
        return len(victims)

    # -- observability -----------------------------------------------------------------------

    def record(self, command: ReceivedCommand) -> None:
        self.received.append(command)
        for waiter in self._waiters.pop(command.name, []):
            waiter.callback(command)

    def wait_for(self, name: str) -> Deferred[ReceivedCommand]:
        """Fires with the next command named ``name`` (see ReceivedCommand) any session gets.

        It fires once the command has been handled: answered, or queued by ``reply_delay``.
        """
        waiter: Deferred[ReceivedCommand] = Deferred(
            lambda d: self._waiters.get(name, []).remove(d))
        self._waiters.setdefault(name, []).append(waiter)
        return waiter
