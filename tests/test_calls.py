"""The call state: each event's step on typed events read from XML (unit), and the table of one
MX's users fed by monitors on the simulator over loopback, on a task.Clock of its own."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.calls import (
    CONNECTED,
    DIALING,
    FORGET_AFTER,
    HELD,
    INCOMING,
    MAX_CALLS_PER_USER,
    OUTGOING,
    RINGING,
    SWEEP_INTERVAL,
    Call,
    CallState,
    advance,
)
from mxproxy.config import MXConfig
from mxproxy.csta.events import CallEvent
from mxproxy.csta.messages import parse_event
from mxproxy.csta.xml import parse
from mxproxy.monitors import DEVICES
from mxproxy.mx import MXServer, SerialRegistry
from mxproxy.testing.mxsim import PBX
from tests.support import drop_sessions, next_turn, serve

ALICE = "3001"
CALLER = "+15555550100"
GLOBAL = "1234567890123456789"
BOOK = {"3002": "Bob Baker", "3003": "Carol Cole"}


def event(name: str, connection: str, call_id: int = 21, device: str = ALICE,
          global_id: str = "", **fields: str) -> CallEvent:
    """The typed event the MX's XML ``name`` reads as; a ``...Device``/``newDestination``
    field is a device reference."""
    parts = [f"<monitorCrossRefID>12</monitorCrossRefID><{connection}><callID>{call_id}</callID>"
             f"<deviceID>{device}</deviceID>"]
    if global_id:
        parts.append(f"<globalCallID>{global_id}</globalCallID>")
    parts.append(f"</{connection}>")
    for tag, value in fields.items():
        if tag.endswith("Device") or tag == "newDestination":
            parts.append(f"<{tag}><deviceIdentifier>{value}</deviceIdentifier></{tag}>")
        else:
            parts.append(f"<{tag}>{value}</{tag}>")
    typed = parse_event(parse(f"<{name}>{''.join(parts)}</{name}>".encode()))
    assert isinstance(typed, CallEvent)
    return typed


def delivered(calling: str, called: str, call_id: int = 21, **fields: str) -> CallEvent:
    return event("DeliveredEvent", "connection", call_id, called, GLOBAL,
                 alertingDevice=called, callingDevice=calling, calledDevice=called,
                 localConnectionInfo="alerting", cause="normal", **fields)


def established(calling: str, called: str, answering: str, call_id: int = 21,
                **fields: str) -> CallEvent:
    return event("EstablishedEvent", "establishedConnection", call_id, answering, GLOBAL,
                 answeringDevice=answering, callingDevice=calling, calledDevice=called, **fields)


def cleared(releasing: str, call_id: int = 21) -> CallEvent:
    return event("ConnectionClearedEvent", "droppedConnection", call_id, releasing,
                 releasingDevice=releasing, cause="normalClearing")


class Steps:
    """Feeds events to :func:`advance` as alice (extension 3001) at clock ``now``."""

    def __init__(self) -> None:
        self.call: Call | None = None
        self.now = 100.0

    def __call__(self, typed: CallEvent, at: float | None = None) -> Call | None:
        if at is not None:
            self.now = at
        self.call = advance(self.call, typed, ALICE, self.now, lambda number: BOOK.get(number, ""))
        return self.call


class AdvanceTests(SynchronousTestCase):
    def test_incoming_call_rings_then_connects_when_answered_here_then_ends(self) -> None:
        steps = Steps()
        ringing = steps(delivered(CALLER, ALICE, callingDisplayName="Carl Caller"))
        self.assertEqual(ringing, Call(21, RINGING, INCOMING, CALLER, "Carl Caller", 100.0,
                                       GLOBAL))
        self.assertEqual(steps(delivered(CALLER, ALICE), at=105.0), ringing,
                         "ringing again: the same call, ringing since the first event")
        connected = steps(established(CALLER, ALICE, ALICE), at=110.0)
        self.assertEqual(connected, Call(21, CONNECTED, INCOMING, CALLER, "Carl Caller", 110.0,
                                         GLOBAL))
        self.assertIsNone(steps(cleared(CALLER), at=150.0))

    def test_a_caller_without_a_display_name_is_named_from_the_address_book(self) -> None:
        call = Steps()(delivered("3002", ALICE))
        assert call is not None
        self.assertEqual((call.peer, call.peer_name), ("3002", "Bob Baker"))
        call = Steps()(delivered(CALLER, ALICE))
        assert call is not None
        self.assertIsNone(call.peer_name)

    def test_answered_elsewhere_is_gone_for_this_user(self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        self.assertIsNone(steps(established(CALLER, ALICE, "3002")))

    def test_an_answer_reported_on_the_connection_only_is_this_users(self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        answered = event("EstablishedEvent", "establishedConnection", 21, ALICE,
                         callingDevice=CALLER, calledDevice=ALICE)
        call = steps(answered)
        assert call is not None
        self.assertEqual((call.state, call.global_call_id), (CONNECTED, GLOBAL))

    def test_own_outgoing_call_dials_then_connects_with_whoever_answered(self) -> None:
        steps = Steps()
        dialing = steps(delivered(ALICE, "3002", alertingDisplayName="Bob B."))
        self.assertEqual(dialing, Call(21, DIALING, OUTGOING, "3002", "Bob B.", 100.0, GLOBAL))
        connected = steps(established(ALICE, "3002", "3003"), at=120.0)
        self.assertEqual(connected, Call(21, CONNECTED, OUTGOING, "3003", "Carol Cole", 120.0,
                                         GLOBAL))

    def test_originated_is_dialing_before_the_far_end_rings(self) -> None:
        steps = Steps()
        call = steps(event("OriginatedEvent", "originatedConnection", 25, ALICE,
                           callingDevice=ALICE, calledDevice="3002"))
        self.assertEqual(call, Call(25, DIALING, OUTGOING, "3002", "Bob Baker", 100.0, None))
        steps(delivered(ALICE, "3002", call_id=25), at=101.0)
        assert steps.call is not None
        self.assertEqual((steps.call.since, steps.call.global_call_id), (100.0, GLOBAL))

    def test_someone_elses_call_is_none_of_this_users(self) -> None:
        self.assertIsNone(Steps()(delivered(CALLER, "3002")))

    def test_hold_and_retrieve_by_this_user(self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        steps(established(CALLER, ALICE, ALICE))
        held = steps(event("HeldEvent", "heldConnection", holdingDevice=ALICE), at=130.0)
        assert held is not None
        self.assertEqual((held.state, held.since), (HELD, 130.0))
        retrieved = steps(event("RetrievedEvent", "retrievedConnection",
                                retrievingDevice=ALICE), at=140.0)
        assert retrieved is not None
        self.assertEqual((retrieved.state, retrieved.since), (CONNECTED, 140.0))

    def test_held_by_the_other_party_stays_connected(self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        connected = steps(established(CALLER, ALICE, ALICE))
        self.assertEqual(steps(event("HeldEvent", "heldConnection", device=CALLER,
                                     holdingDevice=CALLER)), connected)

    def test_diverted_away_from_this_user_is_gone(self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        self.assertIsNone(steps(event("DivertedEvent", "connection", divertingDevice=ALICE,
                                      newDestination="3500")))

    def test_diverted_far_end_of_an_outgoing_call_changes_the_peer(self) -> None:
        steps = Steps()
        steps(delivered(ALICE, "3002"))
        call = steps(event("DivertedEvent", "connection", device="3002",
                           divertingDevice="3002", newDestination="3003"))
        assert call is not None
        self.assertEqual((call.state, call.peer, call.peer_name),
                         (DIALING, "3003", "Carol Cole"))

    def test_transferred_by_this_user_is_gone_and_to_a_third_party_changes_the_peer(
            self) -> None:
        steps = Steps()
        steps(delivered(CALLER, ALICE))
        steps(established(CALLER, ALICE, ALICE))
        moved = steps(event("TransferedEvent", "primaryOldCall", transferringDevice=CALLER,
                            transferredToDevice="3003"))
        assert moved is not None
        self.assertEqual((moved.state, moved.peer), (CONNECTED, "3003"))
        self.assertIsNone(steps(event("TransferredEvent", "primaryOldCall",
                                      transferringDevice=ALICE, transferredToDevice="3002")))

    def test_an_event_without_a_step_changes_nothing(self) -> None:
        steps = Steps()
        ringing = steps(delivered(CALLER, ALICE))
        recording = event("RecordingStateEvent", "connection", RecIsAvailable="true",
                          RecIsActive="false")
        self.assertIs(steps(recording), ringing)

    def test_json_leaves_out_what_is_unknown(self) -> None:
        self.assertEqual(Call(3, RINGING, INCOMING, CALLER, None, 7.5, None).to_json(),
                         {"callId": 3, "state": "ringing", "direction": "incoming",
                          "peer": CALLER, "since": 7})
        self.assertEqual(Call(3, HELD, OUTGOING, "3002", "Bob", 7.0, GLOBAL).to_json(),
                         {"callId": 3, "state": "held", "direction": "outgoing",
                          "peer": "3002", "peerName": "Bob", "since": 7,
                          "globalCallId": GLOBAL})


def company() -> PBX:
    pbx = PBX(sn="TEST1")
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "a", "3001", first_name="Alice", last_name="Able")
    pbx.add_user("bob", "b", "3002", first_name="Bob")
    return pbx


class CallStateTests(TestCase):
    """Both users monitored (for ``devices``: no lease lapses as the clock moves); ``seen`` is
    what an observer got."""

    async def start(self) -> None:
        self.pbx = company()
        address = serve(self, self.pbx)
        self.link_clock = Clock()
        self.clock = Clock()
        self.clock.advance(1000)
        config = MXConfig(name="dev", host=address.host, port=address.port, login="server",
                          password="server-secret", tls=False)
        self.server = MXServer(config, reactor, SerialRegistry(), jitter=lambda: 0.0,
                               clock=self.link_clock)
        self.state = CallState(self.server, self.clock)
        self.seen: list[tuple[str, str, Call | None, Call | None]] = []
        self.state.on_call_event(lambda jid, typed, before, after: self.seen.append(
            (jid, type(typed).__name__, before, after)))
        self.server.startService()
        self.addCleanup(self.server.stopService)
        await self.server.when_ready()
        self.alice, self.bob = self.pbx.user("alice").jid, self.pbx.user("bob").jid
        await self.state.monitors.want(self.alice, DEVICES)
        await self.state.monitors.want(self.bob, DEVICES)

    async def events(self, count: int) -> None:
        """Until the observer has seen ``count`` events in all."""
        while len(self.seen) < count:
            await next_turn()

    def states(self, jid: str) -> list[tuple[int, str, str, str]]:
        return [(call.call_id, call.state, call.direction, call.peer)
                for call in self.state.calls_of(jid)]

    async def test_ring_answer_hang_up(self) -> None:
        await self.start()
        call = self.pbx.place_call(CALLER, "3001", calling_name="Carl Caller")
        await self.events(1)
        self.assertEqual(self.states(self.alice), [(call.call_id, RINGING, INCOMING, CALLER)])
        ringing = self.state.call(self.alice, call.call_id)
        assert ringing is not None
        self.assertEqual((ringing.peer_name, ringing.since, ringing.global_call_id),
                         ("Carl Caller", 1000.0, call.global_call_id))
        self.clock.advance(5)
        self.pbx.answer(call)
        await self.events(2)
        connected = self.state.call(self.alice, call.call_id)
        assert connected is not None
        self.assertEqual((connected.state, connected.since), (CONNECTED, 1005.0))
        self.pbx.hang_up(call)
        await self.events(3)
        self.assertEqual(self.state.calls_of(self.alice), [])
        self.assertIsNone(self.state.call(self.alice, call.call_id))
        self.assertEqual([(jid, name, before is None, after is None)
                          for jid, name, before, after in self.seen],
                         [(self.alice, "Delivered", True, False),
                          (self.alice, "Established", False, False),
                          (self.alice, "ConnectionCleared", False, True)])
        self.assertEqual(self.seen[1][2:], (ringing, connected))

    async def test_a_call_between_two_users_as_each_sees_it(self) -> None:
        await self.start()
        call = self.pbx.place_call("3001", "3002")
        await self.events(2)
        self.assertEqual(self.states(self.alice), [(call.call_id, DIALING, OUTGOING, "3002")])
        self.assertEqual(self.states(self.bob), [(call.call_id, RINGING, INCOMING, "3001")])
        [bobs] = self.state.calls_of(self.bob)
        self.assertEqual(bobs.peer_name, "Alice Able")
        self.pbx.answer(call)
        await self.events(4)
        self.assertEqual(self.states(self.alice), [(call.call_id, CONNECTED, OUTGOING, "3002")])
        self.assertEqual(self.states(self.bob), [(call.call_id, CONNECTED, INCOMING, "3001")])
        self.pbx.hang_up(call)
        await self.events(6)
        self.assertEqual((self.states(self.alice), self.states(self.bob)), ([], []))

    async def test_a_peer_who_transfers_leaves_this_user_dialing_the_new_party(self) -> None:
        """bob calls alice and, connected, transfers her to an outside number: the MX's
        DeliveredEvent for that number still names alice's extension as the called device;
        alice's call is not ringing at her, she waits for the number to answer."""
        await self.start()
        call = self.pbx.place_call("3002", "3001")
        self.pbx.answer(call)
        await self.events(4)
        before = len(self.seen)
        self.pbx.transfer(call, "3002", CALLER)
        while (self.alice, "Delivered") not in [seen[:2] for seen in self.seen[before:]]:
            await next_turn()
        self.assertEqual(self.states(self.alice), [(call.call_id, DIALING, OUTGOING, CALLER)])
        self.assertEqual(self.states(self.bob), [])

    async def test_answered_at_another_extension_leaves_this_users_calls(self) -> None:
        await self.start()
        call = self.pbx.place_call(CALLER, "3001")
        await self.events(1)
        self.pbx.answer(call, device="3002")
        await self.events(3)
        self.assertEqual(self.states(self.alice), [])
        self.assertEqual(self.states(self.bob), [(call.call_id, CONNECTED, INCOMING, CALLER)])
        [(_, name, before, after)] = [seen for seen in self.seen if seen[0] == self.alice][1:]
        self.assertEqual((name, before is not None and before.state, after),
                         ("Established", RINGING, None))

    async def test_the_link_going_down_empties_the_table(self) -> None:
        await self.start()
        self.pbx.place_call(CALLER, "3001")
        await self.events(1)
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        self.assertEqual(self.state.calls_of(self.alice), [])
        self.assertEqual(len(self.seen), 1, "the observers are not told call by call")
        self.assertEqual(len(self.state.monitors), 0)

    async def test_a_call_without_events_for_an_hour_is_dropped(self) -> None:
        await self.start()
        stale = self.pbx.place_call(CALLER, "3001")
        await self.events(1)
        self.clock.advance(FORGET_AFTER - SWEEP_INTERVAL)
        fresh = self.pbx.place_call(CALLER, "3001")
        await self.events(2)
        self.clock.advance(SWEEP_INTERVAL + 1)
        self.assertEqual([call.call_id for call in self.state.calls_of(self.alice)],
                         [fresh.call_id])
        self.assertIsNone(self.state.call(self.alice, stale.call_id))

    async def test_a_user_keeps_a_bounded_number_of_calls(self) -> None:
        await self.start()
        calls = []
        for n in range(MAX_CALLS_PER_USER + 1):
            calls.append(self.pbx.place_call(CALLER, "3001"))
            await self.events(n + 1)
            self.clock.advance(1)
        kept = [call.call_id for call in self.state.calls_of(self.alice)]
        self.assertEqual(kept, [call.call_id for call in calls[1:]])
