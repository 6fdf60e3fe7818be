"""One MX must not hurt the others: the server link against a hostile MX double.

The double (``mxproxy.testing.hostilemx``) speaks the real wire protocol over loopback sockets;
the link's timers and the double's page delays run on one ``task.Clock``. The serial-number
cases run the real daemon (``twistd mxproxy``) with two MX entries, and ask its ``/healthz``.
"""

from __future__ import annotations

import json
import os
import re
import signal

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mxproxy.addressbook import PAGE_WINDOW
from mxproxy.csta.client import MXAddress
from mxproxy.csta.protocol import PARTIAL_FRAME_TIMEOUT
from mxproxy.mx import LOGOUT_GRACE, SerialRegistry
from mxproxy.testing.hostilemx import HostileMX, Script
from mxproxy.testing.mxsim import PBX
from tests.crash_daemon import write
from tests.support import next_turn, serve
from tests.test_crash import basic
from tests.test_json_logs import TwistdProcess, start_twistd
from tests.test_mx import Running, company
from tests.test_tls import capture_logs


def listen(test: TestCase, script: Script, clock: Clock | None = None,
           tls: bool = False) -> tuple[HostileMX, MXAddress]:
    """The double on an ephemeral loopback port, its sessions cut at cleanup."""
    hostile = HostileMX(script, clock or Clock())
    port = hostile.listen(reactor, tls=tls)

    async def stop() -> None:
        await port.stopListening()
        hostile.drop()
        while hostile.sessions:
            await next_turn()

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return hostile, MXAddress("127.0.0.1", port.getHost().port, tls=tls)


class AddressBookLimitTests(TestCase):
    async def test_an_endless_address_book_fails_the_link_at_once(self) -> None:
        lines = capture_logs(self, "mxproxy.mx")
        clock = Clock()
        hostile, address = listen(self, Script(contacts=999_999_999), clock)
        link = Running(self, address, "evil", clock=clock)
        self.assertEqual(await link.failed(), "the MX announces an address book of 999999999 "
                                              "contacts, over maxContacts (100000)")
        self.assertEqual(list(hostile.received).count("iq:addressbook"), 1)
        self.assertEqual(len(link.server.address_book), 0)
        self.assertFalse(link.state.connected)
        self.assertIn("mx.evil: cannot establish the MX link: the MX announces an address book "
                      "of 999999999 contacts, over maxContacts (100000); retrying in 1.0 s",
                      lines)

    async def test_a_size_that_keeps_growing_stops_at_the_cap(self) -> None:
        clock = Clock()
        hostile, address = listen(self, Script(contacts=10_000, growing=True), clock)
        link = Running(self, address, "evil", max_contacts=120, clock=clock)
        self.assertEqual(await link.failed(), "the MX announces an address book of 150 "
                                              "contacts, over maxContacts (120)")
        self.assertEqual(list(hostile.received).count("iq:addressbook"), 2)
        self.assertEqual(len(link.server.address_book), 0)

    async def test_a_page_past_the_cap_fails_the_link(self) -> None:
        clock = Clock()
        _, address = listen(self, Script(contacts=150, announced=10, page_size=150), clock)
        link = Running(self, address, "evil", max_contacts=120, clock=clock)
        self.assertEqual(await link.failed(), "the MX sent 150 contacts, over maxContacts (120)")

    async def test_changes_while_it_loads_count_against_the_cap(self) -> None:
        for adds, error in ((100, "more than maxContacts (120) contacts changed while the "
                                  "address book loaded"),
                            (15, "the address book grew to 130 contacts while it loaded, over "
                                 "maxContacts (120)")):
            clock = Clock()
            _, address = listen(self, Script(contacts=100, adds_per_page=adds), clock)
            link = Running(self, address, "evil", max_contacts=120, clock=clock)
            self.assertEqual(await link.failed(), error)

    async def test_a_page_with_an_index_not_asked_for_is_waited_for_no_longer(self) -> None:
        clock = Clock()
        hostile, address = listen(self, Script(contacts=100, index_shift=1), clock)
        asked = hostile.wait_for("iq:addressbook")
        link = Running(self, address, "evil", clock=clock)
        await asked
        clock.advance(7)
        self.assertEqual(await link.failed(), "no ablist within 7 s")

    async def test_the_whole_load_is_bounded_in_time(self) -> None:
        clock = Clock()
        hostile, address = listen(self, Script(contacts=5000, page_delay=5.0), clock)
        asked = hostile.wait_for("iq:addressbook")
        link = Running(self, address, "evil", max_contacts=5000, clock=clock)  # a minute to load
        while link.state.next_attempt is None:
            await asked  # page 0 asked for, or one more after the page the link just took
            asked = hostile.wait_for("iq:addressbook")
            clock.advance(5.0)  # the next page goes out
            while not asked.called and link.state.next_attempt is None:
                await next_turn()
        self.assertEqual(link.state.last_error, "address book not loaded within 60 s (650 of "
                                                "5000 contacts)")
        # Page 12 came at 65 s; page 11, at 60 s, was followed by the request PAGE_WINDOW on.
        self.assertEqual(list(hostile.received).count("iq:addressbook"), 12 + PAGE_WINDOW)


