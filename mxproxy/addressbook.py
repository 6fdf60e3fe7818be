"""The address book of one MX: the cache the API and the call monitors read, and its load.

Loading is bounded whatever the MX announces or sends: at most ``maxContacts`` contacts, and a
time limit that grows with that cap (:func:`load_time_limit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from twisted.internet.interfaces import IReactorTime

from mxproxy.csta import commands
from mxproxy.csta.errors import MXError, MXTimeout, ProtocolViolation
from mxproxy.csta.messages import AddressBookPage, Contact
from mxproxy.csta.protocol import CSTAProtocol, Message

PAGE_TIME = 0.15
"""Seconds allowed per address-book page (50 contacts) for as many pages as ``maxContacts``
needs, so 5 minutes for the default 100,000: the simulator serves those in 16 s over loopback,
which leaves a round trip of ~140 ms per page across a WAN."""
MIN_LOAD_TIME = 60.0


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
                            time_limit: float) -> dict[str, Contact]:
    """Every contact, page by page, until ``size`` entries arrived (page size is the MX's).

    Whatever the MX announces or sends, at most ``max_contacts`` are kept and the load ends
    within ``time_limit`` seconds (and one reply timeout): each page is asked for once, every
    contact received counts (repeats too), and a ``size`` over the limit fails at once.
    """
    contacts: dict[str, Contact] = {}
    received = 0
    index = 0
    deadline = clock.seconds() + time_limit
    while True:
        waiter = protocol.expect("ablist", match=_page_matcher(str(index)))
        protocol.send(commands.addressbook_page(index))
        page = AddressBookPage.from_xml((await waiter).element)
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
        index += 1


def _page_matcher(index: str) -> Callable[[Message], bool]:
    """Pages are told apart by ``index``; an MX that omits it is trusted to answer in order."""
    return lambda message: message.element.get("index", index) == index


class AddressBookTooLarge(ProtocolViolation):
    """The MX announces or sends more contacts than ``maxContacts`` allows."""
