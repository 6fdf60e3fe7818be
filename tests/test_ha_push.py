"""Pushes and their monitors by role, in one process: an owner pushes, a standby stores
registrations and stays silent even when it monitors a user for its own API, a take-over starts
the monitors of every user with devices, a step-down stops them, and a token change made
elsewhere reaches the owner's monitors. The roles are set by hand here; tests.test_ownership
decides them, tests.test_ha runs the whole thing across processes."""

from __future__ import annotations

from twisted.internet.task import Clock

from mxproxy.monitors import CALLS
from mxproxy.ownership import MXRole
from tests.support import Daemon
from tests.test_apns import BUNDLE
from tests.test_push import ALICE, CALLER, VOIP, PushTestCase, apns_token, fcm_token

ALICE_EXT = "3001"


class RolePushTests(PushTestCase):
    async def start_as(self, owner: bool) -> None:
        self.role = MXRole("dev", owner=owner)
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
