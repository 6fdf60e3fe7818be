"""``GET /mx/<mx>/events`` end to end: streams read by raw HTTP clients on loopback sockets,
the daemon in front of the simulator; the API's timers (hub, auth cache) on a task.Clock."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mxproxy.api.site import IDLE_TIMEOUT
from mxproxy.events import KEEPALIVE, QUEUE_LIMIT, REPLAY_EVENTS, STREAMS_PER_USER, VOICEMAIL
from mxproxy.metrics import Metrics
from mxproxy.sessions import AUTH_TTL
from mxproxy.testing.mxsim.model import Contact
from tests.support import RawResponse, drop_sessions, next_turn
from tests.test_api import ALICE, APITestCase, company

CALLER = "+15555550100"


class EventClient(Protocol):
    """A client of one event stream: the response's status and headers, then its events as
    they arrive (the chunked body decoded), its comments counted."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._received = b""
        self._body = b""
        self._changed: Deferred[None] | None = None
        self.head: RawResponse | None = None
        self.events: list[tuple[str, str, Any]] = []
        self.comments = 0
        self.ended = False
        """The server ended the response (its last chunk came)."""
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._received += data
        if self.head is None:
            head, separator, rest = self._received.partition(b"\r\n\r\n")
            if not separator:
                return
            # with an empty last chunk: RawResponse reads a chunked body to its end
            self.head = RawResponse(head + b"\r\n\r\n0\r\n\r\n")
            self._received = rest
        self._dechunk()
        self._wake()

    def _dechunk(self) -> None:
        while b"\r\n" in self._received:
            size_line, _, rest = self._received.partition(b"\r\n")
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self._body += rest[:size]
            self._received = rest[size + 2:]
            if size == 0:
                self.ended = True
        blocks = self._body.split(b"\n\n")
        self._body = blocks.pop()
        for block in blocks:
            if block.startswith(b":"):
                self.comments += 1
                continue
            fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
            self.events.append((fields[b"event"].decode(), fields[b"id"].decode(),
                                json.loads(fields[b"data"])))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.callback(None)

    async def wait(self) -> None:
        """Until something arrives, or the connection closes."""
        if self.closed.called:
            raise AssertionError(f"closed after {len(self.events)} events: {self.events}")
        self._changed = Deferred()
        await self._changed

    async def end(self) -> None:
        """Until the server ended the response."""
        while not self.ended:
            await self.wait()

    async def until(self, count: int) -> list[tuple[str, str, Any]]:
        """The events once there are ``count`` (fails if the stream closes before)."""
        while len(self.events) < count:
            await self.wait()
        return self.events

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def stop_reading(self) -> None:
        """Read nothing more, with a small receive buffer: Linux grows a loopback socket's to
        32 MiB otherwise, which the proxy would fill before holding anything itself."""
        assert self.transport is not None
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def start_reading(self) -> None:
        assert self.transport is not None
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self) -> Deferred[None]:
        assert self.transport is not None
        self.transport.loseConnection()
        return self.closed


class EventStreamTestCase(APITestCase):
    async def start(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.link_clock = Clock()
        await self.daemon(company(), clock=self.clock, link_clock=self.link_clock, **kwargs)
        self.alice = self.pbx.user("alice").jid

    async def stream(self, auth: tuple[str, str] = ALICE, last_event_id: str | None = None,
                     method: str = "GET") -> EventClient:
        """A stream open (its headers in), its user's call monitor running."""
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        extra = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
        client = EventClient(f"{method} /mx/dev/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Authorization: Basic {token}\r\n{extra}\r\n".encode())
        self.addCleanup(lambda: client.close() if not client.closed.called else None)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.http_port),
                              client)
        while client.head is None and not client.closed.called:
            await next_turn()
        if client.head is not None and client.head.status == 200 and method == "GET":
            while self.d.calls.monitors.monitored(self.pbx.user(auth[0]).jid) is None:
                await next_turn()
        return client

    def voicemail(self, number: int, **fields: Any) -> str | None:
        event = self.d.hub.publish(self.alice, VOICEMAIL, {"id": str(number), **fields})
        return None if event is None else event.id

    async def link_bounce(self) -> None:
        """The MX link drops, then comes back and restarts the monitors."""
        assert self.d.server.protocol is not None
        closed = self.d.server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        started = self.pbx.wait_for("MonitorStart")
        self.link_clock.advance(1)
        await self.d.server.when_ready()
        await started
        while self.d.calls.monitors.monitored(self.alice) is None:
            await next_turn()


