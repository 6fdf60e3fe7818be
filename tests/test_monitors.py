"""Call monitors on the server link, against the simulator over loopback; the link's timers and
the leases of the ``calls`` reason on task.Clocks of their own."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxproxy.config import MXConfig
from mxproxy.csta.events import (
    CallEvent,
    ConnectionCleared,
    Delivered,
    Established,
    MailIncomingReady,
    RecordingState,
)
from mxproxy.monitors import CALLS, DEVICES, LEASES, STREAM, CallMonitors
from mxproxy.mx import MXServer, SerialRegistry
from mxproxy.testing.mxsim import PBX
from tests.support import drop_sessions, next_turn, serve

LEASE = LEASES[CALLS]


def company(clock: Clock | None = None) -> PBX:
    pbx = PBX(sn="TEST1", clock=clock)
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "a", "3001")
    pbx.add_user("bob", "b", "3002")
    return pbx


class MonitorTestCase(TestCase):
    async def start(self, stored: list[str] | None = None, pbx_clock: Clock | None = None
                    ) -> None:
        """The link up, with the monitors; ``stored``: the JIDs a source restores as
        ``devices`` at every link-up."""
        self.pbx = company(pbx_clock)
        address = serve(self, self.pbx)
        self.clock = Clock()
        self.leases = Clock()
        config = MXConfig(name="dev", host=address.host, port=address.port, login="server",
                          password="server-secret", tls=False)
        self.server = MXServer(config, reactor, SerialRegistry(), jitter=lambda: 0.0,
                               clock=self.clock)
        self.events: list[tuple[str, str, CallEvent]] = []
        self.stored = list(stored or [])

        async def stored_users() -> list[str]:
            return self.stored

        self.monitors = CallMonitors(self.server, self.leases,
                                     lambda jid, ext, event: self.events.append((jid, ext, event)))
        self.monitors.restore(DEVICES, stored_users)
        self.server.startService()
        self.addCleanup(self.server.stopService)
        await self.server.when_ready()
        self.alice = self.pbx.user("alice").jid
        self.bob = self.pbx.user("bob").jid

    async def settle(self, count: int) -> None:
        while len(self.monitors) < count:
            await next_turn()

    async def reconnect(self) -> None:
        """Drop the link from the simulator's side and let the server link come back."""
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        await next_turn()
        self.assertEqual(len(self.monitors), 0)
        ready = self.server.when_ready()
        self.clock.advance(1.0)
        await ready


