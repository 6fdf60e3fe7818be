"""The frame codec: encoding, incremental decoding, and every malformed header."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.csta.frame import (
    MAX_BODY_SIZE,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    encode,
)


class EncodeTests(SynchronousTestCase):
    def test_keepalive_bytes_match_the_wire(self) -> None:
        self.assertEqual(encode(0, b"<keepalive />"),
                         bytes.fromhex("0000001530303030") + b"<keepalive />")

    def test_documented_examples(self) -> None:
        self.assertEqual(encode(1, b"<MonitorStartAb/>")[:8], bytes.fromhex("0000001930303031"))
        body = b'<iq type="get" id="addressbook" index="0"></iq>'
        self.assertEqual(encode(2, body)[:8], bytes.fromhex("0000003730303032"))

    def test_largest_body_fits(self) -> None:
        frame = encode(9998, b"x" * MAX_BODY_SIZE)
        self.assertEqual(frame[2:4], b"\xff\xff")
        self.assertEqual(len(frame), 0xFFFF)

    def test_body_over_the_limit_raises(self) -> None:
        self.assertRaises(FrameTooLarge, encode, 1, b"x" * (MAX_BODY_SIZE + 1))

    def test_invoke_id_out_of_range_raises(self) -> None:
        self.assertRaises(ValueError, encode, 10000, b"<a/>")
        self.assertRaises(ValueError, encode, -1, b"<a/>")


class DecoderTests(SynchronousTestCase):
    def test_split_byte_by_byte(self) -> None:
        decoder = FrameDecoder()
        data = encode(7, b"<a/>") + encode(9999, b"<b/>")
        frames = [frame for byte in data for frame in decoder.feed(bytes([byte]))]
        self.assertEqual(frames, [Frame(7, b"<a/>"), Frame(9999, b"<b/>")])
        self.assertEqual(decoder.buffered, 0)

    def test_coalesced_frames_in_one_read(self) -> None:
        decoder = FrameDecoder()
        data = b"".join(encode(i, b"<m%d/>" % i) for i in range(1, 6))
        self.assertEqual(decoder.feed(data), [Frame(i, b"<m%d/>" % i) for i in range(1, 6)])

    def test_partial_frame_is_held_back(self) -> None:
        decoder = FrameDecoder()
        data = encode(3, b"<abc/>")
        self.assertEqual(decoder.feed(data[:10]), [])
        self.assertEqual(decoder.buffered, 10)
        self.assertEqual(decoder.feed(data[10:]), [Frame(3, b"<abc/>")])

    def test_frames_are_decoded_only_when_taken(self) -> None:
        decoder = FrameDecoder()
        frames = decoder.frames(encode(1, b"<ok/>") + b"\x01\x00\x00\x0c0002<x/>")
        self.assertEqual(next(frames), Frame(1, b"<ok/>"))
        self.assertIsNone(decoder.error, "what follows was not even looked at")
        self.assertEqual(list(frames), [])
        self.assertIn("header bytes 0-1", str(decoder.error))

    def test_awaited_is_the_size_of_the_frame_held_back(self) -> None:
        decoder = FrameDecoder()
        self.assertEqual(decoder.awaited, 0)
        decoder.feed(b"\0\0")
        self.assertEqual(decoder.awaited, 8)  # a header, at least
        decoder.feed(b"\xff\xff0001<x")
        self.assertEqual((decoder.buffered, decoder.awaited), (10, 65535))

    def test_empty_body_is_a_frame(self) -> None:
        self.assertEqual(FrameDecoder().feed(b"\0\0\0\x080001"), [Frame(1, b"")])

    def _broken(self, header: bytes, reason: str) -> None:
        decoder = FrameDecoder()
        good = encode(1, b"<ok/>")
        self.assertEqual(decoder.feed(good + header + b"<x/>"), [Frame(1, b"<ok/>")])
        self.assertIsNotNone(decoder.error)
        self.assertIn(reason, str(decoder.error))
        self.assertEqual(decoder.feed(good), [], "a broken stream accepts nothing more")

    def test_broken_header_is_reported_once_the_header_is_complete(self) -> None:
        decoder = FrameDecoder()
        for byte in b"\x00\x07\xff\xff000":  # bytes 0-1 broken, a length of 65535
            self.assertEqual(decoder.feed(bytes([byte])), [])
        self.assertIsNone(decoder.error)
        decoder.feed(b"1")
        self.assertIn("header bytes 0-1", str(decoder.error))

    def test_nonzero_byte_0(self) -> None:
        self._broken(b"\x01\0\0\x0c0001", "header bytes 0-1")

    def test_nonzero_byte_1(self) -> None:
        self._broken(b"\0\x01\0\x0c0001", "header bytes 0-1")

    def test_length_shorter_than_header(self) -> None:
        for length in range(8):
            with self.subTest(length=length):
                self._broken(b"\0\0\0" + bytes([length]) + b"0001", "shorter than the 8-byte")

    def test_non_digit_invoke_id(self) -> None:
        for ident in (b"00a1", b" 001", b"-001", b"\xff001", b"+001"):
            with self.subTest(ident=ident):
                self._broken(b"\0\0\0\x0c" + ident, "not 4 decimal digits")


frames = st.lists(
    st.tuples(st.integers(0, 9999), st.binary(max_size=300)), max_size=20)


class DecoderProperties(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(frames=frames, cuts=st.lists(st.integers(0, 10**6), max_size=30))
    def test_any_chunking_gives_the_frames_back(self, frames: list[tuple[int, bytes]],
                                                cuts: list[int]) -> None:
        stream = b"".join(encode(ident, body) for ident, body in frames)
        points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
        decoder = FrameDecoder()
        decoded: list[Frame] = []
        for start, end in zip(points, points[1:], strict=False):
            decoded.extend(decoder.feed(stream[start:end]))
        self.assertEqual(decoded, [Frame(ident, body) for ident, body in frames])
        self.assertIsNone(decoder.error)
        self.assertEqual(decoder.buffered, 0)
