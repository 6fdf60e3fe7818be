"""One HTTP/2 client connection on Twisted: the glue between a TLS transport and ``h2``.

``h2`` speaks the protocol; this module does what it leaves to its user: insist on ALPN ``h2``,
call the connection ready only once the server's SETTINGS arrived, open streams within the
server's ``SETTINGS_MAX_CONCURRENT_STREAMS``, send bodies within the flow-control windows,
hand received data back to the window, PING after a quiet period to find a dead peer, and drain
after GOAWAY. It knows nothing of APNs: its owner hears of every change through one callback.

``h2`` moves its whole connection to CLOSED on the first GOAWAY sent or received, after which
it refuses the responses still owed on older streams (python-hyper/h2#1181). So GOAWAY frames
from the server are taken out of the byte stream and handled here, and ours is sent only once
nothing is in flight any more.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import cast

import attrs
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import FrameTooLargeError, ProtocolError
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame, GoAwayFrame
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from mxproxy.logs import Logger

log = Logger(__name__)

CONNECTING, READY, DRAINING, CLOSED = "connecting", "ready", "draining", "closed"
_FRAME_HEADER = 9
_GOAWAY = GoAwayFrame.type


class StreamFailed(Exception):
    """A request got no response; ``retriable`` when the server certainly never processed it."""

    def __init__(self, message: str, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@attrs.frozen
class H2Response:
    """A complete response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


@attrs.define
class _Stream:
    result: Deferred[H2Response]
    unsent: bytes
    status: int = 0
    headers: dict[str, str] = attrs.Factory(dict)
    body: bytearray = attrs.Factory(bytearray)


Listener = Callable[["H2ClientConnection"], None]


