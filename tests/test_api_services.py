"""GET services over loopback against the simulator: the list, its 10-minute cache, and a
failed fetch that is not kept."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mxproxy.testing.mxsim.model import Service
from mxproxy.testing.mxsim.pbx import SYSTEM_JID
from tests.test_api import APITestCase, loads


class ServicesTests(APITestCase):
    async def test_the_list_kept_ten_minutes(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        response, body = await self.get("/services")
        self.assertEqual(response.code, 200, body)
        services = loads(body)["services"]
        self.assertEqual(services, [{"id": str(s.service_id), "name": s.name,
                                     "type": s.service_type, "ext": s.extension}
                                    for s in self.pbx.services])
        self.assertIn({"id": "3458764513956069001", "name": "voicemail", "type": "VM",
                       "ext": "*86"}, services)
        # An administrator adds a service: the MX's answer changes, the kept one does not yet.
        self.pbx.services.append(Service(3458764513956069004, "Hunt Group", "AdvancedACD",
                                         "3960", SYSTEM_JID))
        clock.advance(599)
        response, again = await self.get("/services", auth=("bob", "bob-secret"))
        self.assertEqual((response.code, again), (200, body))
        clock.advance(1)
        response, body = await self.get("/services")
        self.assertEqual((response.code, loads(body)["services"][-1]["name"]),
                         (200, "Hunt Group"))

    async def test_credentials_are_checked_even_when_kept(self) -> None:
        await self.daemon()
        response, _ = await self.get("/services")
        self.assertEqual(response.code, 200)
        self.assertError(await self.get("/services", auth=("alice", "nope")), 403)

    async def test_a_failed_fetch_is_not_kept(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        await self.get("/calllog")  # alice's session is open: the fetch is the only command
        self.pbx.faults.no_reply = frozenset({"GetServiceList"})
        pending = Deferred.fromCoroutine(self.get("/services"))
        await self.pbx.wait_for("GetServiceList")
        clock.advance(7)
        self.assertError(await pending, 504)
        self.pbx.faults.no_reply = frozenset()
        response, body = await self.get("/services")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(len(loads(body)["services"]), len(self.pbx.services))
