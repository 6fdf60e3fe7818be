"""VoicemailStream with a stand-in link and response: flow control, the chunk-sequence guard and
the client that stops reading."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.api.mailstream import STALL_TIMEOUT, VoicemailStream, attachment, content_type
from mxproxy.csta import xml
from mxproxy.csta.messages import Chunk
from mxproxy.csta.protocol import Message


def chunk_element(number: int, total: int, data: bytes) -> xml.Element:
    return xml.parse(b'<MailReceiveIncomingResponse mailId="7" chunkNumber="%d" totalChunks="%d">'
                     b"<fileFormat>wav</fileFormat><documentName>u1/m0007.wav</documentName>"
                     b"<mediaContent>%s</mediaContent></MailReceiveIncomingResponse>"
                     % (number, total, base64.b64encode(data)))


class ScriptedLink:
    """Answers MailReceiveIncoming with the chunks it is given, one request at a time."""

    up = True

    def __init__(self, chunks: list[xml.Element]) -> None:
        self.chunks = chunks
        self.sent: list[str] = []
        self.pending: Deferred[Message] | None = None

    def request(self, body: xml.Element) -> Deferred[Message]:
        name = xml.local_name(body)
        self.sent.append(name)
        if name == "MailCancelReceive":
            return succeed(Message(1, "MailCancelReceiveResponse", xml.build("r")))
        self.pending = Deferred()
        return self.pending

    def answer(self) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None
        pending.callback(Message(1, "MailReceiveIncomingResponse", self.chunks.pop(0)))


class Response:
    """The parts of twisted.web's Request the stream uses."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.lost = False
        self.finished: Deferred[None] = Deferred()
        self.transport = StringTransport()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def notifyFinish(self) -> Deferred[None]:
        return self.finished

    def loseConnection(self) -> None:
        self.lost = True


def stream(chunks: list[xml.Element], clock: Clock | None = None,
           ) -> tuple[VoicemailStream, ScriptedLink, Response]:
    link, response = ScriptedLink(chunks[1:]), Response()
    first = Chunk.from_xml(chunks[0])
    voicemail = VoicemailStream(response, link, "7", first,  # type: ignore[arg-type]
                                Clock() if clock is None else clock)
    voicemail.start()
    return voicemail, link, response


class StreamTests(SynchronousTestCase):
    def test_all_chunks_in_order(self) -> None:
        voicemail, link, response = stream([chunk_element(n, 3, b"%d" % n) for n in (1, 2, 3)])
        done = voicemail.when_done()
        link.answer()
        link.answer()
        self.successResultOf(done)
        self.assertEqual(response.written, [b"2", b"3"])
        self.assertEqual(link.sent, ["MailReceiveIncoming"] * 2)
        self.assertIsNone(response.producer)

    def test_no_request_while_paused(self) -> None:
        voicemail, link, _ = stream([chunk_element(n, 4, b"x") for n in (1, 2, 3, 4)])
        link.answer()  # chunk 2 written, chunk 3 requested at once
        self.assertEqual(len(link.sent), 2)
        voicemail.pauseProducing()
        link.answer()
        self.assertEqual(len(link.sent), 2)  # chunk 4 waits for the client
        voicemail.resumeProducing()
        self.assertEqual(len(link.sent), 3)

    def test_last_chunk_written_while_paused_frees_the_session(self) -> None:
        # The MX owes nothing more: the user's other requests need not wait until the client
        # has read the rest of the response.
        voicemail, link, response = stream([chunk_element(n, 3, b"x") for n in (1, 2, 3)])
        link.answer()
        voicemail.pauseProducing()
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertIsNone(response.producer)
        self.assertEqual(link.sent, ["MailReceiveIncoming"] * 2)

    def test_paused_before_the_reply_asks_for_nothing_more(self) -> None:
        voicemail, link, _ = stream([chunk_element(n, 4, b"x") for n in (1, 2, 3, 4)])
        voicemail.pauseProducing()
        link.answer()  # chunk 2 arrives while paused
        self.assertEqual(link.sent, ["MailReceiveIncoming"])
        voicemail.resumeProducing()
        self.assertEqual(link.sent, ["MailReceiveIncoming"] * 2)

    def test_repeated_chunk_number_ends_the_download(self) -> None:
        voicemail, link, response = stream([chunk_element(1, 3, b"a"), chunk_element(1, 3, b"a")])
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertTrue(response.lost)
        self.assertEqual(link.sent, ["MailReceiveIncoming", "MailCancelReceive"])
        self.assertEqual(response.written, [])

    def test_chunk_beyond_the_total_ends_the_download(self) -> None:
        voicemail, link, response = stream([chunk_element(1, 2, b"a"), chunk_element(3, 2, b"c")])
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertTrue(response.lost)

    def test_client_gone_cancels_after_the_chunk_in_flight(self) -> None:
        voicemail, link, response = stream([chunk_element(n, 3, b"x") for n in (1, 2, 3)])
        response.finished.errback(ConnectionError("client went away"))
        self.assertEqual(link.sent, ["MailReceiveIncoming"])  # chunk 2 still in flight
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertEqual(link.sent, ["MailReceiveIncoming", "MailCancelReceive"])
        self.assertEqual(response.written, [])


