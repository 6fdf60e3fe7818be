"""Pushes and their monitors by role, in one process: an owner pushes, a standby stores
registrations and stays silent even when it monitors a user for its own API, a take-over starts
the monitors of every user with devices, a step-down stops them, a token change made
elsewhere reaches the owner's monitors, an answer through a standby is told to the owner before
the MX hears of it, and the owner's follow-up leaves the device told of out. The roles are set
by hand here; tests.test_ownership decides them, tests.test_ha runs the whole thing across
processes."""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mxproxy.monitors import CALLS
from mxproxy.roles import MXRole
from mxproxy.store import token_digest
from tests.support import Daemon
from tests.test_apns import BUNDLE
from tests.test_push import ALICE, CALLER, VOIP, PushTestCase, apns_token, fcm_token

ALICE_EXT = "3001"


class RolePushTests(PushTestCase):
    async def start_as(self, owner: bool,
                       teller: Callable[[str, int, str], Deferred[None]] | None = None) -> None:
        self.role = MXRole("dev", owner=owner, teller=teller)
        await self.start()

    async def daemon(self, link_clock: Clock | None = None) -> Daemon:
        return await Daemon(self, self.pbx, push=self.system, link_clock=link_clock,
                            metrics=self.metrics, role=self.role).start()

    def monitored(self, ext: str) -> bool:
        return bool(self.pbx.monitors_of(ext))

    async def rings_once(self) -> None:
        """A call to alice reaches her one device, once."""
        handled = self.handled("DeliveredEvent", ALICE_EXT)
        self.ring(CALLER, ALICE_EXT)
        await handled
        self.assertEqual([request.token for request in self.apns.received], [apns_token(1)])

    async def test_a_standby_stores_registrations_and_neither_monitors_nor_pushes(self) -> None:
        await self.start_as(owner=False)
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        self.assertEqual(len(await self.devices(self.alice)), 1)
        self.assertFalse(self.monitored(ALICE_EXT))
        # Monitored for the standby's own API (GET calls): the call is seen, never pushed.
        await self.d.calls.monitors.want(self.pbx.user("alice").jid, CALLS)
        handled = self.handled("DeliveredEvent", ALICE_EXT)
        self.ring(CALLER, ALICE_EXT)
        await handled
        self.assertEqual(len(self.d.calls.calls_of(self.pbx.user("alice").jid)), 1)
        self.assertEqual(self.apns.received, [])

    async def test_a_take_over_monitors_every_user_with_devices_and_pushes(self) -> None:
        await self.start_as(owner=False)
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        self.role.become(True, self.clock.seconds())
        await self.until(lambda: self.monitored(ALICE_EXT), "alice's monitor")
        await self.rings_once()

    async def test_a_step_down_stops_the_push_monitors_but_not_the_apis(self) -> None:
        await self.start_as(owner=True)
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        await self.token("POST", ("bob", "bob-secret"), "gfcm", BUNDLE, fcm_token("b"))
        await self.d.calls.monitors.want(self.pbx.user("bob").jid, CALLS)
        self.assertTrue(self.monitored(ALICE_EXT) and self.monitored("3002"))
        self.role.become(False, self.clock.seconds())
        await self.until(lambda: not self.monitored(ALICE_EXT), "alice's monitor to stop")
        self.assertTrue(self.monitored("3002"))  # bob's call routes still need it
        handled = self.handled("DeliveredEvent", "3002")
        self.ring(CALLER, "3002")
        await handled
        self.assertEqual(self.fcm.received, [])

    async def test_a_token_stored_elsewhere_reaches_the_owners_monitors(self) -> None:
        await self.start_as(owner=True)
        self.assertFalse(self.monitored(ALICE_EXT))
        # Another instance stores the device; the store's notification names alice.
        await self.system.store.register(self.alice, "apns", VOIP, False, apns_token(1))
        self.role.tokens_changed(self.alice)
        await self.until(lambda: self.monitored(ALICE_EXT), "alice's monitor")
        await self.rings_once()
        await self.system.store.remove("apns", VOIP, False, apns_token(1))
        self.role.tokens_changed(self.alice)
        await self.until(lambda: not self.monitored(ALICE_EXT), "alice's monitor to stop")

    async def test_an_answer_on_a_standby_is_told_to_the_owner_before_the_mx(self) -> None:
        told: list[tuple[str, int, str]] = []
        heard: Deferred[None] = Deferred()

        def teller(user: str, call_id: int, digest: str) -> Deferred[None]:
            told.append((user, call_id, digest))
            return heard

        await self.start_as(owner=False, teller=teller)
        call = self.ring(CALLER, ALICE_EXT)
        answering = Deferred.fromCoroutine(self.d.request(
            "POST", f"/calls/{call.call_id}/answer", ALICE,
            body=json.dumps({"device": "alice-softphone", "token": apns_token(2)}).encode(),
            headers={"Content-Type": "application/json"}))
        await self.until(lambda: told, "the word to the owner")
        self.assertEqual(told, [(self.alice, call.call_id, token_digest(apns_token(2)))])
        self.assertEqual(self.pbx.call(call.call_id).state, "alerting")  # not answered yet
        heard.callback(None)
        response, _ = await answering
        self.assertEqual((response.code, self.pbx.call(call.call_id).state),
                         (200, "established"))

    async def test_the_owner_leaves_a_device_answering_elsewhere_out_of_the_follow_up(
            self) -> None:
        await self.start_as(owner=True)
        await self.register("alice", "apns", BUNDLE, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        call = self.ring(CALLER, ALICE_EXT)
        await self.apns.wait_for(2)
        await self.dispatcher.settled()
        # As the lock connection hands it over: an APNs token is one device in either case.
        self.role.answered_elsewhere(self.alice, call.call_id,
                                     token_digest(apns_token(2).upper()))
        established = self.handled("EstablishedEvent")
        self.pbx.answer(call)
        await established
        await self.apns.wait_for(3)
        await self.dispatcher.settled()
        ended = self.apns.received[2]
        self.assertEqual((ended.token, ended.payload["reason"]),
                         (apns_token(1), "answeredElsewhere"))
        self.assertEqual(len(self.apns.received), 3)
