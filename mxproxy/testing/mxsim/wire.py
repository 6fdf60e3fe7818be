"""XML the simulated MX sends, built from the model records (shapes of mx-protocol.md §2-3).

One function per message shape so the session code and the PBX never assemble markup
themselves; ``corrupt`` turns a good frame into each kind of broken one for fault injection.
"""

from __future__ import annotations

import base64
import functools
import struct
from collections.abc import Iterable

from lxml.etree import SubElement

from mxproxy.csta.frame import HEADER_SIZE
from mxproxy.csta.xml import Element, build, sub
from mxproxy.testing.mxsim.model import (
    Call,
    CallRecord,
    Contact,
    MalformedKind,
    RecordingShape,
    Service,
    Voicemail,
)

API_VERSION = "11"
MX_CAPAB = "0"  # a capability string whose values are not documented: claim none
MAX_MSG_FILE_SIZE_MB = "10"
CALL_TYPE_FLAGS = "170917889"  # the only value documented; its bits are not
CMDS_ALLOWED = "0"


def csta_error(operation: str = "", private: str = "", state: str = "") -> Element:
    """``CSTAErrorCode`` with an ECMA ``operation`` or ``stateIncompatibility`` value and/or
    an MX ``privateErrorCode`` (last: the text clients show)."""
    root = build("CSTAErrorCode")
    if operation:
        sub(root, "operation", operation)
    if state:
        sub(root, "stateIncompatibility", state)
    if private:
        sub(root, "privateErrorCode", private)
    return root


def empty(name: str) -> Element:
    return build(name)


def login_ok(sn: str, extension: str, jid: str, soft_phone_pwd: str) -> Element:
    root = build("loginResponce", {"Code": "0", "sn": sn, "ext": extension, "userId": jid,
                                   "softPhonePwd": soft_phone_pwd, "apiversion": API_VERSION,
                                   "mxCapab": MX_CAPAB, "maxMsgFileSizeMb": MAX_MSG_FILE_SIZE_MB})
    root.text = "Login OK"
    return root


def login_failed(code: int, sn: str, reason: str) -> Element:
    root = build("loginFailed", {"Code": str(code), "sn": sn, "apiversion": API_VERSION})
    root.text = reason
    return root


def own_presence() -> Element:
    return build("presence", {"from": "0", "status": "Available", "mxStatus": ""})


def logout(mode: str) -> Element:
    return build("Logout", {"mode": mode})


def abentry(parent: Element, contact: Contact) -> Element:
    entry = sub(parent, "abentry", jid=contact.jid, presence=contact.presence,
                presenceNote=contact.presence_note)
    for tag, value in (("firstName", contact.first_name), ("lastName", contact.last_name),
                       ("businessPhone", contact.business_phone),
                       ("homePhone", contact.home_phone), ("cellPhone", contact.cell_phone),
                       ("email", contact.email), ("homeSystem", contact.home_system),
                       ("did", contact.did), ("exchangeId", contact.exchange_id)):
        sub(entry, tag, value)
    return entry


def ablist(total: int, index: int, contacts: Iterable[Contact]) -> Element:
    root = build("ablist", {"size": str(total), "index": str(index)})
    for contact in contacts:
        abentry(root, contact)
    return root


def ab_event(name: str, contact: Contact) -> Element:
    """``AbAddUserEvent`` / ``AbUpdateUserEvent`` carrying the entry."""
    root = build(name)
    abentry(root, contact)
    return root


def ab_delete_event(jid: str) -> Element:
    return build("AbDeleteUserEvent", children={"userId": jid})


@functools.lru_cache(maxsize=1024)
def callloginfo(records: tuple[CallRecord, ...]) -> Element:
    """A block, built once per distinct set of records: a client polling its log gets the
    same blocks again, and the simulator, standing in for another machine, should cost the
    benchmarks as little CPU as it can. Callers must not change the element."""
    root = build("callloginfo")
    for record in records:
        info = SubElement(root, "callinfo", direction=record.direction)
        if record.missed:
            info.set("missed", "true")
        fields = [("record_id", str(record.record_id)), ("gcid", record.gcid)]
        if record.connect is not None:
            fields.append(("connectTimestamp", str(record.connect)))
        fields += (("disconnectTimestamp", str(record.disconnect)),
                   ("callingPartyNo", record.calling_party),
                   ("originalCalledPartyNo", record.original_called_party),
                   ("firstName", record.first_name), ("lastName", record.last_name),
                   ("extension", record.extension), ("serviceName", record.service_name),
                   ("serviceExtension", record.service_extension),
                   ("callType", str(record.call_type)), ("legType", str(record.leg_type)),
                   ("selfLegType", str(record.self_leg_type)),
                   ("monitorType", str(record.monitor_type)))
        for tag, value in fields:
            SubElement(info, tag).text = value
    return root


