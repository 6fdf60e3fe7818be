"""Call monitors on the server link, against the simulator over loopback."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxproxy.config import MXConfig
from mxproxy.csta.events import ConnectionCleared, Delivered, Established
from mxproxy.csta.records import XMLRecord
from mxproxy.monitors import CallMonitors
from mxproxy.mx import MXServer, SerialRegistry
from mxproxy.push.tokens import parse_user_key, user_key
from mxproxy.testing.mxsim import PBX
from tests.support import drop_sessions, next_turn, serve


def company() -> PBX:
    pbx = PBX(sn="TEST1")
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "a", "3001")
    pbx.add_user("bob", "b", "3002")
    return pbx


class MonitorTests(TestCase):
    async def start(self, stored: list[str] | None = None) -> None:
        self.pbx = company()
        address = serve(self, self.pbx)
        self.clock = Clock()
        config = MXConfig(name="dev", host=address.host, port=address.port, login="server",
                          password="server-secret", tls=False)
        self.server = MXServer(config, reactor, SerialRegistry(), jitter=lambda: 0.0,
                               clock=self.clock)
        self.events: list[tuple[str, XMLRecord]] = []
        self.stored = list(stored or [])

        async def stored_users(sn: str) -> list[str]:
            return [parse_user_key(user)[1] for user in self.stored
                    if parse_user_key(user)[0] == sn]

        self.monitors = CallMonitors(self.server, stored_users,
                                     lambda jid, event: self.events.append((jid, event)))
        self.server.startService()
        self.addCleanup(self.server.stopService)
        await self.server.when_ready()
        self.alice = self.pbx.user("alice").jid
        self.bob = self.pbx.user("bob").jid

    async def settle(self, count: int) -> None:
        while len(self.monitors) < count:
            await next_turn()

    async def test_watch_starts_a_monitor_and_maps_events_to_the_user(self) -> None:
        await self.start()
        started = self.pbx.wait_for("MonitorStart")
        await self.monitors.watch(self.alice)
        command = await started
        self.assertEqual(command.element.findtext("monitorObject/deviceObject"), "3001")
        self.assertEqual(self.monitors.monitored(self.alice), "3001")
        assert self.server.protocol is not None
        delivered = self.server.protocol.expect("DeliveredEvent")
        call = self.pbx.place_call("+15555550100", "3001", calling_name="Caller")
        await delivered
        [(jid, event)] = self.events
        self.assertEqual(jid, self.alice)
        assert isinstance(event, Delivered)
        self.assertEqual(event.called_device, "3001")
        established = self.server.protocol.expect("EstablishedEvent")
        self.pbx.answer(call)
        await established
        cleared = self.server.protocol.expect("ConnectionClearedEvent")
        self.pbx.hang_up(call)
        await cleared
        self.assertEqual([type(e) for _, e in self.events],
                         [Delivered, Established, ConnectionCleared])

    async def test_unwatched_users_produce_no_events(self) -> None:
        await self.start()
        await self.monitors.watch(self.alice)
        assert self.server.protocol is not None
        self.pbx.place_call("+15555550100", "3002")
        self.pbx.place_call("+15555550100", "3001")
        await self.server.protocol.expect("DeliveredEvent")
        self.assertEqual([jid for jid, _ in self.events], [self.alice])

    async def test_unwatch_stops_the_monitor(self) -> None:
        await self.start()
        await self.monitors.watch(self.alice)
        stopped = self.pbx.wait_for("MonitorStop")
        await self.monitors.unwatch(self.alice)
        await stopped
        self.assertIsNone(self.monitors.monitored(self.alice))
        self.assertEqual(self.pbx.monitors_of("3001"), [])

    async def test_stored_users_are_monitored_after_start_and_reconnect(self) -> None:
        await self.start(stored=[user_key("TEST1", company().user("bob").jid),
                                 user_key("OTHER", "1")])
        await self.settle(1)
        self.assertEqual(self.monitors.monitored(self.bob), "3002")
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        await next_turn()
        self.assertIsNone(self.monitors.monitored(self.bob))
        ready = self.server.when_ready()
        self.clock.advance(1.0)
        await ready
        await self.settle(1)
        self.assertEqual(self.monitors.monitored(self.bob), "3002")
        self.assertEqual(len(self.pbx.monitors_of("3002")), 1)

    async def test_extension_change_moves_the_monitor(self) -> None:
        await self.start()
        await self.monitors.watch(self.alice)
        moved = self.pbx.wait_for("MonitorStart")
        stopped = self.pbx.wait_for("MonitorStop")
        self.pbx.update_contact(self.alice, business_phone="3011")
        await stopped
        await moved
        while self.monitors.monitored(self.alice) != "3011":
            await next_turn()
        self.assertEqual(self.pbx.monitors_of("3001"), [])
