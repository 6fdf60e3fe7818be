"""The voicemail routes: list, download (streamed), mark read or annotate, delete.

Every ``Mail*`` command runs on a user session that monitors the user's own extension: the MX
refuses them otherwise (mx-protocol.md §3.9.1). ``?media=Recording`` makes each route work on
the recordings of the user's calls instead, a mailbox the MX keeps apart (``<mediaType>``);
the voicemail's commands go without a ``mediaType``, as the original sent them.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.web.server import Request

from mxproxy.api.access import MXAccess
from mxproxy.api.errors import bad_request, not_found
from mxproxy.api.fields import body_fields, flag, printable
from mxproxy.api.mailstream import VoicemailStream, attachment, check_first, content_type
from mxproxy.api.routing import Endpoints, app, json_answer, no_content
from mxproxy.csta import commands
from mxproxy.csta.errors import CSTAError
from mxproxy.csta.messages import Chunk, VoiceMailList
from mxproxy.events import VOICEMAIL
from mxproxy.logs import Logger
from mxproxy.sessions import UserSession

log = Logger(__name__)

_MAIL_ID = re.compile(r"[0-9]{1,20}")


class VoicemailRoutes(Endpoints):
    """``/mx/<mx>/voicemail`` and ``/mx/<mx>/voicemail/<mail_id>``."""

    @app.route("/mx/<mx>/voicemail", methods=["GET"])
    async def voicemail_list(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        media = media_type(request)

        async def mails(session: UserSession) -> VoiceMailList:
            await session.ensure_monitor()
            reply = await session.protocol.request(commands.mail_list(session.identity.ext,
                                                                      media))
            return VoiceMailList.from_xml(reply.element)

        listing = await self.auth.on_session(caller, mails)
        return json_answer(request, {"voicemails": [mail.to_json() for mail in listing.mails]})

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["GET"])  # and HEAD (werkzeug adds it)
    async def voicemail_download(self, request: Request, mx: str, mail_id: str) -> None:
        caller = self.auth.caller(request, mx)
        mail_id = known_mail_id(mail_id)
        media = media_type(request)
        pool = caller.access.pool
        session = await self.auth.guarded(caller, pool.acquire(caller.login, caller.password))
        head = request.method == b"HEAD"
        try:
            await session.ensure_monitor()
            try:
                reply = await session.protocol.request(commands.mail_receive(mail_id, False,
                                                                             media))
            except CSTAError:
                raise not_found(f"no voicemail {mail_id!r}") from None
            first = Chunk.from_xml(reply.element)
            check_first(first)
            if head and first.total > 1:  # the headers are known: the rest stays on the MX
                await session.protocol.request(commands.mail_cancel(mail_id, media))
        except BaseException:
            pool.release(session)
            raise
        request.setHeader(b"Content-Type", content_type(first.file_format).encode())
        request.setHeader(b"Content-Disposition",
                          attachment(first.document_name, mail_id, first.file_format).encode())
        if head:
            pool.release(session)
            return
        request.write(first.content)
        stream = VoicemailStream(request, session.protocol, mail_id, first, self.clock,
                                 media_type=media)
        stream.when_done().addCallback(lambda _: pool.release(session))
        stream.start()
        await stream.when_done()

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["PATCH"])
    async def voicemail_update(self, request: Request, mx: str, mail_id: str) -> bytes:
        caller = self.auth.caller(request, mx)
        mail_id = known_mail_id(mail_id)
        media = media_type(request)
        fields = body_fields(request)
        note = fields.get("note")
        read = flag(fields.get("readed", fields.get("read")))
        if note is None and read is None:
            raise bad_request('give "note", "readed" (or "read"), or both')
        if note is not None and not isinstance(note, str):
            raise bad_request('"note" must be a string')
        if note is not None:
            printable(note, "note", lines=True)
        if read is not None and not isinstance(read, bool):
            raise bad_request('"readed" must be true or false')

        async def update(session: UserSession) -> None:
            await session.ensure_monitor()
            try:
                if read is not None:
                    await session.protocol.request(commands.mail_set_status(mail_id, read,
                                                                            media))
                if note is not None:
                    await session.protocol.request(commands.update_vm_note(mail_id, note,
                                                                           media))
            except CSTAError:
                raise not_found(f"no voicemail {mail_id!r}") from None
            changes = {key: value for key, value in (("read", read), ("note", note))
                       if value is not None}
            mail_changed(caller.access, session,
                         {**mail_event(mail_id, media), "event": "updated", **changes})

        await self.auth.on_session(caller, update)
        return no_content(request)

    @app.route("/mx/<mx>/voicemail/<mail_id>", methods=["DELETE"])
    async def voicemail_delete(self, request: Request, mx: str, mail_id: str) -> bytes:
        caller = self.auth.caller(request, mx)
        mail_id = known_mail_id(mail_id)
        media = media_type(request)

        async def delete(session: UserSession) -> None:
            await session.ensure_monitor()
            try:
                await session.protocol.request(commands.mail_delete(mail_id, media))
            except CSTAError as error:  # unknown or foreign ids succeed, as in the original
                log.info("voicemail {id}: delete refused by the MX: {error}", id=mail_id,
                         error=error)
                return
            mail_changed(caller.access, session, {**mail_event(mail_id, media), "event": "deleted"})

        await self.auth.on_session(caller, delete)
        return no_content(request)


def mail_changed(access: MXAccess, session: UserSession, data: dict[str, Any]) -> None:
    """Tell the user's event streams of a change made through the API: the MX sends its
    monitors no event for a mail marked read or deleted."""
    if access.events is not None:
        access.events.publish(session.identity.jid, VOICEMAIL, data)


def media_type(request: Request) -> str | None:
    """The mailbox ``?media=`` names: ``Recording``, or the voicemail (``VoiceMail``, the
    default), for which no ``mediaType`` is sent."""
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(b"media")
    media = values[-1].decode("utf-8", "replace") if values else commands.VOICEMAIL
    if media not in commands.MEDIA_TYPES:
        raise bad_request(f"media {media[:40]!r}: expected "
                          f"{' or '.join(commands.MEDIA_TYPES)}")
    return None if media == commands.VOICEMAIL else media


def mail_event(mail_id: str, media: str | None) -> dict[str, str]:
    """What the event stream says a changed mail is: its id, and ``mediaType`` for a
    recording (ids are the MX's, and nothing says its two mailboxes never share one)."""
    return {"id": mail_id, "mediaType": media} if media else {"id": mail_id}


def known_mail_id(mail_id: str) -> str:
    """``mail_id`` if an MX could have issued it (its ids are decimal numbers), else a 404
    without a word to the MX: ``voicemail/%00`` could not even be put into a command."""
    if not _MAIL_ID.fullmatch(mail_id):
        raise not_found(f"no voicemail {mail_id[:40]!r}")
    return mail_id
