"""The address-book load over an in-memory transport: which pages it asks for and when, and
what it makes of the pages an MX sends back (tests/test_mx.py loads from the simulator)."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.addressbook import PAGE_WINDOW, AddressBookTooLarge, load_address_book
from mxproxy.csta.errors import MXError, MXTimeout, MXUnavailable
from mxproxy.csta.frame import EVENT_ID
from mxproxy.csta.messages import Contact
from mxproxy.csta.xml import XMLError, parse
from tests.test_protocol import Link

JID_BASE = 43884850000000000
LINK_TIMERS = {"_send_keepalive", "_check_liveness"}
"""The protocol's own timers: what is left once a load has ended, whichever way."""


def page(index: int | None, size: int, first: int, count: int) -> bytes:
    """An ``ablist`` of ``count`` contacts from number ``first`` on (no ``index`` for None)."""
    attribute = b"" if index is None else b' index="%d"' % index
    entries = b"".join(b'<abentry jid="%d"><firstName>F%d</firstName></abentry>'
                       % (JID_BASE + n, n) for n in range(first, first + count))
    return b'<ablist size="%d"%s>%s</ablist>' % (size, attribute, entries)


class Loading:
    """A load on a :class:`Link`, and the MX side of it: the pages asked for, and answers."""

    def __init__(self, max_contacts: int = 100_000, time_limit: float = 60.0,
                 window: int = PAGE_WINDOW) -> None:
        self.link = Link()
        self.result: Deferred[dict[str, Contact]] = Deferred.fromCoroutine(load_address_book(
            self.link.protocol, max_contacts, self.link.clock, time_limit, window))

    def asked(self) -> list[int]:
        """The indexes of the pages asked for since the last call."""
        return [int(parse(frame.body).get("index", "")) for frame in self.link.sent()]

    def answer(self, index: int | None, size: int, page_size: int = 50,
               first: int | None = None) -> None:
        """Page ``index`` of a book of ``size`` (its contacts: those of page ``first``, by
        default the same page; the first page for a page without index)."""
        start = page_size * (first if first is not None else index or 0)
        self.link.receive(EVENT_ID, page(index, size, start, min(page_size, size - start)))

    def timers(self) -> set[str]:
        return self.link.timers()


class PipelineTests(SynchronousTestCase):
    def test_pages_are_asked_for_a_window_ahead_of_their_answers(self) -> None:
        load = Loading()
        self.assertEqual(load.asked(), [0])
        load.answer(0, 1000)
        self.assertEqual(load.asked(), list(range(1, 1 + PAGE_WINDOW)))
        for index in range(1, 20):
            load.answer(index, 1000)
            self.assertEqual(load.asked(), [index + PAGE_WINDOW] if index + PAGE_WINDOW < 20
                             else [])
        book = self.successResultOf(load.result)
        self.assertEqual(set(book), {str(JID_BASE + n) for n in range(1000)})
        self.assertEqual(load.timers(), LINK_TIMERS)

    def test_no_page_past_the_end_is_asked_for(self) -> None:
        load = Loading()
        load.asked()
        load.answer(0, 120)
        self.assertEqual(load.asked(), [1, 2])
        load.answer(1, 120)
        load.answer(2, 120)
        self.assertEqual(len(self.successResultOf(load.result)), 120)
        self.assertEqual(load.asked(), [])

    def test_the_page_size_is_the_mx_s(self) -> None:
        load = Loading()
        load.asked()
        load.answer(0, 20, page_size=7)
        self.assertEqual(load.asked(), [1, 2])
        load.answer(1, 20, page_size=7)
        load.answer(2, 20, page_size=7)
        self.assertEqual(len(self.successResultOf(load.result)), 20)

    def test_a_short_page_before_the_end_asks_for_one_more(self) -> None:
        load = Loading()
        load.asked()
        load.answer(0, 100)
        self.assertEqual(load.asked(), [1])
        load.link.receive(EVENT_ID, page(1, 100, 50, 30))  # 20 missing: one more page
        self.assertEqual(load.asked(), [2])
        load.link.receive(EVENT_ID, page(2, 100, 80, 20))
        self.assertEqual(len(self.successResultOf(load.result)), 100)

    def test_a_size_that_shrinks_ends_the_load_with_pages_in_flight(self) -> None:
        load = Loading()
        load.asked()
        load.answer(0, 1000)
        self.assertEqual(len(load.asked()), PAGE_WINDOW)
        load.answer(1, 100)  # contacts were deleted meanwhile: 100 are all there is
        self.assertEqual(len(self.successResultOf(load.result)), 100)
        self.assertEqual(load.timers(), LINK_TIMERS)
        load.answer(2, 100, first=1)  # the answers still in flight are not read
        self.assertEqual(load.asked(), [])

    def test_a_window_of_one_asks_page_by_page(self) -> None:
        load = Loading(window=1)
        for index in range(3):
            self.assertEqual(load.asked(), [index])
            load.answer(index, 150)
        self.assertEqual(len(self.successResultOf(load.result)), 150)


