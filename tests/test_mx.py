"""MXServer against the simulator over real loopback sockets; reconnect timers on task.Clock."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.addressbook import PAGE_WINDOW
from mxproxy.config import MXConfig
from mxproxy.csta.client import MXAddress
from mxproxy.csta.protocol import Trace
from mxproxy.csta.xml import local_name, parse
from mxproxy.mx import (
    FAILURE_LOG_WINDOW,
    REFUSED_RETRY,
    STABLE_AFTER,
    DuplicateSerial,
    MXServer,
    SerialRegistry,
)
from mxproxy.testing.mxsim import PBX, listen
from mxproxy.testing.mxsim.model import Contact
from tests.support import drop_sessions, next_turn, serve
from tests.test_tls import capture_logs

JID_BASE = 43884850000000000


def company(contacts: int, page_size: int = 50, sn: str = "TEST1") -> PBX:
    pbx = PBX(sn=sn, page_size=page_size)
    pbx.add_server_login("server", "server-secret")
    for n in range(contacts):
        pbx.add_contact(Contact(jid=str(JID_BASE + n), first_name=f"First{n}",
                                last_name=f"Last{n}", business_phone=str(4000 + n)))
    return pbx


class Running:
    """An MXServer for one test: started on a Clock for its timers (its own unless given),
    stopped at cleanup."""

    def __init__(self, test: TestCase, address: MXAddress, name: str = "dev",
                 serials: SerialRegistry | None = None, max_contacts: int = 100_000,
                 clock: Clock | None = None, password: str = "server-secret",
                 trace: Trace | None = None) -> None:
        self.clock = clock or Clock()
        config = MXConfig(name=name, host=address.host, port=address.port, login="server",
                          password=password, tls=address.tls, max_contacts=max_contacts)
        self.server = MXServer(config, reactor, serials or SerialRegistry(), trace=trace,
                               jitter=lambda: 0.0, clock=self.clock)
        self.state = self.server.state
        self.server.startService()
        test.addCleanup(self.server.stopService)

    async def failed(self) -> str:
        """Until an attempt or the link has failed and a retry is scheduled (the attempts run
        over real sockets); the error."""
        while self.state.next_attempt is None:
            await next_turn()
        return self.state.last_error or ""

    async def retry(self) -> str:
        """The next attempt, once it has failed; its error."""
        assert self.state.next_attempt is not None
        self.clock.advance(self.state.next_attempt - self.clock.seconds())
        return await self.failed()

    async def down_after(self, step: float) -> float:
        """Advance the clock ``step`` at a time until the link is down; the time it took."""
        start = self.clock.seconds()
        while self.state.connected:
            self.clock.advance(step)
            await next_turn()
        return self.clock.seconds() - start

    async def lose_link(self, pbx: PBX) -> None:
        """Drop the link from the simulator's side and wait until the server noticed."""
        assert self.server.protocol is not None
        closed = self.server.protocol.when_closed()
        await drop_sessions(pbx)
        await closed
        await next_turn()  # ClientService schedules its retry after the protocol saw the loss


