"""CSTAProtocol over an in-memory transport with a driven clock."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.csta.errors import (
    CallStateError,
    CSTAError,
    LoggedOut,
    MXTimeout,
    MXUnavailable,
    ProtocolViolation,
    UnknownCall,
)
from mxproxy.csta.frame import MAX_BODY_SIZE, Frame, FrameDecoder, FrameTooLarge, encode
from mxproxy.csta.protocol import (
    BAD_FRAME_LIMIT,
    KEEPALIVE_FRAME,
    PARTIAL_FRAME_TIMEOUT,
    CSTAProtocol,
    Message,
)
from tests.test_tls import capture_logs

KEEPALIVE = Frame(0, b"<keepalive />")
PROBE = b"<GetServiceList/>"


class Link:
    """A protocol connected to a StringTransport, plus a decoder for what it wrote."""

    def __init__(self, **kwargs: float) -> None:
        self.clock = Clock()
        self.trace: list[tuple[str, int, bytes]] = []
        self.protocol = CSTAProtocol(self.clock, trace=lambda *a: self.trace.append(a), **kwargs)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self._decoder = FrameDecoder()

    def sent(self) -> list[Frame]:
        frames = self._decoder.feed(self.transport.value())
        self.transport.clear()
        return frames

    def receive(self, invoke_id: int, body: bytes) -> None:
        self.protocol.dataReceived(encode(invoke_id, body))

    def dropped(self) -> Exception | None:
        """Why the link was aborted (None unless it was, rather than closed politely); its
        loss is then delivered, as the reactor would."""
        if not self.transport.disconnected:
            return None
        self.protocol.connectionLost()
        return self.protocol.close_reason

    def timers(self) -> set[str]:
        return {call.func.__name__ for call in self.clock.getDelayedCalls()}

    def answer_probe(self, frames: list[Frame]) -> None:
        """Answer the liveness probe among ``frames`` as the simulator does."""
        [probe] = [frame for frame in frames if frame.body == PROBE]
        self.receive(probe.invoke_id, b"<CSTAErrorCode><operation>unknownCommand</operation>"
                                      b"</CSTAErrorCode>")


class RequestTests(SynchronousTestCase):
    def test_reply_with_the_same_id_fires_the_request(self) -> None:
        link = Link()
        result = link.protocol.request(b"<MonitorStartAb/>")
        [frame] = link.sent()
        self.assertEqual(frame, Frame(1, b"<MonitorStartAb/>"))
        link.receive(1, b"<MonitorStartAbResponse/>")
        message = self.successResultOf(result)
        self.assertEqual((message.invoke_id, message.name), (1, "MonitorStartAbResponse"))

    def test_replies_out_of_order_reach_their_requests(self) -> None:
        link = Link()
        first, second = link.protocol.request(b"<a/>"), link.protocol.request(b"<b/>")
        link.receive(2, b"<rb/>")
        link.receive(1, b"<ra/>")
        self.assertEqual(self.successResultOf(first).name, "ra")
        self.assertEqual(self.successResultOf(second).name, "rb")

    def test_csta_error_code_fails_with_the_mx_text(self) -> None:
        link = Link()
        result = link.protocol.request(b"<MakeCall/>")
        link.receive(1, b"<CSTAErrorCode><operation>x</operation>"
                        b"<privateErrorCode>URM Denied</privateErrorCode></CSTAErrorCode>")
        self.assertEqual(self.failureResultOf(result, CSTAError).value.text, "URM Denied")

    def test_csta_error_code_is_typed_by_its_values(self) -> None:
        """A refusal that says why fails as the class the API maps (409, 404)."""
        link = Link()
        state, unknown = link.protocol.request(b"<HoldCall/>"), link.protocol.request(b"<x/>")
        link.receive(1, b"<CSTAErrorCode><stateIncompatibility>noActiveCall"
                        b"</stateIncompatibility></CSTAErrorCode>")
        link.receive(2, b"<CSTAErrorCode><operation>invalidCallID</operation></CSTAErrorCode>")
        self.assertEqual(self.failureResultOf(state, CallStateError).value.text, "noActiveCall")
        self.failureResultOf(unknown, UnknownCall)

    def test_timeout_uses_the_injected_clock(self) -> None:
        link = Link(reply_timeout=7.0)
        result = link.protocol.request(b"<x/>")
        link.clock.advance(6.9)
        self.assertNoResult(result)
        link.clock.advance(0.2)
        self.failureResultOf(result, MXTimeout)
        link.receive(1, b"<late/>")  # a late reply is dropped quietly
        self.assertEqual(link.timers(), {"_send_keepalive", "_check_liveness"})

    def test_cancel_forgets_the_waiter(self) -> None:
        link = Link()
        result = link.protocol.request(b"<x/>")
        result.cancel()
        self.failureResultOf(result, CancelledError)
        self.assertEqual(link.timers(), {"_send_keepalive", "_check_liveness"})  # no reply timer
        seen: list[Message] = []
        link.protocol.subscribe("reply", seen.append)
        link.receive(1, b"<reply/>")  # the late reply goes to subscribers only
        self.assertEqual(len(seen), 1)

    def test_connection_loss_fails_pending_requests(self) -> None:
        link = Link()
        result = link.protocol.request(b"<x/>")
        link.protocol.connectionLost()
        self.failureResultOf(result, MXUnavailable)
        self.assertEqual(link.clock.getDelayedCalls(), [])
        self.assertRaises(MXUnavailable, link.protocol.request, b"<x/>")

    def test_oversized_body_raises_before_writing(self) -> None:
        link = Link()
        self.assertRaises(FrameTooLarge, link.protocol.request, b"x" * (MAX_BODY_SIZE + 1))
        self.assertEqual(link.transport.value(), b"")

    def test_unparseable_reply_fails_its_request_and_the_link_survives(self) -> None:
        link = Link()
        result = link.protocol.request(b"<x/>")
        link.receive(1, b"<broken")
        self.failureResultOf(result, ProtocolViolation)
        after = link.protocol.request(b"<y/>")
        link.receive(2, b"<ok/>")
        self.assertEqual(self.successResultOf(after).name, "ok")


class InvokeIdTests(SynchronousTestCase):
    def test_ids_run_1_to_9998_and_wrap_never_using_0_or_9999(self) -> None:
        link = Link()
        for _ in range(9998 + 5):
            link.protocol.send(b"<x/>")
        ids = [frame.invoke_id for frame in link.sent()]
        self.assertEqual(ids[:3], [1, 2, 3])
        self.assertEqual(ids[9996:9999], [9997, 9998, 1])
        self.assertNotIn(0, ids)
        self.assertNotIn(9999, ids)

    def test_ids_still_awaiting_a_reply_are_skipped(self) -> None:
        link = Link()
        pending = link.protocol.request(b"<slow/>")  # id 1 stays pending
        for _ in range(9997):
            link.protocol.send(b"<x/>")
        link.sent()
        link.protocol.send(b"<next/>")
        self.assertEqual(link.sent()[0].invoke_id, 2)
        self.assertNoResult(pending)


class SubscriptionTests(SynchronousTestCase):
    def test_subscriber_gets_every_frame_of_its_name_whatever_the_id(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("ablist", seen.append)
        link.receive(9999, b'<ablist size="0" index="0"/>')
        link.receive(17, b'<ablist size="1" index="0"/>')
        link.receive(9999, b"<callloginfo/>")
        self.assertEqual([(m.invoke_id, m.name) for m in seen], [(9999, "ablist"), (17, "ablist")])

    def test_namespaced_root_is_matched_by_local_name(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("DeliveredEvent", seen.append)
        link.receive(9999, b'<csta:DeliveredEvent xmlns:csta="urn:x"/>')
        self.assertEqual(len(seen), 1)

    def test_unsubscribe_stops_delivery(self) -> None:
        link = Link()
        seen: list[Message] = []
        unsubscribe = link.protocol.subscribe("presence", seen.append)
        unsubscribe()
        unsubscribe()  # idempotent
        link.receive(9999, b"<presence/>")
        self.assertEqual(seen, [])

    def test_a_failing_subscriber_does_not_stop_the_reader(self) -> None:
        link = Link()
        seen: list[Message] = []

        def explode(message: Message) -> None:
            raise RuntimeError("bug in a consumer")

        link.protocol.subscribe("DeliveredEvent", explode)
        link.protocol.subscribe("DeliveredEvent", seen.append)
        link.receive(9999, b"<DeliveredEvent/>")
        link.receive(9999, b"<DeliveredEvent/>")
        self.assertEqual(len(seen), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_malformed_event_is_skipped(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("DeliveredEvent", seen.append)
        link.receive(9999, b"<DeliveredEvent><unclosed></DeliveredEvent>")
        link.receive(9999, b"<DeliveredEvent/>")
        self.assertEqual(len(seen), 1)
        self.assertTrue(link.transport.connected)

    def test_expect_matches_content_and_times_out(self) -> None:
        link = Link()
        page1 = link.protocol.expect("ablist", match=lambda m: m.element.get("index") == "1")
        link.receive(9999, b'<ablist index="0"/>')
        self.assertNoResult(page1)
        link.receive(9999, b'<ablist index="1"/>')
        self.assertEqual(self.successResultOf(page1).element.get("index"), "1")
        never = link.protocol.expect("callloginfo", timeout=2)
        link.clock.advance(2)
        self.failureResultOf(never, MXTimeout)

    def test_expect_fails_when_the_link_ends(self) -> None:
        link = Link()
        waiting = link.protocol.expect("ablist")
        link.protocol.connectionLost()
        self.failureResultOf(waiting, MXUnavailable)
        self.assertEqual(link.clock.getDelayedCalls(), [])


class KeepaliveTests(SynchronousTestCase):
    def test_keepalive_after_60_s_without_sending(self) -> None:
        link = Link()
        link.clock.advance(59)
        self.assertEqual(link.transport.value(), b"")
        link.clock.advance(1)
        frames = link.sent()
        self.assertEqual(frames[0], KEEPALIVE)  # then the liveness probe: nothing came either
        link.answer_probe(frames)
        link.clock.advance(60)
        self.assertEqual(link.sent()[0], KEEPALIVE)

    def test_sending_postpones_the_keepalive(self) -> None:
        link = Link()
        link.clock.advance(50)
        link.protocol.send(b"<x/>")
        link.clock.advance(5)
        link.receive(9999, b"<presence/>")  # no probe due before the keepalive
        link.transport.clear()
        link.clock.advance(54)
        self.assertEqual(link.transport.value(), b"")
        link.clock.advance(1)
        self.assertEqual(link.transport.value(), KEEPALIVE_FRAME)

    def test_keepalive_frame_is_the_documented_21_bytes(self) -> None:
        self.assertEqual(KEEPALIVE_FRAME, b"\x00\x00\x00\x150000<keepalive />")


class CloseTests(SynchronousTestCase):
    def test_logout_event_closes_and_surfaces_the_mode(self) -> None:
        link = Link()
        pending = link.protocol.request(b"<x/>")
        closed = link.protocol.when_closed()
        link.receive(9999, b'<Logout mode="forced"/>')
        self.assertTrue(link.transport.disconnecting)
        link.protocol.connectionLost()
        reason = self.successResultOf(closed)
        self.assertIsInstance(reason, LoggedOut)
        self.assertEqual(reason.mode, "forced")
        self.failureResultOf(pending, LoggedOut)

    def test_broken_header_closes_the_connection_once(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("ok", seen.append)
        link.protocol.dataReceived(encode(9999, b"<ok/>") + b"\x01\x00\x00\x0c0001<x/>")
        link.protocol.dataReceived(encode(9999, b"<ok/>"))
        self.assertEqual(len(seen), 1, "the frame before the bad header is still delivered")
        self.assertTrue(link.transport.disconnecting)
        link.protocol.connectionLost()
        self.assertIsInstance(self.successResultOf(link.protocol.when_closed()),
                              ProtocolViolation)

    def test_logout_sends_logout_then_closes(self) -> None:
        link = Link()
        link.protocol.logout()
        self.assertEqual(link.sent()[0].body, b"<logout/>")
        self.assertTrue(link.transport.disconnecting)

    def test_trace_sees_both_directions(self) -> None:
        link = Link()
        link.protocol.send(b"<out/>")
        link.receive(9999, b"<in/>")
        self.assertEqual(link.trace, [("->", 1, b"<out/>"), ("<-", 9999, b"<in/>")])


class LivenessTests(SynchronousTestCase):
    def test_silence_sends_a_probe_and_no_answer_drops_the_link(self) -> None:
        link = Link()
        link.clock.advance(59.9)
        self.assertEqual(link.sent(), [])
        link.clock.advance(0.1)
        self.assertIn(PROBE, [frame.body for frame in link.sent()])
        link.clock.advance(6.9)
        self.assertIsNone(link.dropped())
        link.clock.advance(0.1)
        reason = link.dropped()
        self.assertIsInstance(reason, MXUnavailable)
        self.assertEqual(str(reason), "no answer to the liveness probe within 7 s")

    def test_any_answer_proves_the_peer_alive(self) -> None:
        link = Link()
        for _ in range(3):  # one probe a minute, each answered with a CSTAErrorCode
            link.clock.advance(60)
            link.answer_probe(link.sent())
        link.clock.advance(7)
        self.assertFalse(link.transport.disconnecting)

    def test_anything_received_postpones_the_probe(self) -> None:
        link = Link()
        link.clock.advance(50)
        link.receive(9999, b"<presence/>")
        link.clock.advance(59.9)
        self.assertNotIn(PROBE, [frame.body for frame in link.sent()])
        link.clock.advance(0.1)
        self.assertIn(PROBE, [frame.body for frame in link.sent()])

    def test_the_timers_end_with_the_link(self) -> None:
        link = Link()
        link.protocol.dataReceived(b"\0\0\xff\xff0001<x")  # a partial frame's timer too
        self.assertEqual(link.timers(), {"_send_keepalive", "_check_liveness",
                                         "_partial_expired"})
        link.protocol.connectionLost()
        self.assertEqual(link.clock.getDelayedCalls(), [])


class PartialFrameTests(SynchronousTestCase):
    HEADER = b"\0\0\xff\xff9999"  # announces 65,535 bytes

    def test_a_frame_left_incomplete_drops_the_link(self) -> None:
        link = Link()
        link.protocol.dataReceived(self.HEADER + b"<ablist")
        for _ in range(2):  # a trickle is no progress: only a completed frame is
            link.clock.advance(10)
            link.protocol.dataReceived(b" ")
        link.clock.advance(PARTIAL_FRAME_TIMEOUT - 20 - 0.1)
        self.assertFalse(link.transport.disconnecting)
        link.clock.advance(0.1)
        reason = link.dropped()
        self.assertIsInstance(reason, ProtocolViolation)
        self.assertEqual(str(reason), "a frame still incomplete after 30 s (17 of 65535 bytes)")

    def test_frames_that_keep_completing_are_not_cut(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("chunk", seen.append)
        body = b"<chunk>" + b"A" * 60_000 + b"</chunk>"
        frame = encode(9999, body)
        link.protocol.dataReceived(frame[:30_000])
        for _ in range(4):  # each read ends one frame and starts the next
            link.clock.advance(PARTIAL_FRAME_TIMEOUT - 1)
            link.protocol.dataReceived(frame[30_000:] + frame[:30_000])
        self.assertEqual(len(seen), 4)
        self.assertFalse(link.transport.disconnecting)

    def test_a_completed_frame_ends_the_wait(self) -> None:
        link = Link()
        frame = encode(9999, b"<presence/>")
        link.protocol.dataReceived(frame[:5])
        link.protocol.dataReceived(frame[5:])
        self.assertEqual(link.timers(), {"_send_keepalive", "_check_liveness"})


class BadFrameTests(SynchronousTestCase):
    def test_a_burst_of_unparseable_frames_drops_the_link(self) -> None:
        lines = capture_logs(self, "mxproxy.csta")
        link = Link()
        for _ in range(BAD_FRAME_LIMIT - 1):
            link.receive(9999, b"<broken")
            link.clock.advance(3)
        self.assertFalse(link.transport.disconnecting)
        link.receive(9999, b"<broken")
        reason = link.dropped()
        self.assertIsInstance(reason, ProtocolViolation)
        self.assertEqual(str(reason), "20 unparseable frames within 60 s")
        self.assertTrue(lines.pop(0).startswith("MX link 192.168.1.1:54321: skipping frame "
                                                "9999: malformed XML: "))
        self.assertEqual(lines, [
            "MX link 192.168.1.1:54321: 20 unparseable frames within 60 s; dropping the "
            "connection",
            "MX link 192.168.1.1:54321: unparseable frames: 19 more suppressed in 57 s"])

    def test_bad_frames_spread_out_are_skipped(self) -> None:
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("ok", seen.append)
        for _ in range(3 * BAD_FRAME_LIMIT):
            link.receive(9999, b"<broken")
            link.clock.advance(3.2)  # 19 within any minute
        link.receive(9999, b"<ok/>")
        self.assertEqual(len(seen), 1)
        self.assertFalse(link.transport.disconnecting)

    def test_a_flood_in_one_read_is_not_read_past_the_limit(self) -> None:
        lines = capture_logs(self, "mxproxy.csta")
        link = Link()
        seen: list[Message] = []
        link.protocol.subscribe("ok", seen.append)
        link.protocol.dataReceived(encode(9999, b"<broken") * 10_000 + encode(9999, b"<ok/>"))
        link.protocol.dataReceived(encode(9999, b"<ok/>"))
        self.assertEqual(seen, [])
        self.assertTrue(link.transport.disconnected)
        self.assertEqual(len(lines), 2)  # the first frame, the drop; the count comes at the end
        link.protocol.connectionLost()
        self.assertEqual(lines[-1], "MX link 192.168.1.1:54321: unparseable frames: 19 more "
                                    "suppressed in 0 s")

    def test_malformed_events_are_logged_once_a_minute(self) -> None:
        lines = capture_logs(self, "mxproxy.csta")
        link = Link()
        link.protocol.subscribe("AbAddUserEvent", self.unreadable)
        for _ in range(100):
            link.receive(9999, b"<AbAddUserEvent/>")
        self.assertEqual(len(lines), 1)
        link.clock.advance(60)
        link.receive(9999, b"<AbAddUserEvent/>")
        self.assertEqual(lines[1:], ["MX link 192.168.1.1:54321: malformed events: 99 more "
                                     "suppressed in 60 s", lines[0]])
        self.assertFalse(link.transport.disconnecting, "an event it cannot read is no "
                                                       "protocol violation")

    def unreadable(self, message: Message) -> None:
        from mxproxy.csta.xml import XMLError

        raise XMLError("no abentry")