class FloodTests(TestCase):
    async def test_a_flood_drops_that_link_ever_more_slowly_and_spares_the_other(self) -> None:
        lines = capture_logs(self, "mxproxy")
        clock = Clock()
        serials = SerialRegistry()
        pbx = company(3)
        good = Running(self, serve(self, pbx), "good", serials, clock=clock)
        await good.server.when_ready()
        hostile, address = listen(self, Script(after_load="flood"), clock)
        evil = Running(self, address, "evil", serials, clock=clock)
        delays = []
        for _ in range(3):
            await evil.server.when_ready()
            self.assertEqual(await evil.failed(), "20 unparseable frames within 60 s")
            assert evil.state.next_attempt is not None
            delays.append(evil.state.next_attempt - clock.seconds())
            clock.advance(delays[-1])
        self.assertEqual(delays, [1.0, 2.0, 4.0])
        self.assertTrue(good.state.connected)
        self.assertEqual(len(good.server.address_book), 3)
        self.assertEqual(good.state.reconnects, 0)
        skipped = [line for line in lines if "skipping frame" in line]
        self.assertEqual(len(skipped), 3, "one line per connection")
        counted = [line for line in lines if "unparseable frames: 19 more suppressed" in line]
        self.assertEqual(len(counted), 3)
        self.assertLess(len(lines), 20)


class SilentPeerTests(TestCase):
    async def test_a_frame_left_incomplete_is_reported_down_and_reconnected(self) -> None:
        clock = Clock()
        script = Script(after_load="partial")
        hostile, address = listen(self, script, clock)
        link = Running(self, address, "evil", clock=clock)
        await link.server.when_ready()
        took = await link.down_after(1.0)
        self.assertLessEqual(took, PARTIAL_FRAME_TIMEOUT + 2)
        self.assertEqual(link.state.last_error,
                         "a frame still incomplete after 30 s (15 of 65535 bytes)")
        script.after_load = None
        ready = link.server.when_ready()
        clock.advance(1.0)
        await ready
        self.assertEqual(hostile.connections, 2)

    async def test_a_peer_that_stops_answering_is_dropped_after_the_probe(self) -> None:
        clock = Clock()
        script = Script(after_load="silent")
        hostile, address = listen(self, script, clock, tls=True)
        link = Running(self, address, "evil", clock=clock)
        await link.server.when_ready()
        probed = hostile.wait_for("GetServiceList")
        clock.advance(60)
        await probed
        clock.advance(6.9)
        await next_turn()
        self.assertTrue(link.state.connected)
        clock.advance(0.1)
        self.assertEqual(await link.failed(), "no answer to the liveness probe within 7 s")
        while hostile.sessions:  # aborted: the TLS connection is really gone
            await next_turn()
        script.after_load = None
        ready = link.server.when_ready()
        clock.advance(1.0)
        await ready


def open_links(port: int) -> int:
    """Sockets of this process still connected to the loopback ``port``."""
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return sum(1 for selectable in selectables
               if isinstance(selectable, tcp.Client) and selectable.getPeer().port == port)


