"""10,000 random and mutated frames into CSTAProtocol: nothing escapes, nothing goes unnoticed.

Each input goes to a fresh connection whose subscribers parse every known event into its typed
message, as the daemon does. Every input must end in exactly one of: parsed (dispatched, and any
typed parse succeeded), skipped (logged as malformed XML or a malformed event), closed (a bad
header closed the connection) or incomplete (the decoder holds bytes of an unfinished frame, or
the input was empty). Any other exception is logged as a failure by the protocol and fails the
test through trial's logged-error check.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.csta.frame import EVENT_ID, encode
from mxproxy.csta.messages import EVENTS, parse_event
from mxproxy.csta.protocol import CSTAProtocol, Trace

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