class StreamTests(EventStreamTestCase):
    async def test_the_headers_of_a_stream(self) -> None:
        await self.start()
        client = await self.stream()
        assert client.head is not None
        self.assertEqual((client.head.status, client.head.header(b"content-type"),
                          client.head.header(b"cache-control"),
                          client.head.header(b"transfer-encoding")),
                         (200, b"text/event-stream", b"no-cache", b"chunked"))

    async def test_every_kind_of_event_arrives_in_order(self) -> None:
        await self.start()
        client = await self.stream()
        call = self.pbx.place_call(CALLER, "3001")
        await client.until(1)
        added = self.pbx.add_contact(Contact(jid="", first_name="Dee", business_phone="3009"))
        await client.until(2)
        self.voicemail(7, **{"from": CALLER, "duration": 12})
        self.pbx.hang_up(call)
        await client.until(4)
        await self.link_bounce()
        events = await client.until(6)
        self.assertEqual(client.kinds(),
                         ["call", "contact", "voicemail", "call", "link", "link"])
        self.assertEqual([data.get("event", data.get("state")) for _, _, data in events],
                         ["ringing", None, None, "ended", "down", "up"])
        self.assertEqual(events[1][2]["jid"], added.jid)
        self.assertEqual(events[2][2], {"id": "7", "from": CALLER, "duration": 12})
        ids = [int(event_id.rpartition("-")[2]) for _, event_id, _ in events]
        self.assertEqual(ids, sorted(ids))

    async def test_voicemail_from_the_mx_and_from_the_api(self) -> None:
        await self.start()
        client = await self.stream()
        left = self.pbx.leave_voicemail("alice", b"RIFF....", from_number=CALLER,
                                        from_name="Jane Doe", duration=4)
        await client.until(1)
        response, body = await self.d.request("PATCH", f"/voicemail/{left.mail_id}", ALICE,
                                              json.dumps({"read": True}).encode())
        self.assertEqual(response.code, 204, body)
        response, body = await self.d.request("DELETE", f"/voicemail/{left.mail_id}", ALICE)
        self.assertEqual(response.code, 204, body)
        events = await client.until(3)
        mail_id = str(left.mail_id)
        self.assertEqual([data for _, _, data in events],
                         [{"id": mail_id, "event": "new", "from": CALLER, "fromName": "Jane Doe",
                           "duration": 4, "mediaType": "VoiceMail"},
                          {"id": mail_id, "event": "updated", "read": True},
                          {"id": mail_id, "event": "deleted"}])
        self.assertEqual(client.kinds(), ["voicemail"] * 3)

    async def test_unauthenticated_and_head(self) -> None:
        await self.start()
        refused = await self.stream(auth=("alice", "wrong"))
        assert refused.head is not None
        self.assertEqual(refused.head.status, 403)
        head = await self.stream(method="HEAD")
        assert head.head is not None
        self.assertEqual((head.head.status, head.head.header(b"content-type"), head.events),
                         (200, b"text/event-stream", []))

    async def test_an_mx_without_a_hub_answers_501(self) -> None:
        await self.start()
        access = self.d.api.auth.access
        access["dev"] = attrs.evolve(access["dev"], events=None)
        client = await self.stream()
        assert client.head is not None
        self.assertEqual(client.head.status, 501)

    async def test_a_comment_every_fifteen_seconds_and_no_deadline(self) -> None:
        await self.start()
        client = await self.stream()
        for _ in range(int(IDLE_TIMEOUT * 4 / KEEPALIVE)):
            self.clock.advance(KEEPALIVE)
        comments = 1 + int(IDLE_TIMEOUT * 4 / KEEPALIVE)  # the opening one, then each tick
        while client.comments < comments:
            await next_turn()
        self.voicemail(1)
        await client.until(1)
        self.assertFalse(client.closed.called)

    async def test_the_metrics_time_a_stream_until_it_opened(self) -> None:
        metrics = Metrics()
        await self.start(metrics=metrics)
        client = await self.stream()
        self.clock.advance(3600)
        await client.close()
        labels = {"route": "/mx/{mx}/events", "method": "GET"}
        registry = metrics.registry
        while not registry.get_sample_value("mxproxy_http_request_duration_seconds_count",
                                            labels):
            await next_turn()
        self.assertEqual((registry.get_sample_value("mxproxy_http_requests_total",
                                                    {**labels, "status": "200"}),
                          registry.get_sample_value(
                              "mxproxy_http_request_duration_seconds_sum", labels)),
                         (1.0, 0.0))


