"""The call-control conversations: on an in-memory link with a driven clock (what is sent,
what confirms it, what refuses it, time-outs), then on real loopback sockets against the
simulator, with user sessions opened as the proxy opens them."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy import callcontrol
from mxproxy.callcontrol import Answered
from mxproxy.csta.client import CSTAFactory, open_session
from mxproxy.csta.errors import (
    CallStateError,
    CSTAError,
    DeviceNotAssigned,
    MXTimeout,
    MXUnavailable,
    UnknownCall,
)
from mxproxy.csta.events import ConnectionCleared, Held, Retrieved
from mxproxy.csta.frame import EVENT_ID, Frame, FrameDecoder, encode
from mxproxy.csta.messages import TransferResult
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.sessions import UserSession
from tests.support import close_on_cleanup, serve
from tests.test_api import company

T = TypeVar("T")
CALLER = "+12125550142"


def cleared(call_id: int, cause: str = "normalClearing") -> bytes:
    return (b"<ConnectionClearedEvent><monitorCrossRefID>1</monitorCrossRefID><droppedConnection>"
            b"<callID>%d</callID><deviceID>3001</deviceID></droppedConnection><releasingDevice>"
            b"<deviceIdentifier>3001</deviceIdentifier></releasingDevice><cause>%s</cause>"
            b"</ConnectionClearedEvent>" % (call_id, cause.encode()))


def assigned(name: bytes) -> bytes:
    return b"<AssignDeviceInfo><deviceID>" + name + b"</deviceID></AssignDeviceInfo>"


class FastTransport(StringTransport):
    """An MX that answers within the write: ``answers`` are delivered as soon as a frame is
    written, so a wait registered after writing would miss them."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: CSTAProtocol | None = None
        self.answers: list[tuple[int, bytes]] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        answers, self.answers = self.answers, []
        for invoke_id, body in answers:
            assert self.protocol is not None
            self.protocol.dataReceived(encode(invoke_id, body))


class ConversationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = CSTAProtocol(self.clock)
        self.transport = FastTransport()
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.decoder = FrameDecoder()
        self.timers = len(self.clock.getDelayedCalls())  # the link's own keep-alive

    def start(self, coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        return Deferred.fromCoroutine(coroutine)

    def sent(self) -> list[Frame]:
        frames = self.decoder.feed(self.transport.value())
        self.transport.clear()
        return frames

    def receive(self, body: bytes, invoke_id: int = EVENT_ID) -> None:
        self.protocol.dataReceived(encode(invoke_id, body))

    def assertNoTimerLeft(self) -> None:
        self.assertEqual(len(self.clock.getDelayedCalls()), self.timers)

    # -- answer ------------------------------------------------------------------------------

    def test_answer_binds_the_device_then_answers_at_the_extension(self) -> None:
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "alice-softphone"))
        (assign,) = self.sent()
        self.assertEqual(assign.body, b'<AssignDevice><deviceID type="device">alice-softphone'
                                      b"</deviceID></AssignDevice>")
        self.receive(assigned(b"alice-softphone"))
        (answer,) = self.sent()
        self.assertEqual(answer.body, b"<AnswerCall><callToBeAnswered><callID>21</callID>"
                                      b"<deviceID>3001</deviceID></callToBeAnswered></AnswerCall>")
        self.assertNoResult(result)
        self.receive(b"<AnswerCallResponse/>", answer.invoke_id)
        self.assertEqual(self.successResultOf(result), Answered(21, "alice-softphone"))
        self.assertNoTimerLeft()

    def test_a_fast_assign_device_info_is_not_missed(self) -> None:
        self.transport.answers = [(EVENT_ID, assigned(b"alice-softphone"))]
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "alice-softphone"))
        assign, answer = self.sent()
        self.receive(b"<AnswerCallResponse/>", answer.invoke_id)
        self.assertEqual(self.successResultOf(result).device, "alice-softphone")

    def test_another_device_named_is_a_refusal_and_nothing_is_answered(self) -> None:
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "alice-softphone"))
        self.sent()
        self.receive(assigned(b"3001"))
        failure = self.failureResultOf(result, DeviceNotAssigned)
        self.assertIn("'alice-softphone'", str(failure.value))
        self.assertIn("'3001'", str(failure.value))
        self.assertEqual(self.sent(), [])
        self.assertNoTimerLeft()

    def test_a_refused_assign_device_fails_at_once(self) -> None:
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "alice-softphone"))
        (assign,) = self.sent()
        self.receive(b"<CSTAErrorCode><privateErrorCode>URM Denied</privateErrorCode>"
                     b"</CSTAErrorCode>", assign.invoke_id + 1)  # another request's refusal
        self.assertNoResult(result)
        self.receive(b"<CSTAErrorCode><privateErrorCode>no SIP license</privateErrorCode>"
                     b"</CSTAErrorCode>", assign.invoke_id)
        self.assertEqual(self.failureResultOf(result, CSTAError).value.text, "no SIP license")
        self.assertNoTimerLeft()

    def test_an_answer_refused_for_the_call_state(self) -> None:
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "alice-softphone"))
        self.sent()
        self.receive(assigned(b"alice-softphone"))
        (answer,) = self.sent()
        self.receive(b"<CSTAErrorCode><stateIncompatibility>noCallToAnswer</stateIncompatibility>"
                     b"<privateErrorCode>call 21 is not ringing at 3001</privateErrorCode>"
                     b"</CSTAErrorCode>", answer.invoke_id)
        failure = self.failureResultOf(result, CallStateError)
        self.assertEqual(failure.value.text, "call 21 is not ringing at 3001")

    def test_each_step_is_bounded(self) -> None:
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "d", timeout=3))
        self.clock.advance(2.9)
        self.assertNoResult(result)
        self.clock.advance(0.1)
        self.assertIn("AssignDeviceInfo", str(self.failureResultOf(result, MXTimeout).value))
        self.assertNoTimerLeft()
        result = self.start(callcontrol.answer(self.protocol, 21, "3001", "d", timeout=3))
        self.receive(assigned(b"d"))
        self.clock.advance(3)
        self.failureResultOf(result, MXTimeout)
        self.assertNoTimerLeft()

    # -- hang up, hold, retrieve -------------------------------------------------------------

    def test_hang_up_waits_for_the_clearing_of_that_call(self) -> None:
        result = self.start(callcontrol.hang_up(self.protocol, 21, "3001"))
        (clear,) = self.sent()
        self.assertEqual(clear.body, b"<ClearConnection><connectionToBeCleared><callID>21"
                                     b"</callID><deviceID>3001</deviceID></connectionToBeCleared>"
                                     b"</ClearConnection>")
        self.receive(b"<ClearConnectionResponse/>", clear.invoke_id)  # not the confirmation
        self.receive(cleared(20))  # another call
        self.assertNoResult(result)
        self.receive(cleared(21, "normalClearing"))
        event = self.successResultOf(result)
        self.assertEqual((type(event), event.call_id, event.cause),
                         (ConnectionCleared, 21, "normalClearing"))
        self.assertNoTimerLeft()

    def test_a_fast_clearing_is_not_missed(self) -> None:
        self.transport.answers = [(EVENT_ID, cleared(21))]
        result = self.start(callcontrol.hang_up(self.protocol, 21, "3001"))
        self.assertEqual(self.successResultOf(result).call_id, 21)

    def test_hang_up_of_an_unknown_call(self) -> None:
        result = self.start(callcontrol.hang_up(self.protocol, 77, "3001"))
        (clear,) = self.sent()
        self.receive(b"<CSTAErrorCode><operation>invalidCallID</operation><privateErrorCode>"
                     b"no call 77</privateErrorCode></CSTAErrorCode>", clear.invoke_id)
        self.assertEqual(self.failureResultOf(result, UnknownCall).value.text, "no call 77")
        self.assertNoTimerLeft()

    def test_hang_up_unconfirmed(self) -> None:
        result = self.start(callcontrol.hang_up(self.protocol, 21, "3001"))
        self.clock.advance(callcontrol.TIMEOUT)
        failure = self.failureResultOf(result, MXTimeout)
        self.assertIn("ConnectionClearedEvent", str(failure.value))
        self.assertNoTimerLeft()

    def test_hold_and_retrieve(self) -> None:
        held = self.start(callcontrol.hold(self.protocol, 21, "3001"))
        (hold,) = self.sent()
        self.assertEqual(hold.body, b"<HoldCall><callToBeHeld><callID>21</callID><deviceID>3001"
                                    b"</deviceID></callToBeHeld></HoldCall>")
        self.receive(b"<HeldEvent><heldConnection><callID>20</callID></heldConnection>"
                     b"</HeldEvent>")
        self.assertNoResult(held)
        self.receive(b"<HeldEvent><heldConnection><callID>21</callID><deviceID>3001</deviceID>"
                     b"</heldConnection><localConnectionInfo>hold</localConnectionInfo>"
                     b"</HeldEvent>")
        self.assertEqual(self.successResultOf(held),
                         Held(call_id=21, device_id="3001", local_connection_info="hold"))
        retrieved = self.start(callcontrol.retrieve(self.protocol, 21, "3001"))
        (retrieve,) = self.sent()
        self.assertIn(b"<RetrieveCall><callToBeRetrieved><callID>21</callID>", retrieve.body)
        self.receive(b"<CSTAErrorCode><stateIncompatibility>noHeldCall</stateIncompatibility>"
                     b"</CSTAErrorCode>", retrieve.invoke_id)
        self.failureResultOf(retrieved, CallStateError)
        retrieved = self.start(callcontrol.retrieve(self.protocol, 21, "3001"))
        self.sent()
        self.receive(b"<RetrievedEvent><retrievedConnection><callID>21</callID>"
                     b"</retrievedConnection></RetrievedEvent>")
        self.assertIsInstance(self.successResultOf(retrieved), Retrieved)
        self.assertNoTimerLeft()

    def test_a_lost_link_ends_the_wait(self) -> None:
        result = self.start(callcontrol.hold(self.protocol, 21, "3001"))
        self.protocol.connectionLost()
        self.failureResultOf(result, MXUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_forgets_both_waits(self) -> None:
        result = self.start(callcontrol.hold(self.protocol, 21, "3001"))
        result.cancel()
        self.failureResultOf(result)
        self.assertNoTimerLeft()
        self.receive(b"<HeldEvent><heldConnection><callID>21</callID></heldConnection>"
                     b"</HeldEvent>")  # nobody waits any more

    # -- transfer, deflect, mode -------------------------------------------------------------

    def test_transfer_and_deflect_are_confirmed_by_their_replies(self) -> None:
        transferred = self.start(callcontrol.transfer(self.protocol, 21, "3001", "3002"))
        (transfer,) = self.sent()
        self.assertEqual(transfer.body, b"<SingleStepTransferCall><activeCall><callID>21</callID>"
                                        b"<deviceID>3001</deviceID></activeCall><transferredTo>"
                                        b"3002</transferredTo></SingleStepTransferCall>")
        self.receive(b"<SingleStepTransferCallResponse><transferredCall><callID>21</callID>"
                     b"<deviceID>3002</deviceID></transferredCall>"
                     b"</SingleStepTransferCallResponse>", transfer.invoke_id)
        self.assertEqual(self.successResultOf(transferred), TransferResult(21, "3002"))
        deflected = self.start(callcontrol.deflect(self.protocol, 21, "3001", "*86"))
        (deflect,) = self.sent()
        self.assertIn(b"<newDestination>*86</newDestination>", deflect.body)
        self.receive(b"<DeflectCallResponse/>", deflect.invoke_id)
        self.assertIsNone(self.successResultOf(deflected))
        self.assertNoTimerLeft()

    # -- recording ---------------------------------------------------------------------------

    def test_recording_is_confirmed_by_its_replies(self) -> None:
        started = self.start(callcontrol.start_recording(self.protocol, 25, "3001"))
        (start,) = self.sent()
        self.assertEqual(start.body, b"<StartRecording><Call><callID>25</callID><deviceID>3001"
                                     b"</deviceID></Call></StartRecording>")
        self.receive(b"<StartRecordingResponse/>", start.invoke_id)
        self.assertIsNone(self.successResultOf(started))
        stopped = self.start(callcontrol.stop_recording(self.protocol, 25, "3001"))
        (stop,) = self.sent()
        self.assertTrue(stop.body.startswith(b"<StopRecording><Call><callID>25</callID>"))
        self.receive(b"<StopRecordingResponse/>", stop.invoke_id)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertNoTimerLeft()

    def test_recording_refusals_are_typed(self) -> None:
        for conversation, refusal, kind in (
                (callcontrol.start_recording, b"<operation>invalidCallID</operation>",
                 UnknownCall),
                (callcontrol.stop_recording,
                 b"<stateIncompatibility>invalidObjectState</stateIncompatibility>",
                 CallStateError)):
            result = self.start(conversation(self.protocol, 25, "3001"))
            (sent,) = self.sent()
            self.receive(b"<CSTAErrorCode>" + refusal + b"</CSTAErrorCode>", sent.invoke_id)
            self.failureResultOf(result, kind)
        self.assertNoTimerLeft()

    def test_recording_unconfirmed_times_out(self) -> None:
        result = self.start(callcontrol.start_recording(self.protocol, 25, "3001", timeout=2))
        self.clock.advance(2)
        self.failureResultOf(result, MXTimeout)

    def test_set_mode_is_sent_and_not_awaited(self) -> None:
        callcontrol.set_mode(self.protocol, "local")
        (mode,) = self.sent()
        self.assertEqual(mode.body, b'<iq type="set" id="mode" mode="local" ringdelay="1" '
                                    b'vmdelay="30"/>')
        self.assertNoTimerLeft()


class SimulatorTests(TestCase):
    """Real loopback sockets, the simulator, and user sessions that monitor their own
    extension, as the API's routes will run them."""

    def setUp(self) -> None:
        self.pbx = company()
        self.address = serve(self, self.pbx)

    async def session(self, login: str = "alice", clock: Any = None) -> UserSession:
        protocol, info = await open_session(reactor, self.address,
                                            CSTAFactory(clock or reactor), login,
                                            f"{login}-secret")
        close_on_cleanup(self, protocol)
        session = UserSession(protocol, info, login)
        await session.ensure_monitor()
        return session

    async def test_walk_through(self) -> None:
        """Ring alice, answer on her soft phone, hold, retrieve, transfer to bob, who sends it
        to voicemail."""
        alice, bob = await self.session(), await self.session("bob")
        call = self.pbx.place_call(CALLER, "3001")
        answered = await callcontrol.answer(alice.protocol, call.call_id, "3001",
                                            "alice-softphone")
        self.assertEqual((answered, call.state, call.answered_on),
                         (Answered(call.call_id, "alice-softphone"), "established",
                          "alice-softphone"))
        held = await callcontrol.hold(alice.protocol, call.call_id, "3001")
        self.assertEqual((held.holding_device, call.state), ("3001", "held"))
        await callcontrol.retrieve(alice.protocol, call.call_id, "3001")
        self.assertEqual(call.state, "established")
        moved = await callcontrol.transfer(alice.protocol, call.call_id, "3001", "3002")
        self.assertEqual((moved, call.state, call.callee),
                         (TransferResult(call.call_id, "3002"), "alerting", "3002"))
        await callcontrol.deflect(bob.protocol, call.call_id, "3002", "*86")
        self.assertEqual(self.pbx.calls, {})

    async def test_two_answers_at_once_one_wins(self) -> None:
        first, second = await self.session(), await self.session()
        call = self.pbx.place_call(CALLER, "3001")
        answers = [Deferred.fromCoroutine(callcontrol.answer(
            session.protocol, call.call_id, "3001", "alice-softphone"))
            for session in (first, second)]
        outcomes = []
        for answer in answers:
            try:
                outcomes.append(await answer)
            except CallStateError as error:
                outcomes.append(error)
        winners = [o for o in outcomes if isinstance(o, Answered)]
        losers = [o for o in outcomes if isinstance(o, CallStateError)]
        self.assertEqual((len(winners), len(losers)), (1, 1))
        self.assertIn("not ringing", losers[0].text)
        self.assertEqual(call.state, "established")

    async def test_hold_of_a_ringing_call_is_a_call_state_error(self) -> None:
        alice = await self.session()
        call = self.pbx.place_call(CALLER, "3001")
        with self.assertRaises(CallStateError):
            await callcontrol.hold(alice.protocol, call.call_id, "3001")
        self.assertEqual(call.state, "alerting")

    async def test_hang_up_of_an_unknown_call(self) -> None:
        alice = await self.session()
        with self.assertRaises(UnknownCall):
            await callcontrol.hang_up(alice.protocol, 404, "3001")
        self.assertTrue(alice.up)

    async def test_hang_up_is_confirmed_by_the_clearing(self) -> None:
        alice = await self.session()
        call = self.pbx.place_call(CALLER, "3001")
        event = await callcontrol.hang_up(alice.protocol, call.call_id, "3001")
        self.assertEqual((event.call_id, event.releasing_device, event.cause),
                         (call.call_id, "3001", "normalClearing"))
        self.assertTrue(self.pbx.user("alice").call_log[0].missed)

    async def test_a_device_not_the_users_is_refused_by_name(self) -> None:
        alice = await self.session()
        call = self.pbx.place_call(CALLER, "3001")
        with self.assertRaises(DeviceNotAssigned):
            await callcontrol.answer(alice.protocol, call.call_id, "3001", "bob-softphone")
        self.assertEqual(call.state, "alerting")

    async def test_recording_over_loopback(self) -> None:
        """Start and stop on a connected call: the recording lands in alice's recordings; a
        stop without a recording, and a start on a call that rings, are CallStateErrors."""
        alice = await self.session()
        ringing = self.pbx.place_call(CALLER, "3001")
        with self.assertRaises(CallStateError):
            await callcontrol.start_recording(alice.protocol, ringing.call_id, "3001")
        await callcontrol.answer(alice.protocol, ringing.call_id, "3001", "alice-softphone")
        with self.assertRaises(CallStateError):
            await callcontrol.stop_recording(alice.protocol, ringing.call_id, "3001")
        await callcontrol.start_recording(alice.protocol, ringing.call_id, "3001")
        self.assertEqual(list(ringing.recordings), ["3001"])
        await callcontrol.stop_recording(alice.protocol, ringing.call_id, "3001")
        (recording,) = self.pbx.user("alice").recordings.values()
        self.assertEqual((recording.media_type, recording.from_number), ("Recording", CALLER))
        with self.assertRaises(UnknownCall):
            await callcontrol.start_recording(alice.protocol, 404, "3001")

    async def test_an_mx_that_does_not_answer(self) -> None:
        clock = Clock()
        alice = await self.session(clock=clock)
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.faults.no_reply = {"HoldCall", "AssignDevice"}
        for command, conversation in (
                ("AssignDevice", callcontrol.answer(alice.protocol, call.call_id, "3001",
                                                    "alice-softphone")),
                ("HoldCall", callcontrol.hold(alice.protocol, call.call_id, "3001"))):
            seen = self.pbx.wait_for(command)
            pending = Deferred.fromCoroutine(conversation)
            await seen
            clock.advance(callcontrol.TIMEOUT)
            with self.assertRaises(MXTimeout):
                await pending
        self.assertTrue(alice.up)