def service_list(services: Iterable[Service]) -> Element:
    root = build("GetServiceListResponse")
    for service in services:
        item = sub(root, "Service")
        for tag, value in (("serviceId", str(service.service_id)), ("serviceName", service.name),
                           ("serviceType", service.service_type),
                           ("extension", service.extension),
                           ("homeSystem", service.home_system)):
            sub(item, tag, value)
    return root


def make_call_response(call: Call) -> Element:
    root = build("MakeCallResponse")
    calling = sub(root, "callingDevice")
    sub(calling, "callID", str(call.call_id))
    sub(calling, "deviceID", call.calling)
    sub(root, "calledDevice", call.called)
    return root


def monitor_start_response(cross_ref: int) -> Element:
    root = build("MonitorStartResponse", children={"monitorCrossRefID": str(cross_ref)})
    media = sub(root, "actualMonitorMediaClass")
    sub(media, "voice", "true")
    return root


def _connection(parent: Element, tag: str, call: Call, device: str, with_global: bool = False
                ) -> None:
    connection = sub(parent, tag)
    sub(connection, "callID", str(call.call_id))
    sub(connection, "deviceID", device)
    if with_global:
        sub(connection, "globalCallID", call.global_call_id)


def _device(parent: Element, tag: str, device: str) -> None:
    sub(sub(parent, tag), "deviceIdentifier", device)


def _event(name: str, cross_ref: int, tag: str, call: Call, device: str,
           with_global: bool = False) -> Element:
    """A call event's root: the monitor, then the connection it is about."""
    root = build(name, children={"monitorCrossRefID": str(cross_ref)})
    _connection(root, tag, call, device, with_global)
    return root


def _state(root: Element, local: str, cause: str, allowed: bool = True) -> Element:
    """The tail most call events share: the connection's state and why, and (``allowed``)
    what may be done with it."""
    sub(root, "localConnectionInfo", local)
    sub(root, "cause", cause)
    if allowed:
        sub(root, "cmdsAllowed", CMDS_ALLOWED)
        sub(root, "callTypeFlags", CALL_TYPE_FLAGS)
    return root


def delivered_event(cross_ref: int, call: Call, cause: str = "normal") -> Element:
    """The alerting connection of ``call`` (at its callee), identical for every monitor; the
    same after a transfer or a deflection, with ``cause`` saying so."""
    root = _event("DeliveredEvent", cross_ref, "connection", call, call.callee, True)
    _device(root, "alertingDevice", call.callee)
    sub(root, "alertingDisplayName", call.callee_name)
    _device(root, "callingDevice", call.calling)
    sub(root, "callingDisplayName", call.calling_name)
    _device(root, "calledDevice", call.called)
    _device(root, "lastRedirectionDevice", call.redirected_by or call.calling)
    return _state(root, "alerting", cause)


def established_event(cross_ref: int, call: Call, answering_name: str) -> Element:
    root = _event("EstablishedEvent", cross_ref, "establishedConnection", call, call.answered_by,
                  True)
    _device(root, "answeringDevice", call.answered_by)
    sub(root, "answeringDisplayName", answering_name)
    _device(root, "callingDevice", call.calling)
    sub(root, "callingDisplayName", call.calling_name)
    _device(root, "calledDevice", call.called)
    _device(root, "lastRedirectionDevice", call.redirected_by or call.calling)
    return _state(root, "connected", "normal")


def connection_cleared_event(cross_ref: int, call: Call, releasing: str,
                             cause: str = "normalClearing") -> Element:
    root = _event("ConnectionClearedEvent", cross_ref, "droppedConnection", call, releasing)
    _device(root, "releasingDevice", releasing)
    return _state(root, "null", cause, allowed=False)


def held_event(cross_ref: int, call: Call) -> Element:
    root = _event("HeldEvent", cross_ref, "heldConnection", call, call.held_by)
    _device(root, "holdingDevice", call.held_by)
    return _state(root, "hold", "normal")


def retrieved_event(cross_ref: int, call: Call, retrieving: str) -> Element:
    root = _event("RetrievedEvent", cross_ref, "retrievedConnection", call, retrieving)
    _device(root, "retrievingDevice", retrieving)
    return _state(root, "connected", "normal")


def diverted_event(cross_ref: int, call: Call, diverting: str, destination: str) -> Element:
    root = _event("DivertedEvent", cross_ref, "connection", call, diverting)
    _device(root, "divertingDevice", diverting)
    _device(root, "newDestination", destination)
    _device(root, "lastRedirectionDevice", diverting)
    return _state(root, "null", "redirected")