class PageMatchingTests(SynchronousTestCase):
    def started(self, size: int = 500) -> Loading:
        """A load of ``size`` contacts with page 0 received and the next ones asked for."""
        load = Loading()
        load.asked()
        load.answer(0, size)
        self.assertEqual(load.asked(), list(range(1, min(1 + PAGE_WINDOW, -(-size // 50)))))
        return load

    def test_pages_out_of_order_are_taken_by_their_index(self) -> None:
        load = self.started()
        for index in (3, 1, 9, 2, 8, 4, 5, 7, 6):
            load.answer(index, 500)
            load.asked()
        self.assertEqual(set(self.successResultOf(load.result)),
                         {str(JID_BASE + n) for n in range(500)})

    def test_a_repeated_page_is_not_taken_again(self) -> None:
        load = self.started(150)
        load.answer(1, 150)
        load.answer(1, 150, first=2)  # page 2's contacts, but as page 1 again: ignored
        load.answer(0, 150, first=2)
        self.assertNoResult(load.result)
        load.answer(2, 150)
        self.assertEqual(len(self.successResultOf(load.result)), 150)

    def test_a_page_not_asked_for_is_not_taken(self) -> None:
        load = self.started()
        load.answer(PAGE_WINDOW + 1, 500)  # not asked for yet: page 1 has not arrived
        load.link.receive(EVENT_ID, b'<ablist size="500" index="x"/>')
        self.assertEqual(load.asked(), [])
        load.link.clock.advance(7)
        self.assertEqual(str(self.failureResultOf(load.result, MXTimeout).value),
                         "no ablist within 7 s")
        self.assertEqual(load.timers(), LINK_TIMERS)

    def test_pages_without_index_are_taken_in_the_order_asked(self) -> None:
        load = Loading()
        self.assertEqual(load.asked(), [0])
        load.answer(None, 200)
        self.assertEqual(load.asked(), [1, 2, 3])
        for index in (1, 2, 3):
            load.answer(None, 200, first=index)
        self.assertEqual(set(self.successResultOf(load.result)),
                         {str(JID_BASE + n) for n in range(200)})

    def test_repeats_without_index_count(self) -> None:
        load = Loading()
        load.asked()
        for _ in range(3):
            load.answer(None, 150)  # page 0's contacts each time
        self.assertEqual(len(self.successResultOf(load.result)), 50)

    def test_an_empty_page_before_the_end_names_the_page(self) -> None:
        load = self.started()
        load.answer(1, 500)
        load.link.receive(EVENT_ID, b'<ablist size="500" index="2"/>')
        self.assertEqual(str(self.failureResultOf(load.result, MXError).value),
                         "address book page 2 is empty after 100 of 500")
        self.assertEqual(load.timers(), LINK_TIMERS)


class FailureMidWindowTests(SynchronousTestCase):
    """Whatever ends a load while pages are in flight leaves no expectation and no timer."""

    def started(self, max_contacts: int = 100_000, time_limit: float = 60.0) -> Loading:
        load = Loading(max_contacts, time_limit)
        load.asked()
        load.answer(0, 1000)
        self.assertEqual(len(load.asked()), PAGE_WINDOW)
        return load

    def assert_ended(self, load: Loading, error: type[Exception], text: str | None = None
                     ) -> None:
        failure = self.failureResultOf(load.result, error)
        if text is not None:
            self.assertEqual(str(failure.value), text)
        self.assertEqual(load.timers(), LINK_TIMERS)

    def test_a_size_over_the_cap(self) -> None:
        load = self.started(max_contacts=1000)
        load.answer(1, 1001)
        self.assert_ended(load, AddressBookTooLarge, "the MX announces an address book of "
                                                     "1001 contacts, over maxContacts (1000)")

    def test_contacts_over_the_cap(self) -> None:
        load = Loading(max_contacts=200)
        load.asked()
        load.answer(0, 200)
        self.assertEqual(load.asked(), [1, 2, 3])
        load.link.receive(EVENT_ID, page(1, 200, 50, 151))
        self.assert_ended(load, AddressBookTooLarge,
                          "the MX sent 201 contacts, over maxContacts (200)")

    def test_the_time_limit(self) -> None:
        load = self.started(time_limit=10.0)
        load.link.clock.advance(6)
        load.answer(1, 1000)
        load.link.clock.advance(6)
        load.answer(2, 1000)
        self.assert_ended(load, MXTimeout, "address book not loaded within 10 s (150 of 1000 "
                                           "contacts)")

    def test_silence(self) -> None:
        load = self.started()
        load.link.clock.advance(7)
        self.assert_ended(load, MXTimeout, "no ablist within 7 s")

    def test_an_unreadable_page(self) -> None:
        load = self.started()
        load.link.receive(EVENT_ID, b'<ablist size="many" index="1"/>')
        self.assert_ended(load, XMLError)

    def test_the_link_lost(self) -> None:
        load = self.started()
        load.link.protocol.connectionLost()
        self.failureResultOf(load.result, MXUnavailable)
        self.assertEqual(load.timers(), set())

    def test_a_cancelled_load(self) -> None:
        load = self.started()
        load.result.cancel()
        self.assert_ended(load, CancelledError)
