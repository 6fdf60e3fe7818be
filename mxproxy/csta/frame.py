"""The MX frame: 2 zero bytes, big-endian uint16 total length (header included), 4 ASCII digits id.

Pure functions and a small incremental decoder; nothing here knows about XML or Twisted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

HEADER_SIZE = 8
MAX_FRAME_SIZE = 0xFFFF
MAX_BODY_SIZE = MAX_FRAME_SIZE - HEADER_SIZE  # 65,527 bytes of XML at most
KEEPALIVE_ID = 0
EVENT_ID = 9999
MAX_REQUEST_ID = 9998

_LENGTH = struct.Struct(">H")


class FrameError(ValueError):
    """The byte stream is not a valid sequence of frames; the connection cannot continue."""


class FrameTooLarge(ValueError):
    """An outgoing XML body does not fit the 16-bit length field."""


class Frame(NamedTuple):
    invoke_id: int
    body: bytes


def encode(invoke_id: int, body: bytes) -> bytes:
    """One frame for ``body``; raises before anything is written if it cannot be framed."""
    if len(body) > MAX_BODY_SIZE:
        raise FrameTooLarge(f"XML of {len(body)} bytes exceeds the frame limit of {MAX_BODY_SIZE}")
    if not 0 <= invoke_id <= EVENT_ID:
        raise ValueError(f"invoke id {invoke_id} is outside 0..9999")
    return b"\0\0" + _LENGTH.pack(len(body) + HEADER_SIZE) + b"%04d" % invoke_id + body


class FrameDecoder:
    """Turns arbitrarily split or coalesced reads back into frames.

    A broken header puts the stream out of sync for good: :meth:`feed` still returns the frames
    that preceded it, sets :attr:`error`, and ignores all later input; the caller must close the
    connection. :meth:`frames` is the same, lazily.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        return list(self.frames(data))

    def frames(self, data: bytes) -> Iterator[Frame]:
        """The frames ``data`` completes, each decoded only when taken: a reader that stops
        early (it is dropping the link) leaves the rest of a flood undecoded, and lost."""
        if self.error is not None:
            return
        if self._buffer:
            # Continue an unfinished frame; only copy once the whole of it can be there.
            self._buffer += data
            if len(self._buffer) < self._needed():
                return
            data = bytes(self._buffer)
            self._buffer.clear()
        pos = 0
        available = len(data)
        while available - pos >= HEADER_SIZE:
            if data[pos] or data[pos + 1]:
                self._fail(f"header bytes 0-1 are {data[pos:pos + 2].hex()}, expected 0000")
                return
            length = (data[pos + 2] << 8) | data[pos + 3]
            if length < HEADER_SIZE:
                self._fail(f"frame length {length} is shorter than the 8-byte header")
                return
            if available - pos < length:
                break
            ident = data[pos + 4:pos + 8]
            if not ident.isdigit():
                self._fail(f"invoke id {ident!r} is not 4 decimal digits")
                return
            yield Frame(int(ident), data[pos + HEADER_SIZE:pos + length])
            pos += length
        if pos < available:
            self._buffer += data[pos:]

    def _needed(self) -> int:
        """Bytes the buffered frame needs before it can be decoded (a header at least)."""
        buffer = self._buffer
        if len(buffer) < 4 or buffer[0] or buffer[1]:
            return HEADER_SIZE  # a broken header is reported once complete, whatever its length
        return max(HEADER_SIZE, (buffer[2] << 8) | buffer[3])

    def _fail(self, reason: str) -> None:
        self.error = FrameError(reason)
        self._buffer.clear()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    @property
    def awaited(self) -> int:
        """Size of the incomplete frame held back (its announced length once the header is in,
        until then the header's); 0 when there is none."""
        return self._needed() if self._buffer else 0
