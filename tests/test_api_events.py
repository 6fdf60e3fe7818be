"""GET events over real loopback sockets against the simulator: every kind of event in order,
resume with Last-Event-ID, reset, a client that does not read, an MX link drop, the limits."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from mxproxy.api.events import MAX_STREAMS_PER_USER
from mxproxy.testing.mxsim.model import Contact
from tests.support import drop_sessions
from tests.test_api import ALICE, APITestCase

BOB = ("bob", "bob-secret")
CALLER = "+12125550142"


class Stream(Protocol):
    """An SSE client on a raw socket: the status, then each event as (kind, id, data)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.raw = b""
        self.events: list[tuple[str, str, Any]] = []
        self.comments = 0
        self.closed: Deferred[None] = Deferred()
        self._waiters: list[tuple[int, Deferred[None]]] = []

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1]) if self.raw.startswith(b"HTTP/") else 0

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        head, found, body = self.raw.partition(b"\r\n\r\n")
        if not found:
            return
        self.events, self.comments = [], 0
        for block in _unchunked(body).split(b"\n\n")[:-1]:
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "event" in fields:
                self.events.append((fields["event"], fields["id"], json.loads(fields["data"])))
        for count, waiter in list(self._waiters):
            if len(self.events) >= count:
                self._waiters.remove((count, waiter))
                waiter.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def wait_for(self, count: int) -> Deferred[None]:
        """Fires once ``count`` events have come."""
        waiter: Deferred[None] = Deferred()
        if len(self.events) >= count:
            waiter.callback(None)
        else:
            self._waiters.append((count, waiter))
        return waiter

    def kinds(self) -> list[tuple[str, str]]:
        return [(kind, data.get("event", "")) for kind, _, data in self.events]


def _unchunked(body: bytes) -> bytes:
    out = b""
    while body:
        size, found, rest = body.partition(b"\r\n")
        if not found or not size:
            break
        length = int(size, 16)
        if len(rest) < length:
            break
        out, body = out + rest[:length], rest[length + 2:]
    return out