class StalledClientTests(SynchronousTestCase):
    """A client that stops reading pauses the stream; paused for STALL_TIMEOUT, the transfer is
    cancelled, the connection cut and the session freed."""

    def test_paused_too_long_cancels_and_cuts(self) -> None:
        clock = Clock()
        voicemail, link, response = stream([chunk_element(n, 4, b"x") for n in range(1, 5)],
                                            clock)
        link.answer()  # chunk 2 written, chunk 3 asked for
        voicemail.pauseProducing()
        link.answer()  # chunk 3 written; chunk 4 waits for the client
        clock.advance(STALL_TIMEOUT - 0.1)
        self.assertNoResult(voicemail.when_done())
        self.assertFalse(response.transport.disconnecting)
        clock.advance(0.1)
        self.successResultOf(voicemail.when_done())
        self.assertEqual(link.sent, ["MailReceiveIncoming"] * 2 + ["MailCancelReceive"])
        self.assertTrue(response.transport.disconnected, "aborted, not closed gracefully")
        self.assertIsNone(response.producer)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reading_again_restarts_the_wait(self) -> None:
        clock = Clock()
        voicemail, link, response = stream([chunk_element(n, 4, b"x") for n in range(1, 5)],
                                            clock)
        link.answer()
        voicemail.pauseProducing()
        clock.advance(STALL_TIMEOUT - 1)
        voicemail.resumeProducing()
        voicemail.pauseProducing()
        clock.advance(STALL_TIMEOUT - 1)
        self.assertFalse(response.transport.disconnecting)
        clock.advance(1)
        self.assertTrue(response.transport.disconnected)

    def test_stalled_with_a_chunk_in_flight_cancels_after_it(self) -> None:
        clock = Clock()
        voicemail, link, response = stream([chunk_element(n, 3, b"x") for n in (1, 2, 3)],
                                            clock)
        voicemail.pauseProducing()  # before chunk 2 has come
        clock.advance(STALL_TIMEOUT)
        self.assertTrue(response.transport.disconnected)
        self.assertEqual(link.sent, ["MailReceiveIncoming"])
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertEqual(link.sent, ["MailReceiveIncoming", "MailCancelReceive"])
        self.assertEqual(response.written, [])

    def test_client_gone_while_paused_stops_the_clock(self) -> None:
        clock = Clock()
        voicemail, link, response = stream([chunk_element(n, 3, b"x") for n in (1, 2, 3)],
                                            clock)
        voicemail.pauseProducing()
        response.finished.errback(ConnectionError("client went away"))
        self.assertEqual(clock.getDelayedCalls(), [])
        link.answer()
        self.successResultOf(voicemail.when_done())
        self.assertFalse(response.transport.disconnecting, "closed by the client, not cut")


class HeaderTests(SynchronousTestCase):
    def test_content_types(self) -> None:
        self.assertEqual(content_type("wav"), "audio/wave")
        self.assertEqual(content_type("WAV"), "audio/wave")
        self.assertEqual(content_type("xyz"), "application/octet-stream")

    def test_attachment_names_are_safe(self) -> None:
        self.assertEqual(attachment("u00043/m0081.wav", "81", "wav"),
                         'attachment; filename="m0081.wav"')
        self.assertEqual(attachment('a"b\r\n.wav', "81", "wav"),
                         'attachment; filename="a_b__.wav"')
        self.assertEqual(attachment("", "81", "wav"), 'attachment; filename="voicemail-81.wav"')
