"""The call-log collector and its fence: on an in-memory link with a driven clock, then
through the HTTP API against the simulator on loopback."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.calllog import CallLogTiming, fetch_call_log
from mxproxy.csta.errors import MXTimeout, MXUnavailable, ProtocolViolation
from mxproxy.csta.frame import EVENT_ID, Frame, FrameDecoder, encode
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.sessions import UserSession
from tests.support import next_turn
from tests.test_api import APITestCase, add_calls, company, loads

TIMING = CallLogTiming(deadline=7.0)
SERVICES = (b"<GetServiceListResponse><Service><serviceId>1</serviceId>"
            b"<serviceType>VM</serviceType></Service></GetServiceListResponse>")


def block(first_id: int, count: int) -> bytes:
    entries = b"".join(b'<callinfo direction="incoming"><record_id>%d</record_id></callinfo>'
                       % (first_id + n) for n in range(count))
    return b"<callloginfo>" + entries + b"</callloginfo>"


def blocks(count: int) -> list[bytes]:
    """The log of ``count`` entries as the MX sends it: blocks of 21, the last one shorter."""
    return [block(first, min(21, count - first + 1)) for first in range(1, count + 1, 21)]


class CollectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = CSTAProtocol(self.clock)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder()
        self.timers = len(self.clock.getDelayedCalls())  # the link's own keep-alive

    def fetch(self, since: int | None = None) -> Deferred[list[int]]:
        collected = Deferred.fromCoroutine(fetch_call_log(self.protocol, since, TIMING))
        return collected.addCallback(lambda entries: [e.record_id for e in entries])

    def sent(self) -> list[Frame]:
        frames = self.decoder.feed(self.transport.value())
        self.transport.clear()
        return frames

    def fence_id(self) -> int:
        request, fence = self.sent()
        self.assertIn(b'id="calllog"', request.body)
        self.assertEqual(fence.body, b"<GetServiceList/>")
        return fence.invoke_id

    def receive(self, body: bytes, invoke_id: int = EVENT_ID) -> None:
        self.protocol.dataReceived(encode(invoke_id, body))

    def assertLoggedOut(self) -> None:
        self.assertEqual([frame.body for frame in self.sent()][-1:], [b"<logout/>"])
        self.assertTrue(self.transport.disconnecting)

    def assertNoTimerLeft(self) -> None:
        self.assertEqual(len(self.clock.getDelayedCalls()), self.timers)

    def test_request_carries_the_timestamp_and_the_fence_follows(self) -> None:
        self.fetch(1_501_101_426)
        request, fence = self.sent()
        self.assertIn(b'timestamp="1501101426"', request.body)
        self.assertEqual((fence.body, fence.invoke_id), (b"<GetServiceList/>",
                                                         request.invoke_id + 1))

    def test_any_length_ends_at_the_fence_without_waiting(self) -> None:
        """Empty, a multiple of 21 or not: the answer to the fence ends it, on the spot."""
        for count in (0, 5, 21, 42, 43):
            result = self.fetch()
            fence = self.fence_id()
            for body in blocks(count):
                self.receive(body)
            self.assertNoResult(result)
            self.receive(SERVICES, fence)
            self.assertEqual(self.successResultOf(result), list(range(1, count + 1)), count)
            self.assertNoTimerLeft()
            self.assertFalse(self.transport.disconnecting)

    def test_an_empty_block_is_no_end(self) -> None:
        """The "empty-terminator" variant ends with ``<callloginfo/>``; only the fence ends
        the log, so an empty block anywhere is just no entries."""
        result = self.fetch()
        fence = self.fence_id()
        self.receive(block(1, 21))
        self.receive(b"<callloginfo/>")
        self.assertNoResult(result)
        self.receive(block(22, 2))
        self.receive(SERVICES, fence)
        self.assertEqual(self.successResultOf(result), list(range(1, 24)))

    def test_a_fence_refused_with_csta_error_still_ends_it(self) -> None:
        result = self.fetch()
        fence = self.fence_id()
        self.receive(block(1, 21))
        self.receive(b"<CSTAErrorCode><operation>unknownCommand</operation></CSTAErrorCode>",
                     fence)
        self.assertEqual(len(self.successResultOf(result)), 21)
        self.assertFalse(self.transport.disconnecting)

    def test_sorted_by_record_id(self) -> None:
        result = self.fetch()
        fence = self.fence_id()
        self.receive(b'<callloginfo><callinfo><record_id>9</record_id></callinfo>'
                     b'<callinfo><record_id>3</record_id></callinfo></callloginfo>')
        self.receive(SERVICES, fence)
        self.assertEqual(self.successResultOf(result), [3, 9])

    def test_a_malformed_block_fails_it_and_logs_out(self) -> None:
        result = self.fetch()
        fence = self.fence_id()
        self.receive(block(1, 21))
        self.receive(b"<callloginfo><callinfo><record_id>9x</record_id></callinfo></callloginfo>")
        self.receive(block(43, 1))
        self.receive(SERVICES, fence)
        failure = self.failureResultOf(result, ProtocolViolation)
        self.assertIn("record_id", str(failure.value))
        self.assertLoggedOut()

    def test_a_number_too_long_for_int_fails_it_and_logs_out(self) -> None:
        """Python refuses to convert over 4,300 digits; that block is malformed too, not
        dropped in silence leaving a short log."""
        result = self.fetch()
        fence = self.fence_id()
        self.receive(block(1, 21))
        self.receive(b"<callloginfo><callinfo><record_id>%s</record_id></callinfo>"
                     b"</callloginfo>" % (b"9" * 5000))
        self.receive(SERVICES, fence)
        failure = self.failureResultOf(result, ProtocolViolation)
        self.assertIn("record_id", str(failure.value))
        self.assertLoggedOut()

    def test_an_unreadable_frame_fails_it_and_logs_out(self) -> None:
        """A frame whose XML does not parse has no name: it may have been a block."""
        result = self.fetch()
        fence = self.fence_id()
        self.receive(block(1, 21)[:40])
        self.receive(block(22, 3))
        self.receive(SERVICES, fence)
        self.failureResultOf(result, ProtocolViolation)
        self.assertLoggedOut()

    def test_a_slow_mx_fails_it_at_the_deadline_and_logs_out(self) -> None:
        result = self.fetch()
        self.fence_id()
        self.receive(block(1, 21))
        self.clock.advance(6.99)
        self.assertNoResult(result)
        self.clock.advance(0.01)
        self.failureResultOf(result, MXTimeout)
        self.assertLoggedOut()
        self.assertNoTimerLeft()

    def test_an_mx_that_never_answers_the_fence_times_out_every_time(self) -> None:
        """Pinned choice: blocks alone never prove the log complete (see the module)."""
        result = self.fetch()
        self.fence_id()
        for body in blocks(30):
            self.receive(body)
        self.clock.advance(7.0)
        self.failureResultOf(result, MXTimeout)
        self.assertLoggedOut()

    def test_link_loss_fails_the_collection(self) -> None:
        result = self.fetch()
        self.receive(block(1, 21))
        self.protocol.connectionLost()
        self.failureResultOf(result, MXUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_logs_out(self) -> None:
        """The caller went away: what the MX still owes must not answer the next request."""
        result = self.fetch()
        self.fence_id()
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertLoggedOut()
        self.assertNoTimerLeft()


class CallLogAPITests(APITestCase):
    """``GET calllog`` end to end; the simulator's reply delay and the proxy's timers run on one
    task.Clock, so "slow" and "too slow" are exact. 38 calls, one a minute from 1_700_000_000
    (record ids 1-38), as in the report of the leak."""

    async def start(self, calls: int = 38) -> Clock:
        clock = Clock()
        await self.daemon(company(clock=clock), clock=clock)
        add_calls(self.pbx, calls)
        return clock

    async def call_log(self, query: str = "") -> list[int]:
        response, body = await self.get("/calllog" + query)
        self.assertEqual(response.code, 200, body)
        return [entry["recordId"] for entry in loads(body)["callog"]]

    async def slow_request(self, delay: float) -> Deferred[tuple[object, bytes]]:
        """A call-log request the simulator holds for ``delay`` seconds of the clock, on the
        pooled session (logged in at full speed, with the last call only)."""
        self.assertEqual(await self.call_log("?timestamp=1700002220"), [38])
        self.pbx.faults.reply_delay = delay
        asked = self.pbx.wait_for("iq:calllog")
        pending = Deferred.fromCoroutine(self.get("/calllog"))
        await asked
        await next_turn()  # whatever came with the request is queued behind it
        return pending

    def next_request(self) -> Deferred[None]:
        """Fires when the proxy takes up the user's next request (it asks the pool for the
        session), whether or not that request then has to wait for the session."""
        taken: Deferred[None] = Deferred()
        acquire = self.d.pool.acquire

        def noticed(login: str, password: str) -> Coroutine[Any, Any, UserSession]:
            if not taken.called:
                taken.callback(None)
            return acquire(login, password)

        self.patch(self.d.pool, "acquire", noticed)
        return taken

    async def test_an_empty_log_answers_without_waiting(self) -> None:
        """The clock never moves here: a collector that waited on it would never answer, and
        the test would fail at its timeout."""
        clock = await self.start(calls=0)
        self.assertEqual(await self.call_log(), [])
        self.assertEqual(clock.seconds(), 0)

    test_an_empty_log_answers_without_waiting.timeout = 30  # type: ignore[attr-defined]

    async def test_a_slow_mx_gives_the_whole_log_and_the_next_request_its_own(self) -> None:
        """The reported leak: the MX answers 1.2 s late, and meanwhile the user asks for the
        calls after a future time; that request used to get the 38 late records."""
        clock = await self.start()
        pending = await self.slow_request(1.2)
        clock.advance(1.0)
        self.pbx.faults.reply_delay = 0.0
        taken = self.next_request()
        later = Deferred.fromCoroutine(self.call_log("?timestamp=1800000000"))
        await taken
        await next_turn()
        clock.advance(0.2)
        self.assertEqual(await later, [])
        response, body = await pending
        self.assertEqual(response.code, 200, body)
        self.assertEqual([entry["recordId"] for entry in loads(body)["callog"]],
                         list(range(1, 39)))
        self.assertEqual(self.pbx.logins["alice"], 1, "a clean end keeps the session")

    async def test_beyond_the_deadline_504_and_the_next_request_is_clean(self) -> None:
        clock = await self.start()
        logout = self.pbx.wait_for("logout")
        pending = await self.slow_request(8.0)
        clock.advance(7.0)
        self.assertError(await pending, 504)
        self.pbx.faults.reply_delay = 0.0
        self.assertEqual(await self.call_log("?timestamp=1800000000"), [])
        clock.advance(1.0)  # when the late blocks would have gone out
        self.assertEqual(await self.call_log("?timestamp=1700001800"), list(range(31, 39)))
        self.assertTrue(logout.called)
        self.assertEqual(self.pbx.logins["alice"], 2)

    async def test_a_request_waiting_behind_a_failed_log_never_uses_its_link(self) -> None:
        """Nothing goes out on a link after its logout, not even from a request that was
        already waiting for that session when the call log failed."""
        clock = await self.start()
        pending = await self.slow_request(8.0)
        old, = self.pbx.sessions_of("alice")
        taken = self.next_request()
        later = Deferred.fromCoroutine(self.call_log("?timestamp=1800000000"))
        await taken
        self.pbx.faults.reply_delay = 0.0
        clock.advance(7.0)
        self.assertError(await pending, 504)
        self.assertEqual(await later, [])
        self.assertEqual([command.name for command in old.received][-3:],
                         ["iq:calllog", "GetServiceList", "logout"])
        self.assertEqual(self.pbx.logins["alice"], 2)

    async def test_a_malformed_block_is_502_and_the_next_request_gets_its_own_log(self) -> None:
        await self.start(calls=43)
        self.assertEqual(len(await self.call_log()), 43)
        logout = self.pbx.wait_for("logout")
        self.pbx.faults.malformed_next = "xml"  # the first block of the next log
        self.assertError(await self.get("/calllog"), 502, "unreadable")
        self.pbx.faults.malformed_next = None
        self.assertEqual(await self.call_log("?timestamp=1700001800"), list(range(31, 44)))
        self.assertTrue(logout.called)
        self.assertEqual(self.pbx.logins["alice"], 2)