class ResumeTests(EventStreamTestCase):
    async def test_resume_returns_exactly_the_missed_events(self) -> None:
        await self.start()
        first = await self.stream()
        self.voicemail(1)
        call = self.pbx.place_call(CALLER, "3001")
        seen = await first.until(2)
        await first.close()
        self.pbx.hang_up(call)  # while no stream is open: the monitor runs on
        while len(self.d.hub._users[self.alice].events) < 3:
            await next_turn()
        self.voicemail(2)
        resumed = await self.stream(last_event_id=seen[1][1])
        missed = await resumed.until(2)
        self.assertEqual([(kind, data.get("event", data.get("id"))) for kind, _, data in missed],
                         [("call", "ended"), ("voicemail", "2")])
        self.voicemail(3)
        self.assertEqual((await resumed.until(3))[2][2], {"id": "3"})

    async def test_an_id_older_than_the_buffer_gets_reset_first(self) -> None:
        await self.start()
        first = await self.stream()
        oldest = self.voicemail(0)
        await first.until(1)
        await first.close()
        for number in range(1, REPLAY_EVENTS + 2):  # 1 is missed, and no longer kept
            self.voicemail(number)
        resumed = await self.stream(last_event_id=oldest)
        self.voicemail(REPLAY_EVENTS + 2)
        events = await resumed.until(2)
        self.assertEqual([(kind, data) for kind, _, data in events],
                         [("reset", {"reason": "expired"}),
                          ("voicemail", {"id": str(REPLAY_EVENTS + 2)})])

    async def test_an_id_from_another_run_gets_reset(self) -> None:
        await self.start()
        resumed = await self.stream(last_event_id="00000000-5")
        self.assertEqual((await resumed.until(1))[0][2], {"reason": "unknown"})


class SlowClientTests(EventStreamTestCase):
    async def test_a_client_that_does_not_read_is_cut_while_another_goes_on(self) -> None:
        await self.start()
        slow, reading = await self.stream(), await self.stream()
        slow.stop_reading()
        padding = "x" * 65536
        published = 0
        while self.d.hub.streams() == 2:
            self.voicemail(published, padding=padding)
            published += 1
            await reading.until(published)
            # the proxy's socket buffer takes up to 4 MiB before the proxy holds anything
            self.assertLess(published * len(padding), 8 * QUEUE_LIMIT, "never cut")
        self.voicemail(published)
        self.assertEqual((await reading.until(published + 1))[-1][2], {"id": str(published)})
        slow.start_reading()  # only now can it see that the proxy aborted the connection
        await slow.closed
        self.assertFalse(slow.ended)
        self.assertLess(len(slow.events), published)
        self.assertFalse(reading.closed.called)

    async def test_a_new_stream_beyond_the_cap_ends_the_oldest(self) -> None:
        await self.start(connections_per_address=0)
        streams = [await self.stream() for _ in range(STREAMS_PER_USER + 1)]
        await streams[0].end()  # a clean end of the response
        self.voicemail(1)
        for client in streams[1:]:
            await client.until(1)


class LinkAndCredentialTests(EventStreamTestCase):
    async def test_the_stream_survives_a_link_drop_and_carries_calls_after_it(self) -> None:
        await self.start()
        client = await self.stream()
        await self.link_bounce()
        self.pbx.place_call(CALLER, "3001")
        events = await client.until(3)
        self.assertEqual([(kind, data.get("state")) for kind, _, data in events],
                         [("link", "down"), ("link", "up"), ("call", "ringing")])

    async def test_the_credentials_are_checked_again_when_the_auth_cache_lapses(self) -> None:
        await self.start()
        client = await self.stream()
        logins = self.d.pool.logins
        self.clock.advance(AUTH_TTL)
        while self.d.pool.logins == logins:
            await next_turn()
        self.voicemail(1)
        await client.until(1)
        self.pbx.user("alice").password = "changed"
        self.clock.advance(AUTH_TTL)
        await client.end()
        self.assertEqual(self.d.hub.streams(), 0)

    async def test_streams_ended_by_a_new_password_do_not_block_it(self) -> None:
        """The checks of a user's open streams are no guesses: the streams of six devices
        failing their check together must not block the account with its new password."""
        await self.start()
        streams = [await self.stream() for _ in range(6)]
        self.pbx.user("alice").password = "changed"
        self.clock.advance(AUTH_TTL)
        for client in streams:
            await client.end()
        response, _ = await self.get("/addressbook", auth=("alice", "changed"))
        self.assertEqual(response.code, 200)
