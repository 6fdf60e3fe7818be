"""What the simulated MX does for each command except voicemail (``mailbox.py``).

Each operation gets the session and the received command and answers through the session:
``reply`` (same invoke id), ``send_event`` (id 9999) or ``fail`` (``CSTAErrorCode``). Invalid
field values raise ``XMLError``, which the session turns into ``CSTAErrorCode``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from mxproxy.csta.xml import Element, XMLError, attr, find, text, to_bool, to_int
from mxproxy.testing.mxsim import wire
from mxproxy.testing.mxsim.model import ReceivedCommand, User

if TYPE_CHECKING:
    from mxproxy.testing.mxsim.server import Session

Operation = Callable[["Session", ReceivedCommand], None]
_F = TypeVar("_F", bound=Operation)

CALL_LOG_BLOCK = 21
BAD_CREDENTIALS = 1
CLEAR_TEXT_REQUIRED = 4
_REASONS = {
    BAD_CREDENTIALS: "Invalid user name or password",
    CLEAR_TEXT_REQUIRED: "Password must be sent in clear text (directory account)",
}


class CommandTable:
    """Command name -> operation, filled by decorating the operations."""

    def __init__(self) -> None:
        self.table: dict[str, Operation] = {}

    def __call__(self, name: str) -> Callable[[_F], _F]:
        def register(operation: _F) -> _F:
            self.table[name] = operation
            return operation
        return register


CORE = CommandTable()


def password_hash(password: str) -> str:
    """What clients put in ``<pwd>`` before the trailing LF: base64(SHA-1(UTF-8 password))."""
    return base64.b64encode(hashlib.sha1(password.encode("utf-8")).digest()).decode("ascii")


def _flag(element: Element, name: str) -> bool:
    """An optional boolean attribute; a value Go's ParseBool would refuse counts as false."""
    try:
        return to_bool(attr(element, name), name)
    except XMLError:
        return False


def _login_error(session: Session, kind: str, login: str, secret: str, hashed: bool) -> int:
    """0 when the credentials are good, else the ``loginFailed`` code."""
    if session.pbx.faults.refuse_logins:
        return BAD_CREDENTIALS
    if kind == "Server":
        password = session.pbx.server_logins.get(login)
        return 0 if password is not None and hashed and secret == password_hash(password) \
            else BAD_CREDENTIALS
    user = session.pbx.users.get(login)
    if user is None:
        return BAD_CREDENTIALS
    if user.clear_text_only:
        if hashed:
            return CLEAR_TEXT_REQUIRED
        return 0 if secret == user.password else BAD_CREDENTIALS
    return 0 if hashed and secret == password_hash(user.password) else BAD_CREDENTIALS


def controls(session: Session, device: str) -> bool:
    """Whether the session may act for ``device``: a user session for its own extension, a
    server (CTI) session for any extension."""
    if session.user is not None:
        return device == session.user.extension
    return session.pbx.is_extension(device)


@CORE("loginRequest")
def login(session: Session, command: ReceivedCommand) -> None:
    """Server or user login; a hashed password ends with one LF (sent raw or as ``&#xA;``)."""
    pbx, element = session.pbx, command.element
    name = text(element, "userName")
    pwd = find(element, "pwd")
    raw = (pwd.text or "") if pwd is not None else ""
    hashed = raw.endswith("\n")
    # anything but Server (User, the short-lived Mobile, one Go version's empty type) is a user
    kind = "Server" if attr(element, "type") == "Server" else "User"
    code = _login_error(session, kind, name, raw[:-1] if hashed else raw, hashed)
    if code:
        pbx.failed_logins[name] += 1
        session.reply(command.invoke_id, wire.login_failed(code, pbx.sn, _REASONS[code]))
        return
    if _flag(element, "forced"):
        for other in pbx.sessions_of(name):
            if other is not session:
                other.logout("forced")
    user: User | None = pbx.users[name] if kind == "User" else None
    session.login, session.kind, session.user = name, kind, user
    session.ab_notify = session.ab_notify or _flag(element, "abNotify")
    pbx.logins[name] += 1
    session.reply(command.invoke_id, wire.login_ok(
        pbx.sn, user.extension if user else "", user.jid if user else "0",
        user.soft_phone_pwd if user else ""))
    if user is not None:
        session.send_event(wire.own_presence())


