"""The address book of one MX: the cache the API and the call monitors read, and its load.

Loading is bounded whatever the MX announces or sends: at most ``maxContacts`` contacts, and a
time limit that grows with that cap (:func:`load_time_limit`).
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.internet.interfaces import IReactorTime

from mxproxy.csta import commands
from mxproxy.csta.errors import MXError, MXTimeout, ProtocolViolation
from mxproxy.csta.messages import AddressBookPage, Contact
from mxproxy.csta.protocol import CSTAProtocol, Message

PAGE_TIME = 0.15
"""Seconds allowed per address-book page (50 contacts) for as many pages as ``maxContacts``
needs, so 5 minutes for the default 100,000: the simulator serves those in 10-17 s over
loopback, and with :data:`PAGE_WINDOW` pages in flight a WAN adds one round trip per 16 pages,
not per page."""
MIN_LOAD_TIME = 60.0
PAGE_WINDOW = 16
"""Address-book pages asked for ahead of their answers. Asked for one at a time, each page
costs a round trip: 200 round trips for 10,000 contacts, 8 s across a 40 ms WAN. In flight,
pages arrive in bursts that the proxy parses (~3 ms a page) before its next requests leave, so a
window pays a round trip plus its parsing: it hides the round trip once it holds that round
trip's worth of parsing, 16 pages for 40 ms (bench/startup.py --rtt-ms 40: the 10,000 contacts
loaded in ~0.8 s with 16, ~1.5 s with 8, ~3.5 s with 4). Bounded all the same: a real MX's
appetite for queued requests is not documented, and 16 pages are ~290 KB in flight."""


class AddressBook:
    """Contacts by JID, with a lookup by extension; ``version`` counts the changes, so that
    whatever is derived from the book (its JSON) can be cached."""

    def __init__(self, contacts: dict[str, Contact] | None = None) -> None:
        self._by_jid: dict[str, Contact] = dict(contacts or {})
        self._by_ext = {contact.ext: contact for contact in self._by_jid.values() if contact.ext}
        self.version = 0

    def __len__(self) -> int:
        return len(self._by_jid)

    def __iter__(self) -> Iterator[Contact]:
        return iter(self._by_jid.values())

    def get(self, jid: str) -> Contact | None:
        return self._by_jid.get(jid)

    def by_ext(self, ext: str) -> Contact | None:
        return self._by_ext.get(ext)

    def apply(self, jid: str, contact: Contact | None) -> None:
        """Store ``contact`` (the new state of ``jid``), or forget ``jid`` (None)."""
        if contact is None:
            self.delete(jid)
        else:
            self.upsert(contact)

    def upsert(self, contact: Contact) -> None:
        self.delete(contact.jid)
        self._by_jid[contact.jid] = contact
        if contact.ext:
            self._by_ext[contact.ext] = contact

    def delete(self, jid: str) -> None:
        old = self._by_jid.pop(jid, None)
        if old is not None and self._by_ext.get(old.ext) is old:
            del self._by_ext[old.ext]
        self.version += 1


def load_time_limit(max_contacts: int) -> float:
    """How long loading an address book of at most ``max_contacts`` may take."""
    return max(MIN_LOAD_TIME, max_contacts / 50 * PAGE_TIME)


async def load_address_book(protocol: CSTAProtocol, max_contacts: int, clock: IReactorTime,
                            time_limit: float, window: int = PAGE_WINDOW) -> dict[str, Contact]:
    """Every contact, page by page, until ``size`` entries arrived (page size is the MX's).

    Page 0 tells the size and the page size; the pages after it are asked for ``window`` at a
    time ahead of their answers, so that a load costs one round trip per ``window`` pages
    instead of one per page (the MX answers one connection's commands in order).

    Whatever the MX announces or sends, at most ``max_contacts`` are kept and the load ends
    within ``time_limit`` seconds (and one reply timeout, the longest wait for the next page):
    each page is asked for once, every contact received counts (repeats too), and a ``size``
    over the limit fails at once.
    """
    contacts: dict[str, Contact] = {}
    received = 0
    size = page_size = 1  # until page 0 tells them: that page alone is asked for
    requests = _PageRequests(protocol)
    deadline = clock.seconds() + time_limit
    while True:
        waiter = protocol.expect("ablist", match=requests.awaited)
        while len(requests) < window and received + page_size * len(requests) < size:
            requests.ask()
        message = await waiter
        index = requests.take(message)
        page = AddressBookPage.from_xml(message.element)
        received += len(page.contacts)
        if page.size > max_contacts:
            raise AddressBookTooLarge(f"the MX announces an address book of {page.size} "
                                      f"contacts, over maxContacts ({max_contacts})")
        if received > max_contacts:
            raise AddressBookTooLarge(f"the MX sent {received} contacts, over maxContacts "
                                      f"({max_contacts})")
        for contact in page.contacts:
            contacts[contact.jid] = contact
        if received >= page.size:
            return contacts
        if not page.contacts:
            raise MXError(f"address book page {index} is empty after {received} of {page.size}")
        if clock.seconds() > deadline:
            raise MXTimeout(f"address book not loaded within {time_limit:g} s ({received} of "
                            f"{page.size} contacts)")
        size = page.size
        page_size = max(page_size, len(page.contacts))  # every page but the last is full


class _PageRequests:
    """The pages asked for and not received yet, oldest first."""

    def __init__(self, protocol: CSTAProtocol) -> None:
        self._protocol = protocol
        self._awaited: dict[str, int] = {}
        """By the ``index`` attribute expected back, in the order asked."""
        self._next = 0

    def __len__(self) -> int:
        return len(self._awaited)

    def ask(self) -> None:
        """Ask for the page after the last one asked for."""
        index, self._next = self._next, self._next + 1
        self._protocol.send(commands.addressbook_page(index))
        self._awaited[str(index)] = index

    def awaited(self, message: Message) -> bool:
        """Whether ``message`` is a page asked for and not received yet; any other (a repeat, a
        page not asked for) is not waited for."""
        return self._key(message) in self._awaited

    def take(self, message: Message) -> int:
        """The index of an :meth:`awaited` page, which is awaited no longer."""
        return self._awaited.pop(self._key(message))

    def _key(self, message: Message) -> str:
        """Pages are told apart by ``index``; an MX that omits it is trusted to answer in
        order, so such a page is the oldest one asked for (none: ``""``, never awaited)."""
        return message.element.get("index", next(iter(self._awaited), ""))


class AddressBookTooLarge(ProtocolViolation):
    """The MX announces or sends more contacts than ``maxContacts`` allows."""
