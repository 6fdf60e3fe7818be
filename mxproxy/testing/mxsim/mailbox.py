"""Voicemail commands of the simulated MX (mx-protocol.md §3.9).

Like the real MX (as observed), every ``Mail*`` command is refused unless the session monitors
its own extension. A download is per session state: ``MailReceiveIncoming`` with a
``faxSessionID`` starts it at chunk 1, each request with ``<nextChunk>`` gets the next chunk,
and the transfer ends after the last chunk or on ``MailCancelReceive``.

Each command works on the mailbox its ``<mediaType>`` names: the voicemails (``VoiceMail``, and
when it is absent, as the original's clients mostly sent it [assumption: the MX's default is
not documented]) or the recordings of the user's calls (``Recording``). A recording's id is
unknown to the voicemail mailbox and the other way round; any other media type is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from mxproxy.csta.commands import MEDIA_TYPES, VOICEMAIL
from mxproxy.csta.xml import XMLError, find, text, to_bool, to_int
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.model import ReceivedCommand, User, Voicemail
from mxproxy.testing.mxsim.operations import CommandTable

if TYPE_CHECKING:
    from mxproxy.testing.mxsim.server import Session

MailOperation = Callable[["Session", ReceivedCommand, User], None]

MAILBOX = CommandTable()
NOT_FOUND = "Message not found"


@attrs.define
class Download:
    """A transfer in progress; ``chunk_size`` is fixed when it starts."""

    mail_id: int
    chunk_size: int
    total: int
    next_number: int = 1


def _mail_operation(name: str) -> Callable[[MailOperation], MailOperation]:
    """Register ``name``, guarded by the own-extension monitor the real MX insists on."""
    def register(operation: MailOperation) -> MailOperation:
        def guarded(session: Session, command: ReceivedCommand) -> None:
            user = session.user
            if user is None or user.extension not in session.monitors.values():
                session.fail(command.invoke_id,
                             private="Mailbox requires a monitor on the user's own extension")
                return
            operation(session, command, user)
        MAILBOX(name)(guarded)
        return operation
    return register


def _mailbox(command: ReceivedCommand, user: User) -> dict[int, Voicemail]:
    """The mailbox the command's ``mediaType`` names; another value raises ``XMLError``."""
    media_type = text(command.element, "mediaType") or VOICEMAIL
    if media_type not in MEDIA_TYPES:
        raise XMLError(f"unknown mediaType {media_type[:40]!r}")
    return user.mailbox(media_type)


def _mail(session: Session, command: ReceivedCommand, user: User, path: str
          ) -> Voicemail | None:
    """The user's message named at ``path``, or None after answering ``CSTAErrorCode``."""
    mail = _mailbox(command, user).get(to_int(text(command.element, path), path))
    if mail is None:
        session.fail(command.invoke_id, private=NOT_FOUND)
    return mail


@_mail_operation("MailGetListIncoming")
def list_mail(session: Session, command: ReceivedCommand, user: User) -> None:
    """Only the user's own mailbox, named by extension (``userID``) or JID (``userId``)."""
    owner = text(command.element, "userID") or text(command.element, "userId")
    if owner and owner not in (user.extension, user.jid):
        session.fail(command.invoke_id, private="Access to another mailbox denied")
        return
    mails = sorted(_mailbox(command, user).values(), key=lambda m: m.mail_id)
    session.reply(command.invoke_id, wire.mail_list(mails))


@_mail_operation("MailReceiveIncoming")
def receive_mail(session: Session, command: ReceivedCommand, user: User) -> None:
    mail = _mail(session, command, user, "faxSessionID")
    if mail is None:
        return
    download = session.download
    if find(command.element, "nextChunk") is None:
        size = session.pbx.chunk_size
        download = session.download = Download(
            mail.mail_id, size, max(1, -(-len(mail.content) // size)))
    elif download is None or download.mail_id != mail.mail_id:
        session.fail(command.invoke_id, private="No transfer of this message in progress")
        return
    number = download.next_number
    session.reply(command.invoke_id, wire.mail_chunk(
        mail, user.jid, number, download.total, download.chunk_size))
    download.next_number += 1
    if number >= download.total:
        session.download = None


@_mail_operation("MailCancelReceive")
def cancel_receive(session: Session, command: ReceivedCommand, user: User) -> None:
    session.download = None
    session.reply(command.invoke_id, wire.empty("MailCancelReceiveResponse"))


@_mail_operation("MailDeleteIncoming")
def delete_mail(session: Session, command: ReceivedCommand, user: User) -> None:
    """Succeeds for unknown ids too, as the original README says the MX does."""
    mailbox = _mailbox(command, user)
    try:
        mailbox.pop(to_int(text(command.element, "mailId"), "mailId"), None)
    except XMLError:
        pass  # a non-numeric id names no message: nothing to delete
    session.reply(command.invoke_id, wire.empty("MailDeleteIncomingResponse"))


@_mail_operation("MailSetStatus")
def set_read(session: Session, command: ReceivedCommand, user: User) -> None:
    mail = _mail(session, command, user, "mailId")
    if mail is not None:
        mail.read = to_bool(text(command.element, "read"), "read")
        session.reply(command.invoke_id, wire.empty("MailSetStatusResponse"))


@_mail_operation("UpdateVmNote")
def update_note(session: Session, command: ReceivedCommand, user: User) -> None:
    mail = _mail(session, command, user, "mailId")
    if mail is not None:
        mail.note = text(command.element, "note")
        session.reply(command.invoke_id, wire.empty("UpdateVmNoteResponse"))