class MonitorTests(MonitorTestCase):
    async def test_a_reason_starts_a_monitor_and_maps_events_to_the_user(self) -> None:
        await self.start()
        started = self.pbx.wait_for("MonitorStart")
        await self.monitors.want(self.alice, DEVICES)
        command = await started
        self.assertEqual(command.element.findtext("monitorObject/deviceObject"), "3001")
        self.assertEqual(self.monitors.monitored(self.alice), "3001")
        assert self.server.protocol is not None
        delivered = self.server.protocol.expect("DeliveredEvent")
        call = self.pbx.place_call("+15555550100", "3001", calling_name="Caller")
        await delivered
        [(jid, ext, event)] = self.events
        self.assertEqual((jid, ext), (self.alice, "3001"))
        assert isinstance(event, Delivered)
        self.assertEqual(event.called_device, "3001")
        established = self.server.protocol.expect("EstablishedEvent")
        self.pbx.answer(call)
        await established
        cleared = self.server.protocol.expect("ConnectionClearedEvent")
        self.pbx.hang_up(call)
        await cleared
        self.assertEqual([type(e) for _, _, e in self.events],
                         [Delivered, Established, ConnectionCleared])

    async def test_unmonitored_users_produce_no_events(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, DEVICES)
        assert self.server.protocol is not None
        self.pbx.place_call("+15555550100", "3002")
        self.pbx.place_call("+15555550100", "3001")
        await self.server.protocol.expect("DeliveredEvent")
        self.assertEqual([jid for jid, _, _ in self.events], [self.alice])

    async def test_mail_of_a_monitored_user_reaches_the_mail_observers(self) -> None:
        """Alice's voicemail reaches every observer, even after one that fails; bob's (no
        monitor) reaches none; calls still reach the sink."""
        await self.start()
        mail: list[tuple[str, MailIncomingReady]] = []

        def failing(jid: str, event: MailIncomingReady) -> None:
            raise RuntimeError("a bug")

        self.monitors.on_mail(failing)
        self.monitors.on_mail(lambda jid, event: mail.append((jid, event)))
        await self.monitors.want(self.alice, DEVICES)
        assert self.server.protocol is not None
        ready = self.server.protocol.expect("MailIncomingReadyEvent")
        self.pbx.leave_voicemail("bob", b"", from_number="3001")
        left = self.pbx.leave_voicemail("alice", b"", from_number="3002", duration=9)
        await ready
        await next_turn()
        [(jid, event)] = mail
        self.assertEqual((jid, event.mail_id, event.duration, event.media_type),
                         (self.alice, str(left.mail_id), 9, "VoiceMail"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.events, [])
        delivered = self.server.protocol.expect("DeliveredEvent")
        self.pbx.place_call("+15555550100", "3001")
        await delivered
        self.assertEqual([type(e) for _, _, e in self.events], [Delivered])

    async def test_recording_state_reaches_the_sink_as_a_call_event(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, DEVICES)
        assert self.server.protocol is not None
        call = self.pbx.place_call("+15555550100", "3001")
        self.pbx.answer(call)
        recording = self.server.protocol.expect("RecordingStateEvent")
        self.pbx.start_recording(call, "3001")
        await recording
        jid, ext, event = self.events[-1]
        assert isinstance(event, RecordingState)
        self.assertEqual((jid, event.call_id, event.rec_is_active), (self.alice, call.call_id,
                                                                      True))

    async def test_releasing_the_only_reason_stops_the_monitor(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, DEVICES)
        stopped = self.pbx.wait_for("MonitorStop")
        await self.monitors.release(self.alice, DEVICES)
        await stopped
        self.assertIsNone(self.monitors.monitored(self.alice))
        self.assertEqual(self.monitors.reasons(self.alice), frozenset())
        self.assertEqual(self.pbx.monitors_of("3001"), [])

    async def test_stored_users_are_monitored_after_start_and_reconnect(self) -> None:
        await self.start(stored=[company().user("bob").jid])
        await self.settle(1)
        self.assertEqual(self.monitors.monitored(self.bob), "3002")
        self.assertEqual(self.monitors.reasons(self.bob), {DEVICES})
        await self.reconnect()
        await self.settle(1)
        self.assertEqual(self.monitors.monitored(self.bob), "3002")
        self.assertEqual(len(self.pbx.monitors_of("3002")), 1)

    async def test_extension_change_moves_the_monitor(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, DEVICES)
        moved = self.pbx.wait_for("MonitorStart")
        stopped = self.pbx.wait_for("MonitorStop")
        self.pbx.update_contact(self.alice, business_phone="3011")
        await stopped
        await moved
        while self.monitors.monitored(self.alice) != "3011":
            await next_turn()
        self.assertEqual(self.pbx.monitors_of("3001"), [])


class ReasonTests(MonitorTestCase):
    async def test_calls_starts_a_monitor_on_demand_that_lapses_after_ten_minutes_unused(
            self) -> None:
        await self.start()
        await self.monitors.want(self.alice, CALLS)
        self.assertEqual(len(self.pbx.monitors_of("3001")), 1)
        self.leases.advance(LEASE - 60)
        await self.monitors.want(self.alice, CALLS)  # used again: ten minutes from now
        self.leases.advance(LEASE - 1)
        await next_turn()
        self.assertEqual(self.monitors.monitored(self.alice), "3001")
        self.assertNotIn("MonitorStop", [c.name for c in self.pbx.received])
        self.assertEqual([c.name for c in self.pbx.received].count("MonitorStart"), 1)
        stopped = self.pbx.wait_for("MonitorStop")
        self.leases.advance(1)
        await stopped
        self.assertIsNone(self.monitors.monitored(self.alice))
        self.assertEqual(self.monitors.reasons(self.alice), frozenset())
        self.assertEqual(self.leases.getDelayedCalls(), [])

    async def test_the_monitor_runs_while_any_reason_holds(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, DEVICES)
        await self.monitors.want(self.alice, CALLS)
        await self.monitors.want(self.alice, STREAM)
        self.leases.advance(LEASE)  # calls lapses
        await self.monitors.release(self.alice, DEVICES)
        self.assertEqual(self.monitors.reasons(self.alice), {STREAM})
        self.assertEqual(self.monitors.monitored(self.alice), "3001")
        stopped = self.pbx.wait_for("MonitorStop")
        await self.monitors.release(self.alice, STREAM)
        await stopped
        names = [c.name for c in self.pbx.received]
        self.assertEqual((names.count("MonitorStart"), names.count("MonitorStop")), (1, 1))

    async def test_calls_outlives_the_last_device(self) -> None:
        await self.start()
        await self.monitors.want(self.bob, DEVICES)
        await self.monitors.want(self.bob, CALLS)
        await self.monitors.release(self.bob, DEVICES)  # the last token removed
        self.assertEqual(self.monitors.monitored(self.bob), "3002")
        stopped = self.pbx.wait_for("MonitorStop")
        self.leases.advance(LEASE)
        await stopped
        self.assertIsNone(self.monitors.monitored(self.bob))

    async def test_link_up_restarts_every_wanted_user_whatever_the_reason(self) -> None:
        await self.start(stored=[company().user("bob").jid])
        await self.settle(1)
        await self.monitors.want(self.alice, CALLS)
        await self.reconnect()
        await self.settle(2)
        self.assertEqual((self.monitors.monitored(self.alice), self.monitors.monitored(self.bob)),
                         ("3001", "3002"))
        self.assertEqual((len(self.pbx.monitors_of("3001")), len(self.pbx.monitors_of("3002"))),
                         (1, 1))

    async def test_a_lease_lapsing_while_the_link_is_down_is_not_restarted(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, CALLS)
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        self.leases.advance(LEASE)
        ready = self.server.when_ready()
        self.clock.advance(1.0)
        await ready
        await next_turn()
        self.assertEqual(self.pbx.monitors_of("3001"), [])

    async def test_released_while_the_mx_starts_it_stops_the_monitor(self) -> None:
        pbx_clock = Clock()
        await self.start(pbx_clock=pbx_clock)
        self.pbx.faults.reply_delay = 1.0
        wanted = Deferred.fromCoroutine(self.monitors.want(self.alice, CALLS))
        await self.pbx.wait_for("MonitorStart")
        await self.monitors.release(self.alice, CALLS)
        self.pbx.faults.reply_delay = 0.0
        pbx_clock.advance(1.0)  # the MonitorStart reply comes after the release
        await wanted
        self.assertIsNone(self.monitors.monitored(self.alice))
        self.assertEqual(self.pbx.monitors_of("3001"), [])

    async def test_a_stopping_daemon_cancels_the_leases(self) -> None:
        await self.start()
        await self.monitors.want(self.alice, CALLS)
        self.assertEqual(len(self.leases.getDelayedCalls()), 1)
        await self.server.stopService()
        self.assertEqual(self.leases.getDelayedCalls(), [])
        self.assertEqual(len(self.monitors), 0)