class HungPeerTests(TestCase):
    """An MX that stops reading its socket over TLS, where a polite close waits for the peer's
    goodbye: the link must be cut, never left waiting (one descriptor per attempt, a stop that
    never ends)."""

    async def cut(self, port: int) -> None:
        for _ in range(20):
            if not open_links(port):
                return
            await next_turn()
        self.fail(f"{open_links(port)} connection(s) to the hung MX left open")

    async def test_a_failed_attempt_leaves_no_connection_behind(self) -> None:
        clock = Clock()
        script = Script(contacts=10, index_shift=1, after_load="deaf")  # page 0 never comes
        hostile, address = listen(self, script, clock, tls=True)
        asked = hostile.wait_for("iq:addressbook")
        link = Running(self, address, "evil", clock=clock)
        await asked
        clock.advance(7)
        self.assertEqual(await link.failed(), "no ablist within 7 s")
        await self.cut(address.port)

    async def hung_after_the_load(self) -> tuple[Running, int]:
        """A link up, to an MX that then stops reading; and the MX's port."""
        clock = Clock()
        _, address = listen(self, Script(after_load="deaf"), clock, tls=True)
        link = Running(self, address, "evil", clock=clock)
        await link.server.when_ready()
        return link, address.port

    async def test_the_probe_finds_it_and_cuts_the_link(self) -> None:
        link, port = await self.hung_after_the_load()
        link.clock.advance(60)
        link.clock.advance(7)
        self.assertEqual(await link.failed(), "no answer to the liveness probe within 7 s")
        await self.cut(port)

    async def test_a_stop_does_not_wait_for_it(self) -> None:
        link, port = await self.hung_after_the_load()
        stopped = link.server.stopService()
        await next_turn()
        self.assertNoResult(stopped)  # the logout went out; the goodbye never comes back
        link.clock.advance(LOGOUT_GRACE)
        await stopped
        await self.cut(port)


SERVING = re.compile(rb"serving (HTTP|the admin endpoint) .*?on 127\.0\.0\.1:(\d+)")


class TwinSerialTests(TestCase):
    """The real daemon with two entries, ``first`` (the simulator) and ``second`` (the double),
    where the second answers with the first's serial number."""

    timeout = 60

    def setUp(self) -> None:
        self.pbx = PBX(sn="TWIN1", clock=reactor)
        self.pbx.add_server_login("server", "server-secret")
        self.pbx.add_user("alice", "alice-secret", "3001", first_name="Alice")
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def start(self, script: Script) -> tuple[HostileMX, TwistdProcess]:
        hostile, second = listen(self, script)
        first = serve(self, self.pbx)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        entries = {name: {"addr": f"{address.host}:{address.port}", "login": "server",
                          "password": "server-secret", "tls": False}
                   for name, address in (("first", first), ("second", second))}
        config = write(directory, "mxproxy.json", json.dumps({"mx": entries}).encode())
        daemon = start_twistd(self, directory, config, "--listen", "tcp:0:interface=127.0.0.1",
                              "--admin-listen", "tcp:0:interface=127.0.0.1")
        return hostile, daemon

    async def get(self, url: str, auth: bytes | None = None) -> tuple[int, bytes]:
        headers = Headers({b"Authorization": [auth]} if auth else {})
        response = await self.agent.request(b"GET", url.encode(), headers)
        return response.code, await readBody(response)

    async def assert_only_the_second_fails(self, daemon: TwistdProcess) -> None:
        ports = {what: int(port) for what, port in SERVING.findall(b"\n".join(daemon.lines))}
        code, body = await self.get(f"http://127.0.0.1:{ports[b'the admin endpoint']}/healthz")
        report = json.loads(body)
        self.assertEqual(code, 503)
        self.assertEqual(report["mx"]["first"]["link"], "up")
        self.assertEqual(report["mx"]["second"]["link"], "down")
        self.assertEqual(report["mx"]["second"]["lastError"],
                         "the MX answered with serial number TWIN1, which mx.first already "
                         "serves: the same MX configured twice, or an impostor")
        code, body = await self.get(f"http://127.0.0.1:{ports[b'HTTP']}/mx/first/addressbook",
                                    basic("alice", "alice-secret"))
        self.assertEqual(code, 200, body)
        self.assertEqual(len(json.loads(body)["addressbook"]), 1)
        self.assertFalse(daemon.ended.called, "the daemon keeps running")
        daemon.signal("TERM")
        ended = await daemon.ended
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(getattr(ended, "signal", None), signal.SIGTERM)
        [refusal] = [line for line in daemon.lines if b"refused" in line]
        self.assertIn(b"mx.second: refused: the MX answered with serial number TWIN1", refusal)

    async def test_at_start(self) -> None:
        hostile, daemon = self.start(Script(sn="TWIN1", hold_logins=True))
        await daemon.until(b"mx.first: connected to MX TWIN1")
        hostile.release_logins()
        await daemon.until(b"mx.second: refused")
        await self.assert_only_the_second_fails(daemon)

    async def test_on_a_later_reconnect(self) -> None:
        script = Script(sn="OTHER1")
        hostile, daemon = self.start(script)
        await daemon.until(b"mx.first: connected to MX TWIN1")
        await daemon.until(b"mx.second: connected to MX OTHER1")
        script.sn = "TWIN1"
        hostile.drop()
        await daemon.until(b"mx.second: refused")
        await self.assert_only_the_second_fails(daemon)