def transferred_event(cross_ref: int, call: Call, transferring: str, target: str) -> Element:
    """``TransferedEvent``, spelled as the MX does (mx-protocol.md §3.7)."""
    root = _event("TransferedEvent", cross_ref, "primaryOldCall", call, transferring)
    _device(root, "transferringDevice", transferring)
    _device(root, "transferredToDevice", target)
    return _state(root, "null", "singleStepTransfer", allowed=False)


def transfer_response(call: Call) -> Element:
    """The same-id answer to ``SingleStepTransferCall``: the call, now at the target."""
    root = build("SingleStepTransferCallResponse")
    _connection(root, "transferredCall", call, call.callee)
    return root


def recording_state_event(cross_ref: int, call: Call, device: str, active: bool,
                          shape: RecordingShape) -> Element:
    """``RecordingStateEvent`` of ``device``'s recording, its connection in the ``shape`` of
    ``Variants.recording_state``."""
    root = build("RecordingStateEvent", children={"monitorCrossRefID": str(cross_ref)})
    parent = sub(root, "connection") if shape == "connection" else root
    sub(parent, "callID", str(call.call_id))
    sub(parent, "deviceID", device)
    sub(root, "RecIsAvailable", "true")
    sub(root, "RecIsActive", "true" if active else "false")
    return root


def assign_device_info(device: str) -> Element:
    return build("AssignDeviceInfo", children={"deviceID": device})


def mail_list(voicemails: Iterable[Voicemail]) -> Element:
    items = list(voicemails)
    root = build("MailGetListIncomingResponse", {"rowCount": str(len(items))})
    for mail in items:
        item = sub(root, "mail", **{"from": mail.from_number, "fromName": mail.from_name,
                                    "callerName": mail.caller_name, "to": mail.to,
                                    "ownerType": mail.owner_type})
        for tag, value in (("mailId", str(mail.mail_id)), ("mediaType", mail.media_type),
                           ("received", str(mail.received)), ("duration", str(mail.duration)),
                           ("read", "true" if mail.read else "false"), ("note", mail.note)):
            sub(item, tag, value)
    return root


def document_name(owner_jid: str, mail: Voicemail) -> str:
    return f"u{int(owner_jid):020d}/m{mail.mail_id:04d}.{mail.file_format}"


def mail_chunk(mail: Voicemail, owner_jid: str, number: int, total: int, chunk_size: int
               ) -> Element:
    """Chunk ``number`` (1-based) of ``total``: ``chunk_size`` raw bytes, base64 with padding."""
    data = mail.content[(number - 1) * chunk_size:number * chunk_size]
    root = build("MailReceiveIncomingResponse", {
        "mailId": str(mail.mail_id), "chunkNumber": str(number), "totalChunks": str(total),
        "chunkSize": str(chunk_size)})
    sub(root, "fileFormat", mail.file_format)
    sub(root, "documentName", document_name(owner_jid, mail))
    sub(root, "mediaContent", base64.b64encode(data).decode("ascii"))
    return root


def corrupt(frame: bytes, kind: MalformedKind) -> bytes:
    """``frame`` broken in the way ``kind`` names (see ``Faults.malformed_next``)."""
    header, body = frame[:HEADER_SIZE], frame[HEADER_SIZE:]
    if kind == "xml":
        broken = body[:max(1, len(body) // 2)]  # a cut-off document never parses
        return b"\0\0" + struct.pack(">H", len(broken) + HEADER_SIZE) + header[4:] + broken
    if kind == "header":
        return b"\x01\x00" + frame[2:]
    if kind == "length":
        return header[:2] + struct.pack(">H", 4) + frame[4:]
    return header[:4] + b"00x1" + body


def mail_incoming_ready_event(cross_ref: int, mail: Voicemail, owner_id: str) -> Element:
    """A new message in a monitored user's mailbox, in the shape of mx-protocol.md §3.9.5."""
    root = build("MailIncomingReadyEvent", {
        "from": mail.from_number, "fromName": mail.from_name, "callerName": mail.caller_name,
        "to": mail.to, "private": "0", "urgent": "0", "ownerId": owner_id,
        "ownerType": mail.owner_type})
    for tag, value in (("monitorCrossRefID", str(cross_ref)), ("mailId", str(mail.mail_id)),
                       ("mediaType", mail.media_type), ("gcid", mail.gcid),
                       ("received", str(mail.received)), ("duration", str(mail.duration)),
                       ("read", "true" if mail.read else "false"),
                       ("fileFormat", mail.file_format), ("note", mail.note)):
        sub(root, tag, value)
    return root