class EventsTestCase(APITestCase):
    async def stream(self, auth: tuple[str, str] = ALICE, last: str | None = None) -> Stream:
        """An open stream: the route has answered (and the user's monitor runs)."""
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request = (f"GET /mx/dev/events HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                   + (f"Last-Event-ID: {last}\r\n" if last is not None else "") + "\r\n")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.d.http_port)
        stream = await connectProtocol(endpoint, Stream(request.encode()))

        async def close() -> None:
            if not stream.closed.called:
                assert stream.transport is not None
                stream.transport.loseConnection()
                await stream.closed

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        await until(lambda: b"\r\n\r\n" in stream.raw or stream.closed.called)
        if stream.status == 200:
            await until(lambda: b": mxproxy events" in stream.raw or stream.closed.called)
        return stream


async def until(condition: Callable[[], object]) -> None:
    """Let the reactor run until ``condition`` holds (state no event announces)."""
    deadline = reactor.seconds() + 10
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError("timed out")
        waiter: Deferred[None] = Deferred()
        reactor.callLater(0.001, waiter.callback, None)
        await waiter


class StreamTests(EventsTestCase):
    async def test_every_kind_in_order(self) -> None:
        await self.daemon()
        stream = await self.stream()
        self.assertEqual(stream.status, 200)
        self.assertIn(b"Content-Type: text/event-stream", stream.raw)
        call = self.pbx.place_call(CALLER, "3001", calling_name="Jane Doe")
        await stream.wait_for(1)
        self.pbx.answer(call)
        await stream.wait_for(2)
        self.pbx.hang_up(call)
        await stream.wait_for(3)
        self.pbx.leave_voicemail("alice", b"RIFF....", from_number="3002", from_name="Bob",
                                 duration=4)
        await stream.wait_for(4)
        self.pbx.add_contact(Contact(jid="43884850000012345", first_name="New",
                                     business_phone="3999"))
        await stream.wait_for(5)
        self.assertEqual(stream.kinds(), [("call", "ringing"), ("call", "connected"),
                                          ("call", "ended"), ("voicemail", "new"),
                                          ("contact", "added")])
        ringing = stream.events[0][2]
        self.assertEqual((ringing["callId"], ringing["state"], ringing["peer"],
                          ringing["peerName"]), (call.call_id, "ringing", CALLER, "Jane Doe"))
        self.assertEqual(stream.events[2][2]["state"], "ended")
        self.assertEqual({k: stream.events[3][2][k] for k in ("from", "duration", "mediaType")},
                         {"from": "3002", "duration": 4, "mediaType": "VoiceMail"})
        self.assertEqual(stream.events[4][2]["contact"]["ext"], "3999")
        numbers = [int(event_id.rpartition("-")[2]) for _, event_id, _ in stream.events]
        self.assertEqual(numbers, sorted(numbers))

    async def test_changes_made_through_the_api(self) -> None:
        await self.daemon()
        mail = self.pbx.add_voicemail("alice", b"RIFF....", from_number="3002")
        stream = await self.stream()
        response, body = await self.send("PATCH", f"/voicemail/{mail.mail_id}", {"read": True})
        self.assertEqual(response.code, 204, body)
        response, body = await self.send("DELETE", f"/voicemail/{mail.mail_id}")
        await stream.wait_for(2)
        self.assertEqual([data for _, _, data in stream.events],
                         [{"id": str(mail.mail_id), "event": "updated", "read": True},
                          {"id": str(mail.mail_id), "event": "deleted"}])

    async def test_resume_replays_exactly_what_was_missed(self) -> None:
        await self.daemon()
        first = await self.stream()
        for n in range(3):
            self.d.events.publish(self.pbx.user("alice").jid, "voicemail", {"n": n})
        await first.wait_for(3)
        first.transport.loseConnection()  # type: ignore[union-attr]
        await first.closed
        for n in range(3, 5):  # while the app had no stream
            self.d.events.publish(self.pbx.user("alice").jid, "voicemail", {"n": n})
        resumed = await self.stream(last=first.events[0][1])
        await resumed.wait_for(4)
        self.assertEqual([data["n"] for _, _, data in resumed.events], [1, 2, 3, 4])
        self.assertEqual([event_id for _, event_id, _ in resumed.events[:2]],
                         [event_id for _, event_id, _ in first.events[1:]])

    async def test_an_id_older_than_the_buffer_or_from_elsewhere_gets_reset(self) -> None:
        await self.daemon()
        first = await self.stream()
        jid = self.pbx.user("alice").jid
        for n in range(300):  # more than the 256 kept
            self.d.events.publish(jid, "voicemail", {"n": n})
        await first.wait_for(300)
        old = await self.stream(last=first.events[0][1])
        await old.wait_for(1)
        self.assertEqual(old.events[0][0], "reset")
        other = await self.stream(last="0000beef-7")  # another process's id
        await other.wait_for(1)
        self.assertEqual([kind for kind, _, _ in other.events], ["reset"])
        self.d.events.publish(jid, "voicemail", {"n": 300})
        await other.wait_for(2)
        self.assertEqual(other.events[1][2], {"n": 300})

    async def test_a_client_that_does_not_read_is_cut_and_the_others_go_on(self) -> None:
        await self.daemon()
        slow = await self.stream()
        slow.transport.pauseProducing()  # type: ignore[union-attr]
        other = await self.stream(BOB)
        big = {"pad": "x" * 16384}
        for _ in range(1000):  # 16 MB: more than the socket buffers and the 1 MiB cap
            self.d.events.publish(self.pbx.user("alice").jid, "voicemail", big)
            if slow.closed.called:
                break
        slow.transport.resumeProducing()  # type: ignore[union-attr]
        await slow.closed
        self.d.events.publish(self.pbx.user("bob").jid, "voicemail", {"after": True})
        await other.wait_for(1)
        self.assertEqual(other.events[0][2], {"after": True})
        self.assertEqual(self.d.events.streams(self.pbx.user("alice").jid), 0)

    async def test_the_stream_survives_a_link_drop(self) -> None:
        link = Clock()
        await self.daemon(link_clock=link)
        stream = await self.stream()
        await drop_sessions(self.pbx)
        await stream.wait_for(1)
        ready = self.d.server.when_ready()
        link.advance(1)  # the first retry is due
        await ready
        await stream.wait_for(2)
        await until(lambda: self.d.calls.monitors.monitored(self.pbx.user("alice").jid))
        self.pbx.place_call(CALLER, "3001")
        await stream.wait_for(3)
        self.assertEqual(stream.kinds(), [("link", ""), ("link", ""), ("call", "ringing")])
        self.assertEqual([data.get("state") for _, _, data in stream.events[:2]],
                         ["down", "up"])


class LimitTests(EventsTestCase):
    async def test_keep_alive_comments(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        stream = await self.stream()
        comments = stream.comments
        clock.advance(15)
        await until(lambda: stream.comments == comments + 1)
        clock.advance(15)
        await until(lambda: stream.comments == comments + 2)

    async def test_streams_per_user(self) -> None:
        await self.daemon()
        for _ in range(MAX_STREAMS_PER_USER):
            self.assertEqual((await self.stream()).status, 200)
        refused = await self.stream()
        self.assertEqual(refused.status, 429)
        self.assertEqual((await self.stream(BOB)).status, 200)

    async def test_a_password_changed_on_the_mx_ends_the_stream(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        stream = await self.stream()
        self.pbx.user("alice").password = "changed"
        clock.advance(30 * 60)
        await stream.closed
        self.assertEqual(self.d.events.streams(self.pbx.user("alice").jid), 0)
