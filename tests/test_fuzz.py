"""10,000 random and mutated frames into CSTAProtocol: nothing escapes, nothing goes unnoticed.
And mutated HTTP requests into the API on loopback: each gets a JSON answer, never a 5xx.

Each input goes to a fresh connection whose subscribers parse every known event into its typed
message, as the daemon does. Every input must end in exactly one of: parsed (dispatched, and any
typed parse succeeded), skipped (logged as malformed XML or a malformed event), closed (a bad
header closed the connection) or incomplete (the decoder holds bytes of an unfinished frame, or
the input was empty). Any other exception is logged as a failure by the protocol and fails the
test through trial's logged-error check.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy import __version__
from mxproxy.csta.frame import EVENT_ID, encode
from mxproxy.csta.messages import EVENTS, parse_event
from mxproxy.csta.protocol import CSTAProtocol, Trace
from tests.support import Daemon, exchange

INPUTS = 10_000
SEED = 20261126

CORPUS = [
    b'<ablist size="2" index="0"><abentry jid="43884850000000001"><firstName>T</firstName>'
    b"<businessPhone>3095</businessPhone><homeSystem>43884850000000099</homeSystem></abentry>"
    b"</ablist>",
    b'<AbDeleteUserEvent><userId>43884850000000003</userId></AbDeleteUserEvent>',
    b'<callloginfo><callinfo missed="true" direction="incoming"><record_id>973</record_id>'
    b"<gcid>ABC12-00-0000D-3B9</gcid><connectTimestamp>1503223469</connectTimestamp>"
    b"<callType>1</callType></callinfo></callloginfo>",
    b"<DeliveredEvent><monitorCrossRefID>12</monitorCrossRefID><connection><callID>21</callID>"
    b"<deviceID>3095</deviceID><globalCallID>1234567890123456789</globalCallID></connection>"
    b"<callingDevice><deviceIdentifier>3044</deviceIdentifier></callingDevice>"
    b"<calledDevice><deviceIdentifier>3095</deviceIdentifier></calledDevice>"
    b"<localConnectionInfo>alerting</localConnectionInfo><callTypeFlags>170917889</callTypeFlags>"
    b'<cad name="Account" type="string">42</cad></DeliveredEvent>',
    b"<ConnectionClearedEvent><monitorCrossRefID>12</monitorCrossRefID><droppedConnection>"
    b"<callID>21</callID><deviceID>3095</deviceID></droppedConnection>"
    b"<cause>normalClearing</cause></ConnectionClearedEvent>",
    b'<csta:EstablishedEvent xmlns:csta="http://www.ecma-international.org/standards/ecma-323/'
    b'csta/ed4"><csta:monitorCrossRefID>12</csta:monitorCrossRefID></csta:EstablishedEvent>',
    b'<MailIncomingReadyEvent from="3044" ownerId="1"><mailId>83</mailId><duration>12</duration>'
    b"<read>false</read></MailIncomingReadyEvent>",
    b'<RecordingStateEvent><monitorCrossRefID>1</monitorCrossRefID><RecIsAvailable>true'
    b"</RecIsAvailable></RecordingStateEvent>",
    b'<presence from="0" status="Available" mxStatus=""/>',
    b'<Logout mode="forced"/>',
    b'<?xml version="1.0" encoding="UTF-8"?>\n<TransferedEvent/>',
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random edit: flip, insert, delete, truncate, duplicate or splice."""
    buffer = bytearray(data)
    kind = rng.randrange(7)
    position = rng.randrange(len(buffer) + 1)
    if kind == 0 and buffer:
        buffer[min(position, len(buffer) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    elif kind == 2:
        del buffer[position:position + rng.randrange(1, 16)]
    elif kind == 3:
        del buffer[position:]
    elif kind == 4:
        buffer[position:position] = rng.choice([b"<", b">", b"&", b"]]>", b"&#0;", b"\xff\xfe",
                                                b"<!DOCTYPE x [<!ENTITY e 'x'>]>", b"&e;",
                                                b"notanumber", b"-1", b"99999999999999999999"])
    elif kind == 5:
        buffer += buffer[: rng.randrange(len(buffer) + 1)]
    else:
        buffer = bytearray(rng.choice(CORPUS)[: rng.randrange(200)]) + buffer[position:]
    return bytes(buffer)


def fuzz_input(rng: random.Random) -> bytes:
    """A frame with a mutated body, a mutated frame, random bytes, or a valid frame."""
    choice = rng.randrange(10)
    body = rng.choice(CORPUS)
    if choice < 5:
        return encode(rng.choice([EVENT_ID, 1, 0, 42]), mutate(rng, body))
    if choice < 8:
        return mutate(rng, encode(EVENT_ID, body))
    if choice < 9:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return encode(EVENT_ID, body)


def _recorder(invoke_ids: list[int]) -> Trace:
    return lambda direction, invoke_id, body: invoke_ids.append(invoke_id)


class FuzzTests(SynchronousTestCase):
    def test_ten_thousand_inputs(self) -> None:
        rng = random.Random(SEED)
        skipped: list[Any] = []

        def observe(event: dict[str, Any]) -> None:
            if "skipping" in (event.get("log_format") or ""):
                skipped.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        outcomes = {"parsed": 0, "skipped": 0, "closed": 0, "incomplete": 0}
        for _ in range(INPUTS):
            dispatched: list[int] = []
            protocol = CSTAProtocol(Clock(), trace=_recorder(dispatched))
            transport = StringTransport()
            protocol.makeConnection(transport)
            for name in EVENTS:
                protocol.subscribe(name, lambda message: parse_event(message.element))
            before = len(skipped)
            data = fuzz_input(rng)
            protocol.dataReceived(data)
            if transport.disconnecting:
                outcomes["closed"] += 1
            elif len(skipped) > before:
                outcomes["skipped"] += 1
            elif dispatched:
                outcomes["parsed"] += 1
            else:
                outcomes["incomplete"] += 1
                self.assertTrue(protocol._decoder.buffered > 0 or not data)
            protocol.connectionLost()
        self.assertEqual(sum(outcomes.values()), INPUTS)
        for outcome, count in outcomes.items():
            self.assertGreater(count, 100, f"the corpus exercises {outcome!r}: {outcomes}")


HTTP_INPUTS = 400
HTTP_CORPUS = [
    (b"GET", b"/mx/dev/addressbook", b""),
    (b"GET", b"/mx/dev/calllog?timestamp=1700000000", b""),
    (b"GET", b"/mx/dev/voicemail", b""),
    (b"GET", b"/mx/dev/voicemail/1", b""),
    (b"HEAD", b"/mx/dev/voicemail/1", b""),
    (b"DELETE", b"/mx/dev/voicemail/2", b""),
    (b"POST", b"/mx/dev/call", b'{"from": "3001", "to": "3002", "ringDelay": 2, "vmDelay": 20}'),
    (b"POST", b"/mx/dev/call", b"from=3001&to=3002&ringDelay=2"),
    (b"PATCH", b"/mx/dev/voicemail/1", b'{"note": "call back", "readed": true}'),
]
PATH_PIECES = [b"%00", b"%FF", b"%C3", b"%C3%A9", b"%2F", b"/", b"//", b"/..", b"?", b"?x=%FF",
               b"#", b"%", b"\xc3\xa9", b"\x80", b"*", b"http://x", b"9" * 30]
BODY_PIECES = [b"\\u0000", b"\\ud800", b"\\udfff", b"\\u007f", b"\\uffff", b'"', b"\\",
               b"[" * 5000, b"{" * 5000, b"9" * 5000, b"-", b"1e999", b"null", b",", b"}", b"%00",
               b"\xff\xfe", b"\x00"]
STATUSES = {200, 204, 400, 401, 403, 404, 405, 413, 414, 429, 431}


def mutate_request(rng: random.Random) -> tuple[bytes, bytes]:
    """A request of the corpus with pieces spliced into its target or its body, framed right
    (one request, Content-Length recomputed, Connection: close); returns (method, bytes)."""
    method, target, body = rng.choice(HTTP_CORPUS)
    for _ in range(rng.randrange(1, 4)):
        if rng.randrange(2) or not body:
            position = rng.randrange(1, len(target) + 1)
            target = target[:position] + rng.choice(PATH_PIECES) + target[position:]
        else:
            position = rng.randrange(len(body) + 1)
            body = body[:position] + rng.choice(BODY_PIECES) + body[position:]
    head = (method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Basic YWxpY2U6YWxpY2Utc2VjcmV0\r\n")
    if body:
        kind = b"json" if body.startswith(b"{") else b"x-www-form-urlencoded"
        head += b"Content-Type: application/" + kind + b"\r\nContent-Length: %d\r\n" % len(body)
    return method, head + b"\r\n" + body


class HTTPFuzzTests(TestCase):
    async def test_mutated_requests_get_json_answers_and_log_no_failure(self) -> None:
        from tests.test_api import company

        pbx = company(chunk_size=1000)
        for _ in range(3):
            pbx.add_voicemail("alice", b"RIFF" * 600)
        daemon = await Daemon(self, pbx).start()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        rng = random.Random(SEED)
        seen: dict[int, int] = {}
        for _ in range(HTTP_INPUTS):
            method, request = mutate_request(rng)
            response = await exchange(daemon.http_port, request)
            seen[response.status] = seen.get(response.status, 0) + 1
            self.assertIn(response.status, STATUSES, request[:300])
            self.assertEqual(response.header(b"server"), f"MXProxy/{__version__}".encode())
            if response.status >= 400 and method != b"HEAD":
                self.assertIsInstance(json.loads(response.body)["error"], str, request[:300])
        alarming = [event for event in events if event.get("log_failure") is not None
                    or event.get("log_level") in (LogLevel.warn, LogLevel.error,
                                                  LogLevel.critical)]
        self.assertEqual(alarming, [])
        for status in (200, 400, 404):
            self.assertGreater(seen.get(status, 0), 10, f"the corpus exercises {status}: {seen}")
