"""The call-log collector's end-of-log rules, on an in-memory link with a driven clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.calllog import CallLogTiming, fetch_call_log
from mxproxy.csta.errors import MXUnavailable
from mxproxy.csta.frame import EVENT_ID, FrameDecoder, encode
from mxproxy.csta.protocol import CSTAProtocol

TIMING = CallLogTiming(first_block=1.0, quiet=0.3)


def block(first_id: int, count: int) -> bytes:
    entries = b"".join(b'<callinfo direction="incoming"><record_id>%d</record_id></callinfo>'
                       % (first_id + n) for n in range(count))
    return b"<callloginfo>" + entries + b"</callloginfo>"


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = CSTAProtocol(self.clock)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def fetch(self, since: int | None = None) -> Deferred[list[int]]:
        collected = Deferred.fromCoroutine(fetch_call_log(self.protocol, since, TIMING))
        return collected.addCallback(lambda entries: [e.record_id for e in entries])

    def receive(self, body: bytes) -> None:
        self.protocol.dataReceived(encode(EVENT_ID, body))

    def test_request_carries_the_timestamp(self) -> None:
        self.fetch(1_501_101_426)
        [frame] = FrameDecoder().feed(self.transport.value())
        self.assertIn(b'timestamp="1501101426"', frame.body)
        self.assertIn(b'id="calllog"', frame.body)

    def test_short_block_ends_at_once(self) -> None:
        result = self.fetch()
        self.receive(block(1, 21))
        self.receive(block(22, 3))
        self.assertEqual(self.successResultOf(result), list(range(1, 25)))

    def test_empty_log_ends_after_the_first_block_wait(self) -> None:
        result = self.fetch()
        self.clock.advance(0.99)
        self.assertNoResult(result)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(result), [])

    def test_full_block_then_quiet(self) -> None:
        result = self.fetch()
        self.receive(block(1, 21))
        self.clock.advance(0.29)
        self.receive(block(22, 21))  # a block inside the quiet period restarts it
        self.clock.advance(0.29)
        self.assertNoResult(result)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(result), list(range(1, 43)))

    def test_empty_block_terminates(self) -> None:
        result = self.fetch()
        self.receive(block(1, 21))
        self.receive(b"<callloginfo/>")
        self.assertEqual(len(self.successResultOf(result)), 21)

    def test_sorted_by_record_id(self) -> None:
        result = self.fetch()
        self.receive(b'<callloginfo><callinfo><record_id>9</record_id></callinfo>'
                     b'<callinfo><record_id>3</record_id></callinfo></callloginfo>')
        self.assertEqual(self.successResultOf(result), [3, 9])

    def test_link_loss_fails_the_collection(self) -> None:
        result = self.fetch()
        self.receive(block(1, 21))
        self.protocol.connectionLost()
        self.failureResultOf(result, MXUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