@implementer(IHandshakeListener)
class H2ClientConnection(Protocol):
    """The client end of one HTTP/2 connection over TLS.

    ``state`` goes ``connecting`` → ``ready`` → (``draining``) → ``closed``; ``on_change`` is
    called after every state change and whenever a stream slot frees up. ``error`` says why
    the connection failed or ended.
    """

    def __init__(self, clock: IReactorTime, on_change: Listener, label: str,
                 ping_interval: float, ping_timeout: float) -> None:
        self.state = CONNECTING
        self.error: str | None = None
        self.label = label
        self._clock = clock
        self._on_change = on_change
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self._streams: dict[int, _Stream] = {}
        self._inbox = bytearray()
        self._goaway_sent = False
        self._quiet: IDelayedCall | None = None
        self._dead: IDelayedCall | None = None
        self._close_deadline: IDelayedCall | None = None
        self._closed: list[Deferred[None]] = []

    # -- what the owner uses --------------------------------------------------------------

    @property
    def can_open_stream(self) -> bool:
        """Ready, not draining, and below the server's concurrent-stream limit. Counted from our
        own table: h2's ``open_outbound_streams`` walks every stream, which in a burst of a
        thousand concurrent pushes made each send cost a thousand steps."""
        return (self.state == READY
                and len(self._streams) < self._h2.remote_settings.max_concurrent_streams)

    @property
    def max_concurrent_streams(self) -> int:
        return self._h2.remote_settings.max_concurrent_streams

    def request(self, headers: list[tuple[str, str]], body: bytes) -> Deferred[H2Response]:
        """Open a stream (only when :attr:`can_open_stream`) and send a whole request.

        Fails with ``StreamFailed`` if the stream ends without a response; cancelling the
        Deferred resets the stream with CANCEL.
        """
        stream_id = self._h2.get_next_available_stream_id()
        self._h2.send_headers(stream_id, headers, end_stream=not body)
        stream = _Stream(Deferred(lambda _: self._cancel(stream_id)), body)
        self._streams[stream_id] = stream
        self._send_body(stream_id, stream)
        self._flush()
        return stream.result

    def close(self, timeout: float) -> Deferred[None]:
        """Open no more streams, let those in flight finish for up to ``timeout`` seconds,
        then say GOAWAY and disconnect. Fires once the connection is gone."""
        closed = self.when_closed()
        if self.transport is None:  # the TCP connection was never made
            self.state = CLOSED
            self._notify_closed()
        elif self.state == CONNECTING:
            self._abort("closed before it was ready")
        elif self.state != CLOSED:
            self.state = DRAINING
            self._stream_done()
            if self._streams and self._close_deadline is None:
                self._close_deadline = self._clock.callLater(
                    timeout, self._abort, f"closed with requests unanswered after {timeout:g} s")
        return closed

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (at once if it already is)."""
        if self.state == CLOSED:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed.append(waiter)
        return waiter

    # -- life cycle -----------------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        protocol = getattr(self.transport, "negotiatedProtocol", None)
        if protocol != b"h2":
            self._abort(f"{self.label} did not negotiate HTTP/2 (ALPN h2), got {protocol!r}")
            return
        self._h2.initiate_connection()
        self._flush()
        self._heard_from_peer()  # a server that never sends SETTINGS is found dead by PING

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.state = CLOSED
        if self.error is None:
            self.error = f"connection to {self.label} lost: {reason.getErrorMessage()}"
        self._stop_timers()
        self._on_change(self)  # before the requests fail, so their callers see it gone
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.result.errback(StreamFailed(self.error))
        self._notify_closed()

    def dataReceived(self, data: bytes) -> None:
        try:
            self._receive(data)
        except (ProtocolError, HyperframeError) as error:
            log.warn("HTTP/2 {label}: protocol error, closing: {error}", label=self.label,
                     error=error)
            self._flush()  # h2 has queued its GOAWAY
            self._abort(f"HTTP/2 protocol error from {self.label}: {error}")
        except Exception as error:  # a bug must cost this connection, never the reactor
            log.failure("HTTP/2 {label}: failed handling received data", label=self.label)
            self._abort(f"internal error on the connection to {self.label}: {error}")

    # -- receiving ------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        self._heard_from_peer()
        self._inbox += data
        while len(self._inbox) >= _FRAME_HEADER and not self._goaway_sent:
            end = _FRAME_HEADER + int.from_bytes(self._inbox[:3], "big")
            if end - _FRAME_HEADER > self._h2.max_inbound_frame_size:
                raise FrameTooLargeError(f"frame of {end - _FRAME_HEADER} bytes")
            if len(self._inbox) < end:
                break
            frame = bytes(self._inbox[:end])
            del self._inbox[:end]
            if frame[3] == _GOAWAY:
                self._goaway_received(frame)
            else:
                for event in self._h2.receive_data(frame):
                    if not self._goaway_sent:
                        self._handle(event)
        if not self._goaway_sent:
            self._flush()

    def _handle(self, event: Event) -> None:
        if isinstance(event, RemoteSettingsChanged):
            if self.state == CONNECTING:
                self.state = READY
            self._on_change(self)  # the first SETTINGS, or a new stream limit
            return
        if isinstance(event, WindowUpdated):
            for waiting_id, waiting in list(self._streams.items()):
                if waiting.unsent and event.stream_id in (0, waiting_id):
                    self._send_body(waiting_id, waiting)
            return
        stream_id: int = getattr(event, "stream_id", None) or 0
        if isinstance(event, DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream we already gave up on
        if isinstance(event, ResponseReceived):
            stream.headers = {str(name): str(value) for name, value in event.headers or ()}
            stream.status = int(stream.headers.get(":status", "0"))
        elif isinstance(event, DataReceived):
            stream.body += event.data or b""
        elif isinstance(event, StreamEnded):
            del self._streams[stream_id]
            stream.result.callback(H2Response(stream.status, stream.headers, bytes(stream.body)))
            self._stream_done()
        elif isinstance(event, StreamReset):
            self._fail_stream(stream_id, f"stream reset by {self.label} "
                              f"({_code_name(event.error_code)})",
                              retriable=event.error_code == ErrorCodes.REFUSED_STREAM)

    def _goaway_received(self, data: bytes) -> None:
        frame, _ = Frame.parse_frame_header(memoryview(data[:_FRAME_HEADER]))
        frame.parse_body(memoryview(data[_FRAME_HEADER:]))
        assert isinstance(frame, GoAwayFrame)
        log.warn("HTTP/2 {label}: GOAWAY ({code}, last stream {last}) {debug}", label=self.label,
                 code=_code_name(frame.error_code), last=frame.last_stream_id,
                 debug=frame.additional_data[:200].decode("utf-8", "replace"))
        if self.state in (CONNECTING, READY):
            self.state = DRAINING  # before failing streams: their retries must go elsewhere
        for stream_id in [sid for sid in self._streams if sid > frame.last_stream_id]:
            self._fail_stream(stream_id, f"{self.label} went away before the request",
                              retriable=True)
        self._stream_done()

    # -- sending and streams --------------------------------------------------------------

    def _send_body(self, stream_id: int, stream: _Stream) -> None:
        """Send what the windows allow; the rest waits for WINDOW_UPDATE."""
        while stream.unsent:
            size = min(len(stream.unsent), self._h2.max_outbound_frame_size,
                       self._h2.local_flow_control_window(stream_id))
            if size <= 0:
                return
            chunk, stream.unsent = stream.unsent[:size], stream.unsent[size:]
            self._h2.send_data(stream_id, chunk, end_stream=not stream.unsent)

    def _cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and self.error is None:
            self._h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._flush()
            self._stream_done()

    def _fail_stream(self, stream_id: int, message: str, retriable: bool) -> None:
        self._streams.pop(stream_id).result.errback(StreamFailed(message, retriable))
        self._stream_done()

    def _stream_done(self) -> None:
        """A slot freed up (or draining began): finish a drained connection, tell the owner."""
        if self.state == DRAINING and not self._streams:
            self._say_goodbye()
        self._on_change(self)

    def _say_goodbye(self) -> None:
        if self._goaway_sent or self.transport is None:
            return
        self._goaway_sent = True
        self._stop_timers()
        self._h2.close_connection()
        self._flush()
        self.transport.loseConnection()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- liveness -------------------------------------------------------------------------

    def _heard_from_peer(self) -> None:
        if self._dead is not None and self._dead.active():
            self._dead.cancel()
        self._dead = None
        if self._quiet is not None and self._quiet.active():
            self._quiet.reset(self._ping_interval)
        elif self.state != CLOSED and not self._goaway_sent:
            self._quiet = self._clock.callLater(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._quiet = None
        self._h2.ping(os.urandom(8))
        self._flush()
        self._dead = self._clock.callLater(
            self._ping_timeout, self._abort,
            f"{self.label} did not answer a PING within {self._ping_timeout:g} s")

    def _abort(self, error: str) -> None:
        if self.error is None:
            self.error = error
            log.warn("HTTP/2 {label}: {error}", label=self.label, error=error)
        self._stop_timers()
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def _stop_timers(self) -> None:
        for timer in (self._quiet, self._dead, self._close_deadline):
            if timer is not None and timer.active():
                timer.cancel()

    def _notify_closed(self) -> None:
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)


def _code_name(code: int | None) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return f"error {code}"