class AddressBookLoadTests(TestCase):
    async def load(self, contacts: int, page_size: int = 50) -> MXServer:
        pbx = company(contacts, page_size)
        running = Running(self, serve(self, pbx))
        await running.server.when_ready()
        book = running.server.address_book
        self.assertEqual(len(book), contacts)
        self.assertEqual({c.jid for c in book}, {str(JID_BASE + n) for n in range(contacts)})
        pages = [c for c in pbx.received if c.name == "iq:addressbook"]
        self.assertEqual(len(pages), max(1, -(-contacts // page_size)))
        return running.server

    async def test_empty(self) -> None:
        await self.load(0)

    async def test_one(self) -> None:
        server = await self.load(1)
        contact = server.address_book.get(str(JID_BASE))
        assert contact is not None
        self.assertEqual((contact.first_name, contact.ext), ("First0", "4000"))

    async def test_exactly_one_page(self) -> None:
        await self.load(50)

    async def test_one_more_than_a_page(self) -> None:
        await self.load(51)

    async def test_ten_thousand(self) -> None:
        server = await self.load(10_000)
        self.assertEqual(server.address_book.by_ext("13999").jid, str(JID_BASE + 9999))

    async def test_page_size_is_the_mx_s_not_fifty(self) -> None:
        await self.load(51, page_size=7)

    async def test_pages_are_asked_for_ahead_of_their_answers(self) -> None:
        frames: list[str] = []

        def trace(direction: str, invoke_id: int, body: bytes) -> None:
            element = parse(body)
            if local_name(element) in ("iq", "ablist"):
                frames.append(f"{direction} {local_name(element)} {element.get('index')}")

        running = Running(self, serve(self, company(1000)), trace=trace)
        await running.server.when_ready()
        self.assertEqual(frames[:2 + PAGE_WINDOW], ["-> iq 0", "<- ablist 0"] + [
            f"-> iq {index}" for index in range(1, 1 + PAGE_WINDOW)])
        self.assertEqual(sorted(frame for frame in frames if frame.startswith("<-")),
                         sorted(f"<- ablist {index}" for index in range(20)))

    async def test_state_reports_the_link(self) -> None:
        server = await self.load(3)
        self.assertTrue(server.state.connected)
        self.assertIsNone(server.state.last_error)
        self.assertEqual(server.sn, "TEST1")


class LiveUpdateTests(TestCase):
    async def ready(self, pbx: PBX) -> MXServer:
        running = Running(self, serve(self, pbx))
        await running.server.when_ready()
        self.assertTrue(any(c.name == "MonitorStartAb" for c in pbx.received))
        return running.server

    async def change(self, server: MXServer, event: str, action: object) -> None:
        assert server.protocol is not None
        arrived = server.protocol.expect(event)
        action()  # type: ignore[operator]
        await arrived

    async def test_add_update_delete(self) -> None:
        pbx = company(2)
        server = await self.ready(pbx)
        new = Contact(jid="43884850000009999", first_name="New", business_phone="3101")
        await self.change(server, "AbAddUserEvent", lambda: pbx.add_contact(new))
        self.assertEqual(server.address_book.get(new.jid).ext, "3101")
        await self.change(server, "AbUpdateUserEvent",
                          lambda: pbx.update_contact(new.jid, business_phone="3102"))
        self.assertEqual(server.address_book.get(new.jid).ext, "3102")
        self.assertEqual(server.address_book.by_ext("3102").first_name, "New")
        await self.change(server, "AbDeleteUserEvent", lambda: pbx.remove_contact(new.jid))
        self.assertIsNone(server.address_book.get(new.jid))
        self.assertEqual(len(server.address_book), 2)


class ContactLimitTests(TestCase):
    async def test_a_live_addition_beyond_the_cap_fails_the_link(self) -> None:
        pbx = company(2)
        running = Running(self, serve(self, pbx), max_contacts=3)
        server = running.server
        await server.when_ready()
        assert server.protocol is not None
        closed = server.protocol.when_closed()
        pbx.add_contact(Contact(jid="43884850000009998", first_name="Third"))
        pbx.add_contact(Contact(jid="43884850000009999", first_name="Fourth"))
        reason = await closed
        self.assertEqual(str(reason), "the MX adds a contact beyond maxContacts (3)")
        self.assertEqual(len(server.address_book), 3)


class ReconnectTests(TestCase):
    async def test_reconnect_after_a_drop_reloads_the_address_book(self) -> None:
        pbx = company(3)
        running = Running(self, serve(self, pbx))
        server = running.server
        await server.when_ready()
        await running.lose_link(pbx)
        self.assertFalse(server.state.connected)
        self.assertIsNotNone(server.state.last_error)
        pbx.add_contact(Contact(jid="43884850000009999", first_name="Added while down"))
        ready = server.when_ready()
        running.clock.advance(0.99)
        await next_turn()
        self.assertNoResult(ready)
        running.clock.advance(0.01)  # the first retry comes after 1 s
        await ready
        self.assertTrue(server.state.connected)
        self.assertEqual(server.state.reconnects, 1)
        self.assertEqual(len(server.address_book), 4)
        self.assertEqual(pbx.logins["server"], 2)

    async def test_the_delays_start_again_only_after_a_minute_up(self) -> None:
        pbx = company(1)
        running = Running(self, serve(self, pbx))
        await running.server.when_ready()
        delays = []
        for up_for in (0.0, 0.0, STABLE_AFTER):
            running.clock.advance(up_for)
            await running.lose_link(pbx)
            assert running.state.next_attempt is not None
            delays.append(running.state.next_attempt - running.clock.seconds())
            ready = running.server.when_ready()
            running.clock.advance(delays[-1])
            await ready
        self.assertEqual(delays, [1.0, 2.0, 1.0])

    async def test_logout_from_the_mx_waits_the_longest_delay(self) -> None:
        pbx = company(1)
        running = Running(self, serve(self, pbx))
        server = running.server
        await server.when_ready()
        assert server.protocol is not None
        closed = server.protocol.when_closed()
        pbx.logout("server", mode="forced")
        await closed
        await next_turn()
        self.assertIn("forced", server.state.last_error or "")
        ready = server.when_ready()
        running.clock.advance(29.9)
        await next_turn()
        self.assertNoResult(ready)
        running.clock.advance(0.1)
        await ready
        self.assertEqual(server.state.reconnects, 1)

    async def test_failed_attempts_back_off(self) -> None:
        pbx = company(1)
        running = Running(self, serve(self, pbx))
        await running.server.when_ready()
        pbx.faults.malformed_next = "header"  # every login answered with a broken frame
        await running.lose_link(pbx)
        state = running.server.state
        for delay in (1.0, 2.0, 4.0, 8.0):
            self.assertEqual(state.next_attempt, running.clock.seconds() + delay)
            running.clock.advance(delay)
            while state.next_attempt is None:  # the attempt runs over real sockets
                await next_turn()
            self.assertIn("bad frame", state.last_error or "")
        self.assertEqual(pbx.logins["server"], 5)
        pbx.faults.malformed_next = None
        ready = running.server.when_ready()
        running.clock.advance(16.0)
        await ready
        self.assertTrue(state.connected)
        self.assertIsNone(state.next_attempt)

    async def test_stop_logs_out(self) -> None:
        pbx = company(1)
        running = Running(self, serve(self, pbx))
        await running.server.when_ready()
        logout = pbx.wait_for("logout")
        await running.server.stopService()
        await logout


class LinkDownTests(TestCase):
    async def test_observers_hear_of_a_lost_link_and_of_the_stop(self) -> None:
        pbx = company(1)
        running = Running(self, serve(self, pbx))
        server = running.server
        seen: list[tuple[str, bool, bool]] = []
        server.on_link_down(lambda reason: seen.append(
            (str(reason), server.state.connected, server.protocol is None)))
        await server.when_ready()
        self.assertEqual(seen, [])
        await running.lose_link(pbx)
        [(reason, connected, no_protocol)] = seen
        self.assertEqual(reason, server.state.last_error)
        self.assertEqual((connected, no_protocol), (False, True))
        ready = server.when_ready()
        running.clock.advance(1.0)
        await ready
        self.assertEqual(len(seen), 1)
        await server.stopService()
        self.assertEqual(len(seen), 2)
        self.assertEqual(seen[1][1:], (False, True))

    async def test_a_failed_attempt_is_no_link_down(self) -> None:
        pbx = company(1)
        pbx.faults.refuse_logins = True
        running = Running(self, serve(self, pbx))
        seen: list[Exception] = []
        running.server.on_link_down(seen.append)
        await running.failed()
        await running.server.stopService()
        self.assertEqual(seen, [])


class DuplicateSerialTests(TestCase):
    async def test_a_second_entry_for_one_mx_fails_alone_and_retries_slowly(self) -> None:
        pbx = company(1)
        address = serve(self, pbx)
        serials = SerialRegistry()
        first = Running(self, address, "first", serials)
        await first.server.when_ready()
        lines = capture_logs(self, "mxproxy.mx")
        second = Running(self, address, "second", serials)
        state = second.state
        self.assertIn("serial number TEST1, which mx.first already serves", await second.failed())
        self.assertFalse(state.connected)
        self.assertEqual(state.next_attempt, REFUSED_RETRY)
        self.assertTrue(first.server.state.connected)
        self.assertEqual(len(first.server.address_book), 1)
        [refusal] = [line for line in lines if "refused" in line]
        self.assertTrue(refusal.startswith("mx.second: refused: the MX answered with serial "
                                           "number TEST1, which mx.first already serves"),
                        refusal)

        second.clock.advance(REFUSED_RETRY)  # refused again: not logged again
        await second.failed()
        self.assertEqual(state.next_attempt, 2 * REFUSED_RETRY)
        self.assertEqual(len([line for line in lines if "refused" in line]), 1)

        await first.server.stopService()  # the serial is free again
        ready = second.server.when_ready()
        second.clock.advance(REFUSED_RETRY)
        await ready
        self.assertEqual(second.server.sn, "TEST1")


class LinkMessageTests(TestCase):
    """Each failed attempt is one error line naming the entry, what happened and what to fix;
    ``state.cause`` says the same in one word for ``/healthz``."""

    async def failure_line(self, running: Running) -> str:
        lines = capture_logs(self, "mxproxy.mx")
        await running.failed()
        [line] = lines
        return line

    async def test_tls_to_a_plain_tcp_mx(self) -> None:
        plain = serve(self, company(1))
        running = Running(self, MXAddress(plain.host, plain.port, tls=True))
        line = await self.failure_line(running)
        self.assertTrue(line.startswith(f"mx.dev: 127.0.0.1:{plain.port} did not complete a TLS "
                                        "handshake ("), line)
        self.assertTrue(line.endswith('): if it is a plain-TCP port set "tls": false (a '
                                      "plain-TCP MX listens on 7777), else check the port; "
                                      "retrying in 1.0 s"), line)
        self.assertEqual(running.state.cause, "wrongTransport")

    async def test_plain_tcp_to_a_tls_mx(self) -> None:
        secure = serve(self, company(1), tls=True)
        running = Running(self, MXAddress(secure.host, secure.port, tls=False))
        line = await self.failure_line(running)
        self.assertTrue(line.startswith(f"mx.dev: 127.0.0.1:{secure.port} closed the connection "
                                        "without answering the login ("), line)
        self.assertTrue(line.endswith('): if it is the MX\'s TLS port (7778) set "tls": true, '
                                      "else check the port; retrying in 1.0 s"), line)
        self.assertEqual(running.state.cause, "wrongTransport")

    async def test_a_refused_server_login_is_retried_in_minutes(self) -> None:
        """A wrong password retried every 30 s could lock the MX's server account."""
        pbx = company(1)
        running = Running(self, serve(self, pbx), password="wrong")
        line = await self.failure_line(running)
        self.assertEqual(line, "mx.dev: the MX refused the server login (code 1: Invalid user "
                               "name or password): check mx.dev.login and mx.dev.password; "
                               "retrying in 5 min")
        state = running.state
        self.assertEqual((state.cause, state.login_failed),
                         ("loginFailed", (1, "Invalid user name or password")))
        self.assertEqual(state.next_attempt, REFUSED_RETRY)
        await running.retry()
        self.assertEqual(state.next_attempt, 2 * REFUSED_RETRY)
        self.assertEqual(pbx.failed_logins["server"], 2)

        pbx.add_server_login("server", "wrong")  # the MX's account changed to match
        ready = running.server.when_ready()
        running.clock.advance(REFUSED_RETRY)
        await ready
        self.assertEqual((state.cause, state.login_failed, state.last_error), (None, None, None))

    async def test_connection_refused(self) -> None:
        port = listen(company(1), port=0, reactor=reactor)
        closed = port.getHost().port
        await port.stopListening()
        running = Running(self, MXAddress("127.0.0.1", closed, tls=False))
        self.assertEqual(await self.failure_line(running),
                         f"mx.dev: cannot connect to 127.0.0.1:{closed}: connection refused: "
                         "check that the MX is up and the port is right; retrying in 1.0 s")
        self.assertEqual(running.state.cause, "unreachable")

    async def test_a_name_that_does_not_resolve(self) -> None:
        running = Running(self, MXAddress("mx.invalid", 7778))
        self.assertEqual(await self.failure_line(running),
                         "mx.dev: cannot connect to mx.invalid:7778: the name does not resolve: "
                         "check the host name and the DNS; retrying in 1.0 s")
        self.assertEqual(running.state.cause, "unreachable")

    async def test_a_failure_that_repeats_is_logged_on_change_and_every_ten_minutes(self) -> None:
        pbx = company(1)
        pbx.faults.malformed_next = "header"  # every login answered with a broken frame
        lines = capture_logs(self, "mxproxy.mx")
        running = Running(self, serve(self, pbx))
        await running.failed()
        for _ in range(4):  # at 1, 3, 7 and 15 s
            self.assertIn("bad frame", await running.retry())
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("mx.dev: cannot establish the MX link: bad frame"))

        pbx.faults.malformed_next = None
        pbx.faults.refuse_logins = True
        await running.retry()  # at 31 s, another reason: logged at once, after the last count
        self.assertEqual(lines[1:], ["mx.dev: the same failure again: 4 more suppressed in 31 s",
                                     "mx.dev: the MX refused the server login (code 1: Invalid "
                                     "user name or password): check mx.dev.login and "
                                     "mx.dev.password; retrying in 5 min"])
        await running.retry()
        self.assertEqual(len(lines), 3)
        await running.retry()  # 10 minutes after the last line
        self.assertEqual(running.clock.seconds(), 31 + FAILURE_LOG_WINDOW)
        self.assertEqual(lines[3:], ["mx.dev: the same failure again: 1 more suppressed in "
                                     "600 s", lines[2]])
        self.assertEqual(running.state.reconnects, 0)


class SerialRegistryTests(SynchronousTestCase):
    def test_same_name_may_claim_again(self) -> None:
        serials = SerialRegistry()
        serials.claim("ABC", "dev")
        serials.claim("ABC", "dev")  # a reconnect of the same entry
        self.assertRaises(DuplicateSerial, serials.claim, "ABC", "prod")

    def test_a_released_serial_goes_to_the_next_claim(self) -> None:
        serials = SerialRegistry()
        serials.claim("ABC", "dev")
        serials.release("prod")  # holds nothing: no effect
        self.assertRaises(DuplicateSerial, serials.claim, "ABC", "prod")
        serials.release("dev")
        serials.claim("ABC", "prod")
        self.assertRaises(DuplicateSerial, serials.claim, "ABC", "dev")
