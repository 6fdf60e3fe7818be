"""What feeds the event hub: the data of call and contact events (unit), and the call state,
address book and link of an MX on the simulator over loopback feeding a hub on a task.Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.calls import CONNECTED, HELD, INCOMING, RINGING, Call, CallState
from mxproxy.config import MXConfig
from mxproxy.csta.messages import Contact as BookContact
from mxproxy.events import KEEPALIVE, REPLAY_SECONDS, EventHub
from mxproxy.eventsources import call_change, contact_change, feed
from mxproxy.monitors import STREAM
from mxproxy.mx import MXServer, SerialRegistry
from mxproxy.testing.mxsim.model import Contact
from tests.support import drop_sessions, next_turn, serve
from tests.test_api import company
from tests.test_calls import CALLER, GLOBAL, cleared, delivered, established, event
from tests.test_events import Client

RINGING_CALL = Call(21, RINGING, INCOMING, CALLER, "Carl Caller", 100.0, GLOBAL)


class CallChangeTests(SynchronousTestCase):
    def test_a_new_state_is_the_call_with_what_happened(self) -> None:
        self.assertEqual(call_change(delivered(CALLER, "3001"), None, RINGING_CALL),
                         {**RINGING_CALL.to_json(), "event": "ringing"})
        connected = Call(21, CONNECTED, INCOMING, CALLER, "Carl Caller", 105.0, GLOBAL)
        self.assertEqual(call_change(established(CALLER, "3001", "3001"), RINGING_CALL,
                                     connected)["event"], "connected")

    def test_retrieved_transferred_and_diverted_say_so(self) -> None:
        held = Call(21, HELD, INCOMING, CALLER, None, 100.0)
        connected = Call(21, CONNECTED, INCOMING, CALLER, None, 110.0)
        retrieved = event("RetrievedEvent", "retrievedConnection", retrievingDevice="3001")
        self.assertEqual(call_change(retrieved, held, connected)["event"], "retrieved")
        moved = Call(21, CONNECTED, INCOMING, "3003", None, 110.0)
        transferred = event("TransferedEvent", "primaryOldCall", transferringDevice=CALLER,
                            transferredToDevice="3003")
        self.assertEqual(call_change(transferred, connected, moved)["event"], "transferred")
        diverted = event("DivertedEvent", "connection", divertingDevice="3002",
                         newDestination="3003")
        self.assertEqual(call_change(diverted, connected, moved)["event"], "diverted")

    def test_an_end_says_its_cause(self) -> None:
        self.assertEqual(call_change(cleared(CALLER), RINGING_CALL, None),
                         {"callId": 21, "event": "ended", "state": "ended",
                          "cause": "normalClearing", "globalCallId": GLOBAL})
        answered = established(CALLER, "3001", "3002")
        self.assertEqual(call_change(answered, RINGING_CALL, None)["cause"], "answeredElsewhere")
        without_cause = event("ConnectionClearedEvent", "droppedConnection")
        self.assertEqual(call_change(without_cause, RINGING_CALL, None)["cause"], "ended")

    def test_nothing_changed_is_no_event(self) -> None:
        self.assertIsNone(call_change(cleared(CALLER), None, None))
        self.assertIsNone(call_change(delivered(CALLER, "3001"), RINGING_CALL, RINGING_CALL))


class ContactChangeTests(SynchronousTestCase):
    def test_added_changed_removed(self) -> None:
        before = BookContact(jid="7", first_name="Ann", ext="3007")
        after = BookContact(jid="7", first_name="Anne", ext="3007")
        self.assertEqual(contact_change(None, before), {"jid": "7", "change": "added",
                                                        "contact": before.to_json()})
        self.assertEqual(contact_change(before, after)["change"], "changed")
        self.assertEqual(contact_change(before, None), {"jid": "7", "change": "removed"})
        self.assertIsNone(contact_change(before, before))


class FeedTests(TestCase):
    """Alice (3001) and Bob (3002) on the simulator; streams are :class:`Client` s of a hub on
    its own clock."""

    async def start(self) -> None:
        self.pbx = company()
        address = serve(self, self.pbx)
        self.link_clock = Clock()
        self.clock = Clock()
        config = MXConfig(name="dev", host=address.host, port=address.port, login="server",
                          password="server-secret", tls=False)
        self.server = MXServer(config, reactor, SerialRegistry(), jitter=lambda: 0.0,
                               clock=self.link_clock)
        self.calls = CallState(self.server, self.clock)
        self.hub = EventHub(self.clock)
        feed(self.hub, self.server, self.calls)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.addCleanup(self.hub.stopService)
        await self.server.when_ready()
        self.alice, self.bob = self.pbx.user("alice").jid, self.pbx.user("bob").jid

    async def follow(self, jid: str) -> Client:
        """A stream of ``jid``, once their call monitor runs."""
        client = Client(self.hub, jid)
        while self.calls.monitors.monitored(jid) is None:
            await next_turn()
        return client

    async def received(self, client: Client, count: int) -> list[tuple[str, Any]]:
        """(kind, data) of the client's events, once it has ``count``."""
        while len(client.events()) < count:
            await next_turn()
        return [(kind, data) for kind, _, data in client.events()]

    def happened(self, events: list[tuple[str, Any]]) -> list[tuple[str, str]]:
        return [(data["event"], data["state"]) for kind, data in events if kind == "call"]

    async def test_a_followed_users_calls_are_monitored_until_the_hub_lets_go(self) -> None:
        await self.start()
        client = await self.follow(self.alice)
        self.assertEqual(self.calls.monitors.reasons(self.alice), {STREAM})
        client.subscriber.close()
        stopped = self.pbx.wait_for("MonitorStop")
        self.clock.advance(REPLAY_SECONDS + KEEPALIVE)
        await stopped
        self.assertIsNone(self.calls.monitors.monitored(self.alice))
        self.assertEqual(self.calls.monitors.reasons(self.alice), frozenset())

    async def test_every_change_of_a_call_in_order(self) -> None:
        await self.start()
        alice = await self.follow(self.alice)
        call = self.pbx.place_call(CALLER, "3001", calling_name="Carl Caller")
        [(kind, ringing)] = await self.received(alice, 1)
        self.assertEqual((kind, ringing), ("call", {
            "callId": call.call_id, "state": "ringing", "direction": "incoming",
            "peer": CALLER, "peerName": "Carl Caller", "since": 0,
            "globalCallId": call.global_call_id, "event": "ringing"}))
        self.pbx.answer(call)
        self.pbx.hold(call, "3001")
        self.pbx.retrieve(call, "3001")
        self.pbx.hang_up(call)
        events = await self.received(alice, 5)
        self.assertEqual(self.happened(events), [
            ("ringing", "ringing"), ("connected", "connected"), ("held", "held"),
            ("retrieved", "connected"), ("ended", "ended")])
        self.assertEqual(events[-1][1]["cause"], "normalClearing")

    async def test_a_transferred_call(self) -> None:
        await self.start()
        alice = await self.follow(self.alice)
        call = self.pbx.place_call("3002", "3001")
        self.pbx.answer(call)
        self.pbx.transfer(call, "3002", "4000")  # Bob hands Alice on to Big
        events = await self.received(alice, 3)
        self.assertEqual(self.happened(events[:3]), [
            ("ringing", "ringing"), ("connected", "connected"), ("transferred", "connected")])
        self.assertEqual((events[2][1]["peer"], events[2][1]["peerName"]), ("4000", "Big"))

    async def test_a_diverted_call(self) -> None:
        await self.start()
        alice = await self.follow(self.alice)
        call = self.pbx.place_call("3001", "3002")
        self.pbx.deflect(call, "3002", "+15555550199")  # Bob sends Alice's call on
        events = await self.received(alice, 2)
        self.assertEqual(self.happened(events), [("dialing", "dialing"),
                                                 ("diverted", "dialing")])
        self.assertEqual(events[1][1]["peer"], "+15555550199")

    async def test_a_call_answered_elsewhere_ends_for_this_user(self) -> None:
        await self.start()
        alice = await self.follow(self.alice)
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.answer(call, device="3002")
        events = await self.received(alice, 2)
        self.assertEqual(events[1][1], {"callId": call.call_id, "event": "ended",
                                        "state": "ended", "cause": "answeredElsewhere",
                                        "globalCallId": call.global_call_id})

    async def test_address_book_changes_reach_every_followed_user(self) -> None:
        await self.start()
        alice, bob = await self.follow(self.alice), await self.follow(self.bob)
        added = self.pbx.add_contact(Contact(jid="", first_name="Dee", business_phone="3009"))
        self.pbx.update_contact(added.jid, last_name="Day")
        self.pbx.remove_contact(added.jid)
        for client in (alice, bob):
            events = await self.received(client, 3)
            self.assertEqual([(kind, data["jid"], data["change"]) for kind, data in events],
                             [("contact", added.jid, "added"), ("contact", added.jid, "changed"),
                              ("contact", added.jid, "removed")])
            self.assertEqual(events[1][1]["contact"],
                             {"firstName": "Dee", "lastName": "Day", "ext": "3009"})

    async def test_the_link_going_down_and_up_then_calls_again(self) -> None:
        await self.start()
        alice = await self.follow(self.alice)
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        self.assertEqual(await self.received(alice, 1), [("link", {"state": "down"})])
        started = self.pbx.wait_for("MonitorStart")
        self.link_clock.advance(1)
        await self.server.when_ready()
        await started
        while self.calls.monitors.monitored(self.alice) is None:
            await next_turn()
        self.pbx.place_call(CALLER, "3001")
        events = await self.received(alice, 3)
        self.assertEqual(events[1], ("link", {"state": "up"}))
        self.assertEqual(self.happened(events), [("ringing", "ringing")])