@CORE("iq:addressbook")
def address_book(session: Session, command: ReceivedCommand) -> None:
    """One ``ablist`` page (id 9999) of ``page_size`` entries; ``size`` is the book's total."""
    index = to_int(attr(command.element, "index"), "index")
    if index < 0:
        raise XMLError(f"index must be >= 0, got {index}")
    session.send_event(session.pbx.address_book_page(index))


@CORE("iq:calllog")
def call_log(session: Session, command: ReceivedCommand) -> None:
    """``callloginfo`` blocks of 21 (id 9999) of the calls that ended at or after ``timestamp``.

    A negative timestamp means the whole log. Server sessions have no log of their own. How
    the log ends is ``Variants.call_log_end``.
    """
    since = to_int(attr(command.element, "timestamp"), "timestamp", default=-1)
    log = session.user.call_log if session.user is not None else []
    records = sorted((r for r in log if since < 0 or r.disconnect >= since),
                     key=lambda r: r.record_id)
    for start in range(0, len(records), CALL_LOG_BLOCK):
        session.send_event(wire.callloginfo(tuple(records[start:start + CALL_LOG_BLOCK])))
    if (session.pbx.variants.call_log_end == "empty-terminator"
            and len(records) % CALL_LOG_BLOCK == 0):
        session.send_event(wire.callloginfo(()))


@CORE("iq:mode")
def call_mode(session: Session, command: ReceivedCommand) -> None:
    """Recorded only: no client ever waits for an answer to ``iq set mode``."""


@CORE("MonitorStartAb")
def monitor_address_book(session: Session, command: ReceivedCommand) -> None:
    session.ab_notify = True
    session.reply(command.invoke_id, wire.empty("MonitorStartAbResponse"))


@CORE("MonitorStopAb")
def stop_monitoring_address_book(session: Session, command: ReceivedCommand) -> None:
    session.ab_notify = False
    session.reply(command.invoke_id, wire.empty("MonitorStopAbResponse"))


@CORE("MonitorStart")
def monitor_start(session: Session, command: ReceivedCommand) -> None:
    """An empty ``deviceObject`` is the user's own extension, as the original's client library
    documents and sends it; a server session has none, so there it stays an invalid device."""
    device = text(command.element, "monitorObject/deviceObject")
    if (not device and session.user is not None
            and find(command.element, "monitorObject/deviceObject") is not None):
        device = session.user.extension
    if not session.pbx.is_extension(device):
        session.fail(command.invoke_id, operation="invalidDeviceID")
        return
    cross_ref = session.pbx.new_cross_ref()
    session.monitors[cross_ref] = device
    session.reply(command.invoke_id, wire.monitor_start_response(cross_ref))


@CORE("MonitorStop")
def monitor_stop(session: Session, command: ReceivedCommand) -> None:
    cross_ref = to_int(text(command.element, "monitorCrossRefID"), "monitorCrossRefID")
    if session.monitors.pop(cross_ref, None) is None:
        session.fail(command.invoke_id, operation="invalidMonitorCrossRefID")
        return
    session.reply(command.invoke_id, wire.empty("MonitorStopResponse"))


@CORE("GetServiceList")
def service_list(session: Session, command: ReceivedCommand) -> None:
    """The system's services, to user and server sessions alike. Answered in order after
    whatever came before it, which is what makes it a fence for the call log."""
    session.reply(command.invoke_id, wire.service_list(session.pbx.services))


@CORE("MakeCall")
def make_call(session: Session, command: ReceivedCommand) -> None:
    """A call from the session's own extension (a server session: any extension).

    The reply goes out before the call's DeliveredEvents, as a client expects.
    """
    pbx = session.pbx
    calling = text(command.element, "callingDevice")
    destination = text(command.element, "calledDirectoryNumber")
    if not controls(session, calling):
        session.fail(command.invoke_id, private="Invalid calling device")
        return
    if not pbx.is_dialable(destination):
        session.fail(command.invoke_id, private="Invalid destination")
        return
    call = pbx.create_call(calling, destination)
    session.reply(command.invoke_id, wire.make_call_response(call))
    pbx.ring(call)
