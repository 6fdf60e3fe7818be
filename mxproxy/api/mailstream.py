"""Streaming a voicemail from the MX to an HTTP client without holding the file in memory.

The MX hands a file out in chunks, one request each. :class:`VoicemailStream` is a push producer
on the HTTP response: it asks for the next chunk only while Twisted is not pausing it (the socket
buffer is not full), so at most one chunk plus the socket buffer is in memory whatever the file
size. If the client goes away, or stops reading for :data:`STALL_TIMEOUT`, the transfer is
cancelled on the MX so the session stays usable, and is released for the user's other requests.
"""

from __future__ import annotations

import posixpath
import re
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from mxproxy.csta import commands
from mxproxy.csta.errors import MXError, ProtocolViolation
from mxproxy.csta.messages import Chunk
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.logs import Logger

STALL_TIMEOUT = 60.0
"""Seconds a download may stay paused by a client that reads nothing before it is given up:
it holds the user's MX session, which the user's other requests wait for."""
MEDIA_TYPES = {"wav": "audio/wave", "mp3": "audio/mpeg"}
_UNSAFE_FILENAME = re.compile(r'[^A-Za-z0-9._ -]')


def content_type(file_format: str) -> str:
    return MEDIA_TYPES.get(file_format.lower().lstrip("."), "application/octet-stream")


def attachment(document_name: str, mail_id: str, file_format: str) -> str:
    """``Content-Disposition`` for the MX's document name (``u<jid>/m0081.wav``): its last
    part, with anything that could break the header replaced."""
    name = _UNSAFE_FILENAME.sub("_", posixpath.basename(document_name.replace("\\", "/")))
    if not name.strip("._ "):
        name = f"voicemail-{_UNSAFE_FILENAME.sub('_', mail_id)}.{file_format or 'bin'}"
    return f'attachment; filename="{name}"'


def check_first(chunk: Chunk) -> None:
    if chunk.number != 1 or chunk.total < 1:
        raise ProtocolViolation(f"first voicemail chunk is {chunk.number} of {chunk.total}")


@implementer(IPushProducer)
class VoicemailStream:
    """Writes chunks 2..N of ``mail_id`` to ``request`` after the caller wrote chunk 1;
    ``media_type`` is the mailbox the mail is in (None: the voicemail, without saying so)."""

    log = Logger()

    def __init__(self, request: Request, protocol: CSTAProtocol, mail_id: str, first: Chunk,
                 clock: IReactorTime, stall_timeout: float = STALL_TIMEOUT,
                 media_type: str | None = None) -> None:
        self._request = request
        self._protocol = protocol
        self._mail_id = mail_id
        self._media_type = media_type
        self._clock = clock
        self._stall_timeout = stall_timeout
        self._stall: IDelayedCall | None = None
        self._number = first.number
        self._total = first.total
        self._paused = False
        self._fetching = False
        self._stopped = False
        self._ended = False
        self._done: list[Deferred[None]] = []

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._next()

    def when_done(self) -> Deferred[None]:
        """Fires when the stream is over and the session may serve other requests; cancelling
        this Deferred does not stop the stream."""
        waiter: Deferred[None] = Deferred()
        if self._ended:
            waiter.callback(None)
        else:
            self._done.append(waiter)
        return waiter

    # -- IPushProducer ----------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        if self._stall is None and not (self._stopped or self._ended):
            self._stall = self._clock.callLater(self._stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        self._paused = False
        self._stop_stall_timer()
        self._next()

    def stopProducing(self) -> None:
        """The client went away: cancel the transfer on the MX once no chunk is in flight."""
        if self._stopped or self._ended:
            return
        self._stopped = True
        self._stop_stall_timer()
        if not self._fetching:
            Deferred.fromCoroutine(self._cancel())

    def _stalled(self) -> None:
        """The client has read nothing for the stall timeout: give its connection up (a
        graceful close would wait for it to read) and cancel the transfer."""
        self._stall = None
        self.log.info("voicemail {id}: the client read nothing for {seconds:g} s; download "
                      "cancelled", id=self._mail_id, seconds=self._stall_timeout)
        self.stopProducing()
        self._request.unregisterProducer()
        cast(ITCPTransport, self._request.transport).abortConnection()

    def _stop_stall_timer(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    # -- the transfer -------------------------------------------------------------------------

    def _next(self) -> None:
        if self._fetching or self._stopped or self._ended:
            return
        if self._number >= self._total:  # all written: the session is free, paused or not
            self._request.unregisterProducer()
            self._end()
            return
        if self._paused:
            return
        self._fetching = True
        Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> None:
        try:
            reply = await self._protocol.request(commands.mail_receive(self._mail_id, True,
                                                                       self._media_type))
            chunk = Chunk.from_xml(reply.element)
            if chunk.number != self._number + 1 or chunk.total != self._total:
                raise ProtocolViolation(
                    f"voicemail chunk {chunk.number} of {chunk.total} after "
                    f"{self._number} of {self._total}")
        except Exception as error:  # anything: the response cannot be completed
            self._fetching = False
            await self._abort(error)
            return
        self._fetching = False
        if self._stopped:
            await self._cancel()
            return
        self._number = chunk.number
        self._request.write(chunk.content)
        self._next()

    async def _abort(self, error: BaseException) -> None:
        self.log.error("voicemail {id}: download broken off: {error}", id=self._mail_id,
                       error=error if isinstance(error, MXError) else Failure(error).value)
        self._stopped = True
        self._request.unregisterProducer()
        self._request.loseConnection()
        await self._cancel()

    async def _cancel(self) -> None:
        try:
            if self._protocol.up:
                await self._protocol.request(commands.mail_cancel(self._mail_id, self._media_type))
        except MXError as error:
            self.log.warn("voicemail {id}: MailCancelReceive failed: {error}", id=self._mail_id,
                          error=error)
        finally:
            self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._stop_stall_timer()
        waiters, self._done = self._done, []
        for waiter in waiters:
            waiter.callback(None)
