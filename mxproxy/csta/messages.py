"""Typed messages parsed from what the MX sends: replies, directory and call-log data, voicemail.

Call, mail-ready and session events live in :mod:`mxproxy.csta.events`; :data:`EVENTS` and
:func:`parse_event` cover both modules, so the reader of a link needs only this one. JIDs, mail
ids and extensions are strings everywhere: a 17-digit JID does not survive a JSON number
(mx-protocol.md §7.27).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from mxproxy.csta.errors import (
    CALL_STATE_VALUES,
    STATE_INCOMPATIBILITY,
    UNKNOWN_CALL,
    CallStateError,
    CSTAError,
    UnknownCall,
)
from mxproxy.csta.events import (
    AssignDeviceInfo,
    CallParkInfo,
    ConnectionCleared,
    Delivered,
    Diverted,
    Established,
    Failed,
    Held,
    Logout,
    MailIncomingReady,
    NetworkReached,
    Originated,
    Presence,
    RecordingState,
    Retrieved,
    ServiceInitiated,
    Transferred,
)
from mxproxy.csta.records import (
    XMLRecord,
    boolean,
    derived,
    integer,
    raw,
    record,
    records,
    string,
)
from mxproxy.csta.xml import Element, XMLError, local_name


def _without_empty(values: dict[str, object], keep: frozenset[str]) -> dict[str, object]:
    """``values`` minus the zero, empty and false ones not in ``keep`` (Go's ``omitempty``)."""
    return {key: value for key, value in values.items() if value or key in keep}


_CONTACT_ALWAYS = frozenset({"firstName", "lastName", "ext"})
_CALL_INFO_ALWAYS = frozenset({"direction", "recordId", "gcid", "callingPartyNo",
                               "originalCalledPartyNo"})
_VOICE_MAIL_ALWAYS = frozenset({"id", "from", "to", "received", "duration", "read"})


@attrs.frozen
class LoginResponse(XMLRecord):
    """``loginResponce`` (sic): the login succeeded; ``sn`` identifies the MX."""

    code: int = integer("@Code", "@code")
    sn: str = string("@sn")
    ext: str = string("@ext")
    user_id: str = string("@userId")
    soft_phone_pwd: str = string("@softPhonePwd", shown=False)
    apiversion: int = integer("@apiversion")
    mx_capab: str = string("@mxCapab")
    """The MX's capability string (mx-protocol.md §2.2); its values are not documented."""
    max_msg_file_size_mb: int = integer("@maxMsgFileSizeMb")
    text: str = string(".")


@attrs.frozen
class LoginFailure(XMLRecord):
    """``loginFailed``: ``code`` 2 or 4 with ``apiversion`` > 2 invites a clear-text retry."""

    code: int = integer("@Code", "@code")
    sn: str = string("@sn")
    apiversion: int = integer("@apiversion")
    text: str = string(".")


@attrs.frozen
class Contact(XMLRecord):
    """``abentry``: one address-book entry; ``ext`` (``businessPhone``) is what gets monitored."""

    jid: str = string("@jid")
    first_name: str = string("firstName")
    last_name: str = string("lastName")
    ext: str = string("businessPhone")
    home_phone: str = string("homePhone")
    cell_phone: str = string("cellPhone")
    email: str = string("email")
    home_system: str = string("homeSystem")
    did: str = string("did")
    exchange_id: str = string("exchangeId")
    presence: str = string("@presence")
    presence_note: str = string("@presenceNote")

    def to_json(self) -> dict[str, object]:
        """The original's JSON (mx-protocol.md §6.4), ``homeSystem`` as a string; names and
        extension always present, the other fields only when set."""
        return _without_empty({
            "firstName": self.first_name,
            "lastName": self.last_name,
            "ext": self.ext,
            "homePhone": self.home_phone,
            "cellPhone": self.cell_phone,
            "email": self.email,
            "homeSystem": self.home_system,
            "did": self.did,
            "exchangeId": self.exchange_id,
        }, _CONTACT_ALWAYS)


@attrs.frozen
class AddressBookPage(XMLRecord):
    """``ablist``: page ``index`` of an address book of ``size`` contacts."""

    size: int = integer("@size")
    index: int = integer("@index")
    contacts: tuple[Contact, ...] = records("abentry", Contact)


@attrs.frozen
class AbUpdate(XMLRecord):
    """``AbAddUserEvent`` or ``AbUpdateUserEvent``: both mean "store this contact"."""

    contact: Contact = record("abentry", Contact)


@attrs.frozen
class AbDelete(XMLRecord):
    """``AbDeleteUserEvent``: the contact with this JID is gone."""

    jid: str = string("userId")


@attrs.frozen
class CallInfo(XMLRecord):
    """``callinfo``: one call-log record (mx-protocol.md §3.2.1)."""

    missed: bool = boolean("@missed")
    direction: str = string("@direction")
    record_id: int = integer("record_id")
    gcid: str = string("gcid")
    connect: int = integer("connectTimestamp")
    disconnect: int = integer("disconnectTimestamp")
    calling_party_no: str = string("callingPartyNo")
    original_called_party_no: str = string("originalCalledPartyNo")
    first_name: str = string("firstName")
    last_name: str = string("lastName")
    ext: str = string("extension")
    service_name: str = string("serviceName")
    service_extension: str = string("serviceExtension")
    call_type: int = integer("callType")
    leg_type: int = integer("legType")
    self_leg_type: int = integer("selfLegType")
    monitor_type: int = integer("monitorType")

    def to_json(self) -> dict[str, object]:
        """The original's JSON (mx-protocol.md §6.4): zero, empty and false fields omitted,
        except direction, record id, gcid and the two numbers, which it always wrote."""
        return _without_empty({
            "missed": self.missed,
            "direction": self.direction,
            "recordId": self.record_id,
            "gcid": self.gcid,
            "connect": self.connect,
            "disconnect": self.disconnect,
            "callingPartyNo": self.calling_party_no,
            "originalCalledPartyNo": self.original_called_party_no,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "ext": self.ext,
            "serviceName": self.service_name,
            "serviceExtension": self.service_extension,
            "callType": self.call_type,
            "legType": self.leg_type,
            "selfLegType": self.self_leg_type,
            "monitorType": self.monitor_type,
        }, _CALL_INFO_ALWAYS)


@attrs.frozen
class CallLogBlock(XMLRecord):
    """``callloginfo``: up to 21 call-log records; an empty block is valid."""

    entries: tuple[CallInfo, ...] = records("callinfo", CallInfo)


@attrs.frozen
class MakeCallResult(XMLRecord):
    """``MakeCallResponse``: the call the MX started for a click-to-call."""

    call_id: int = integer("callingDevice/callID")
    device_id: str = string("callingDevice/deviceID")
    called: str = string("calledDevice")

    def to_json(self) -> dict[str, object]:
        """``{"callId", "deviceId", "called"}`` as the original answered ``POST call``."""
        return {"callId": self.call_id, "deviceId": self.device_id, "called": self.called}


@attrs.frozen
class MonitorStarted(XMLRecord):
    """``MonitorStartResponse``: later events of this monitor carry ``cross_ref_id``."""

    cross_ref_id: int = integer("monitorCrossRefID")


@attrs.frozen
class VoiceMail(XMLRecord):
    """``mail``: one voicemail in a mailbox listing (mx-protocol.md §3.9.2)."""

    mail_id: str = string("mailId")
    sender: str = string("@from")
    from_name: str = string("@fromName")
    caller_name: str = string("@callerName")
    to: str = string("@to")
    owner_type: str = string("@ownerType")
    received: int = integer("received")
    duration: int = integer("duration")
    read: bool = boolean("read")
    note: str = string("note")
    media_type: str = string("mediaType")

    def to_json(self) -> dict[str, object]:
        """The API's voicemail entry: ids, parties, times and the read flag always; names,
        owner type and note only when set."""
        return _without_empty({
            "id": self.mail_id,
            "from": self.sender,
            "fromName": self.from_name,
            "callerName": self.caller_name,
            "to": self.to,
            "ownerType": self.owner_type,
            "received": self.received,
            "duration": self.duration,
            "read": self.read,
            "note": self.note,
        }, _VOICE_MAIL_ALWAYS)


@attrs.frozen
class VoiceMailList(XMLRecord):
    """The reply to ``MailGetListIncoming``, whatever its root is called: its ``mail`` children."""

    mails: tuple[VoiceMail, ...] = records("mail", VoiceMail)
    row_count: int = integer("@rowCount")


@attrs.frozen
class Service(XMLRecord):
    """One system service (mx-protocol.md §4.4): voicemail, an auto attendant, the park
    server...; ``service_type`` is the MX's code (``VM``, ``AA``, ``ParkServer``...).
    ``service_id`` is a uint64: kept as the MX's digits."""

    service_id: str = string("serviceId")
    name: str = string("serviceName")
    service_type: str = string("serviceType")
    ext: str = string("extension")
    home_system: str = string("homeSystem")

    def to_json(self) -> dict[str, str]:
        return {"id": self.service_id, "name": self.name, "type": self.service_type,
                "ext": self.ext}


@attrs.frozen
class ServiceList(XMLRecord):
    """The reply to ``GetServiceList``, whatever its root is called: its ``Service`` children."""

    services: tuple[Service, ...] = records("Service", Service)


def _media_content(element: Element) -> bytes:
    # The MX wraps long base64 lines; anything else outside the alphabet is corruption.
    encoded = "".join(raw(element, "mediaContent").split())
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise XMLError(f"{local_name(element)}/mediaContent: invalid base64 ({error})") from None


@attrs.frozen
class Chunk(XMLRecord):
    """One piece of a voicemail download (reply to ``MailReceiveIncoming``); 1-based
    ``number`` of ``total``. ``content`` stays out of ``repr``: audio never reaches a log."""

    mail_id: str = string("@mailId")
    number: int = integer("@chunkNumber")
    total: int = integer("@totalChunks")
    size: int = integer("@chunkSize")
    file_format: str = string("fileFormat")
    document_name: str = string("documentName")
    content: bytes = derived(_media_content, b"", shown=False)


def csta_error_text(element: Element) -> str:
    """The reason in a ``CSTAErrorCode``: the text of its last child element, as the original
    decoded it (mx-protocol.md §3.8); the root's own text when no child says anything."""
    for child in reversed(element):
        if isinstance(child.tag, str) and child.text and child.text.strip():
            return child.text.strip()
    return (element.text or "").strip()


def csta_error(element: Element) -> CSTAError:
    """The typed failure a ``CSTAErrorCode`` stands for (see :mod:`mxproxy.csta.errors`),
    carrying :func:`csta_error_text`."""
    values = {(child.text or "").strip() for child in element if isinstance(child.tag, str)}
    kind: type[CSTAError] = CSTAError
    if UNKNOWN_CALL in values:
        kind = UnknownCall
    elif not values.isdisjoint(CALL_STATE_VALUES) or any(
            local_name(child) == STATE_INCOMPATIBILITY for child in element):
        kind = CallStateError
    return kind(csta_error_text(element))


@attrs.frozen
class TransferResult(XMLRecord):
    """The answer to ``SingleStepTransferCall``: the call as it goes on at the target
    (``transferredCall``, as mx-protocol.md §4.1 reads it); empty when the MX says nothing."""

    call_id: int = integer("transferredCall/callID")
    device_id: str = string("transferredCall/deviceID")


EVENTS: Mapping[str, type[XMLRecord]] = MappingProxyType({
    "ablist": AddressBookPage,
    "callloginfo": CallLogBlock,
    "AbAddUserEvent": AbUpdate,
    "AbUpdateUserEvent": AbUpdate,
    "AbDeleteUserEvent": AbDelete,
    "DeliveredEvent": Delivered,
    "EstablishedEvent": Established,
    "OriginatedEvent": Originated,
    "ConnectionClearedEvent": ConnectionCleared,
    "HeldEvent": Held,
    "RetrievedEvent": Retrieved,
    "DivertedEvent": Diverted,
    "ServiceInitiatedEvent": ServiceInitiated,
    "NetworkReachedEvent": NetworkReached,
    "FailedEvent": Failed,
    "TransferedEvent": Transferred,
    "TransferredEvent": Transferred,
    "callParkInfo": CallParkInfo,
    "RecordingStateEvent": RecordingState,
    "MailIncomingReadyEvent": MailIncomingReady,
    "Logout": Logout,
    "presence": Presence,
    "AssignDeviceInfo": AssignDeviceInfo,
})
"""Root local name of every unsolicited message → the class that reads it."""


def parse_event(element: Element) -> XMLRecord | None:
    """The typed event for ``element``, ``None`` for a name we do not model; a known event
    with a value of the wrong kind raises ``XMLError``."""
    kind = EVENTS.get(local_name(element))
    return None if kind is None else kind.from_xml(element)
