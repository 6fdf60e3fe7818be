"""Acceptance of several instances: two real ``twistd mxproxy`` daemons on one real PostgreSQL,
the simulated MX and the fake APNs and FCM (tests.cluster). One owns the MX and pushes, the
other stands by; a killed owner is replaced within 10 s; a stopped database makes both
unhealthy and silent, and its return brings one owner back; a device registered anywhere, at
any point acknowledged, rings, and every device rings once per call; a device that answers
through the standby is left out of the owner's "answered elsewhere" push.

"Once" is checked after the owner's "call ended" push for the same call has arrived: both
daemons hear the call's events at the same moment, so a second ringing push would have come
before the owner's follow-up.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from mxproxy.ownership import HEARTBEAT, LEASE, POLL
from tests.cluster import BUNDLE, CALLER, MX_NAME, USERS, VOIP, Cluster, Node

FAILOVER_LIMIT = 10.0
"""Seconds from the owner's death to the standby owning the MX: the issue's bound."""


def apns(n: int) -> str:
    return f"{n:064x}"


def fcm(name: str) -> str:
    return f"{name}:APA91b{'x' * 140}"


class HATestCase(TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.cluster = Cluster(directory)
        self.addCleanup(self.cluster.close)
        self.first = await self.cluster.start("first")
        self.second = await self.cluster.start("second")
        self.devices: dict[str, list[str]] = {login: [] for login in USERS}

    def other(self, node: Node) -> Node:
        return self.second if node is self.first else self.first

    async def register(self, node: Node, login: str, provider: str, bundle: str,
                       token: str) -> None:
        self.assertEqual(await self.cluster.register(node, login, provider, bundle, token),
                         204)
        self.devices[login].append(token)

    async def monitored(self, node: Node, count: int) -> None:
        async def enough() -> bool:
            _, report = await self.cluster.health(node)
            return bool(report["mx"][MX_NAME]["monitors"] >= count)

        await self.cluster.until(enough, f"{count} monitors on {node.name}")

    async def rings_each_device_once(self, login: str) -> None:
        """A call to ``login`` reaches each of their devices exactly once."""
        cluster = self.cluster
        call = cluster.pbx.place_call(CALLER, USERS[login][1])
        tokens = self.devices[login]
        await cluster.until(lambda: set(cluster.call_pushes(call.call_id)) >= set(tokens),
                            f"call {call.call_id} pushed to each of {login}'s devices")
        ended = cluster.ended_pushes(call.call_id)
        cluster.pbx.hang_up(call)
        await cluster.until(lambda: cluster.ended_pushes(call.call_id) > ended,
                            f"the 'call ended' push of call {call.call_id}")
        self.assertEqual(cluster.call_pushes(call.call_id), dict.fromkeys(tokens, 1))


class FailoverTests(HATestCase):
    async def test_one_owner_pushes_and_a_killed_one_is_replaced_within_10_s(self) -> None:
        owner = await self.cluster.owner([self.first, self.second])
        standby = self.other(owner)
        await self.register(owner, "alice", "apns", VOIP, apns(1))
        await self.register(owner, "alice", "apns", BUNDLE, apns(2))
        await self.register(standby, "alice", "gfcm", BUNDLE, fcm("alice1"))
        await self.register(standby, "bob", "apns", BUNDLE, apns(3))  # on the standby only
        await self.monitored(owner, 2)  # bob's by the store's notification
        await self.rings_each_device_once("alice")
        await self.rings_each_device_once("bob")

        await self.register(owner, "bob", "gfcm", BUNDLE, fcm("bob1"))  # just before the kill
        await self.cluster.kill(owner)
        took = await self.cluster.until(
            lambda: self._owns(standby), "the standby to own the MX", FAILOVER_LIMIT)
        self.assertLess(took, FAILOVER_LIMIT)
        await self.monitored(standby, 2)
        await self.rings_each_device_once("alice")
        await self.rings_each_device_once("bob")

        restarted = await self.cluster.start("restarted")
        self.assertIs(await self.cluster.owner([standby, restarted]), standby)
        await self.register(restarted, "alice", "apns", BUNDLE, apns(4))
        await self.monitored(standby, 2)
        await self.rings_each_device_once("alice")

    async def _owns(self, node: Node) -> bool:
        return await self.cluster.role(node) == "owner"


class AnswerOnTheStandbyTests(HATestCase):
    async def test_the_answering_device_is_not_told_it_was_answered_elsewhere(self) -> None:
        owner = await self.cluster.owner([self.first, self.second])
        standby = self.other(owner)
        phone, tablet = apns(1), apns(2)
        await self.register(owner, "alice", "apns", BUNDLE, phone)
        await self.register(standby, "alice", "apns", BUNDLE, tablet)
        await self.monitored(owner, 1)
        cluster = self.cluster
        call = cluster.pbx.place_call(CALLER, USERS["alice"][1])
        await cluster.until(lambda: set(cluster.call_pushes(call.call_id)) >= {phone, tablet},
                            f"call {call.call_id} pushed to both of alice's devices")

        # The load balancer sends the phone's answer to the standby; APNs tokens are one
        # device in either case.
        self.assertEqual(await cluster.answer(standby, "alice", call.call_id, phone.upper()),
                         200)
        await cluster.until(lambda: tablet in cluster.ended_pushes_by_token(call.call_id),
                            "the tablet's 'answered elsewhere' push")
        # Both follow-ups leave the owner together, before the next call's pushes.
        cluster.pbx.hang_up(call)
        await self.rings_each_device_once("alice")
        self.assertEqual(cluster.ended_pushes_by_token(call.call_id), {tablet: 1})
        [ended] = [request.payload for request in cluster.fakes.apns.received
                   if (request.payload or {}).get("callId") == call.call_id
                   and request.payload.get("event") == "callEnded"]
        self.assertEqual(ended["reason"], "answeredElsewhere")


class DatabaseOutageTests(HATestCase):
    async def test_without_postgresql_both_are_unhealthy_and_silent_then_recover(self) -> None:
        owner = await self.cluster.owner([self.first, self.second])
        await self.register(owner, "alice", "apns", BUNDLE, apns(1))
        await self.register(self.other(owner), "alice", "gfcm", BUNDLE, fcm("alice1"))
        await self.monitored(owner, 1)
        await self.rings_each_device_once("alice")

        self.cluster.postgres.stop()
        for node in (self.first, self.second):
            await self.cluster.until(lambda node=node: self._unhealthy(node),
                                     f"{node.name} to report the database down",
                                     HEARTBEAT + LEASE + 5)
        self.assertEqual([await self.cluster.role(node) for node in (self.first, self.second)],
                         ["standby", "standby"])
        during = self.cluster.pbx.place_call(CALLER, USERS["alice"][1])
        self.cluster.pbx.hang_up(during)

        self.cluster.postgres.start()
        await self.cluster.owner([self.first, self.second], deadline=POLL + 10)
        for node in (self.first, self.second):
            await self.cluster.until(lambda node=node: self._healthy(node),
                                     f"{node.name} healthy again")
        await self.rings_each_device_once("alice")
        counts = self.cluster.call_pushes(during.call_id)
        self.assertLessEqual(max(counts.values(), default=0), 1, counts)
        await self.register(self.first, "bob", "apns", BUNDLE, apns(2))
        await self.register(self.second, "bob", "gfcm", BUNDLE, fcm("bob1"))
        await self.rings_each_device_once("bob")

    async def _unhealthy(self, node: Node) -> bool:
        code, report = await self.cluster.health(node)
        return code == 503 and report.get("database", {}).get("state") == "down"

    async def _healthy(self, node: Node) -> bool:
        code, _ = await self.cluster.health(node)
        return code == 200
