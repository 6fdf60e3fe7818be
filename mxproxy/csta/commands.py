"""Builders for every request the proxy sends to the MX, in the shapes of mx-protocol.md §2-4.

Each function returns an lxml element without a namespace (what the MX has accepted since the
``mx`` library dropped the ECMA-323 one); the protocol layer frames and sends it. Mail commands
take an optional ``media_type`` (``VoiceMail`` or ``Recording``), sent only when given.
"""

from __future__ import annotations

from mxproxy.csta.xml import Element, build, sub

VOICEMAIL = "VoiceMail"
RECORDING = "Recording"
MEDIA_TYPES = (VOICEMAIL, RECORDING)
"""The ``mediaType`` values of a mailbox (mx-protocol.md §3.9): its messages, and the
recordings of the user's calls, listed and fetched apart."""


def login_request(user: str, pwd: str, kind: str = "User", **attrs: str) -> Element:
    """``loginRequest``; ``kind`` is ``User`` or ``Server``. ``pwd`` is sent verbatim, so the
    caller chooses between the hashed form (with its trailing LF) and the clear-text retry."""
    return build("loginRequest", {"type": kind, **attrs}, {"userName": user, "pwd": pwd})


def addressbook_page(index: int) -> Element:
    """Ask for page ``index`` (0-based) of the address book; it arrives as an ``ablist`` event."""
    return build("iq", {"type": "get", "id": "addressbook", "index": str(index)})


def monitor_start_ab() -> Element:
    """Subscribe to ``Ab*UserEvent`` address-book changes."""
    return build("MonitorStartAb")


def monitor_stop_ab() -> Element:
    return build("MonitorStopAb")


def calllog(since: int | None) -> Element:
    """Ask for the calls after ``since`` (Unix seconds), or the whole log for ``None``."""
    return build("iq", {"type": "get", "id": "calllog",
                        "timestamp": "-1" if since is None else str(since)})


def set_mode(mode: str, address: str, ring_delay: int, vm_delay: int) -> Element:
    """Where the user's calls ring: ``remote`` (at ``address``) or ``local``; no ``<address>``
    is sent when it is empty, as later versions of the original did."""
    element = build("iq", {"type": "set", "id": "mode", "mode": mode,
                           "ringdelay": str(ring_delay), "vmdelay": str(vm_delay)})
    if address:
        sub(element, "address", address)
    return element


def make_call(from_ext: str, to: str) -> Element:
    """Click-to-call: the MX rings ``from_ext`` first, then ``to``."""
    element = build("MakeCall")
    sub(element, "callingDevice", from_ext, typeOfNumber="deviceID")
    sub(element, "calledDirectoryNumber", to)
    return element


def monitor_start(ext: str) -> Element:
    """Start reporting call and mail events of ``ext``."""
    element = build("MonitorStart")
    sub(sub(element, "monitorObject"), "deviceObject", ext)
    return element


def monitor_stop(cross_ref_id: int) -> Element:
    return build("MonitorStop", children={"monitorCrossRefID": str(cross_ref_id)})


def _mail_command(tag: str, children: dict[str, str | None], media_type: str | None) -> Element:
    if media_type:
        children = {**children, "mediaType": media_type}
    return build(tag, children=children)


def mail_list(ext: str, media_type: str | None = None) -> Element:
    """List the mailbox of the user whose extension is ``ext`` (``userID``, as mxproxy sent):
    its voicemail, or with ``media_type`` :data:`RECORDING` its call recordings."""
    return _mail_command("MailGetListIncoming", {"userID": ext}, media_type)


def mail_receive(mail_id: str, next_chunk: bool, media_type: str | None = None) -> Element:
    """Ask for the first chunk of a mail, or (``next_chunk``) for the one after the last."""
    children: dict[str, str | None] = {"faxSessionID": mail_id}
    if next_chunk:
        children["nextChunk"] = None
    return _mail_command("MailReceiveIncoming", children, media_type)


def mail_cancel(mail_id: str, media_type: str | None = None) -> Element:
    """Abandon a download, e.g. when the HTTP client went away."""
    return _mail_command("MailCancelReceive", {"mailId": mail_id}, media_type)


def mail_delete(mail_id: str, media_type: str | None = None) -> Element:
    return _mail_command("MailDeleteIncoming", {"mailId": mail_id}, media_type)


def mail_set_status(mail_id: str, read: bool, media_type: str | None = None) -> Element:
    return _mail_command("MailSetStatus", {"mailId": mail_id, "read": "true" if read else "false"},
                         media_type)


def update_vm_note(mail_id: str, note: str, media_type: str | None = None) -> Element:
    return _mail_command("UpdateVmNote", {"mailId": mail_id, "note": note}, media_type)


def _call_command(tag: str, wrapper: str, call_id: int, device: str,
                  extra: dict[str, str] | None = None) -> Element:
    """A call-control request (mx-protocol.md §4.1): the connection it acts on, ``<callID>``
    and ``<deviceID>`` (the user's own extension) inside ``wrapper``, then ``extra``."""
    element = build(tag)
    connection = sub(element, wrapper)
    sub(connection, "callID", str(call_id))
    sub(connection, "deviceID", device)
    for name, value in (extra or {}).items():
        sub(element, name, value)
    return element


def answer_call(call_id: int, device: str) -> Element:
    """Answer the call alerting at ``device``, on the SIP device bound by ``assign_device``."""
    return _call_command("AnswerCall", "callToBeAnswered", call_id, device)


def clear_connection(call_id: int, device: str) -> Element:
    """Hang up ``device``'s connection; the MX confirms with ``ConnectionClearedEvent``."""
    return _call_command("ClearConnection", "connectionToBeCleared", call_id, device)


def hold_call(call_id: int, device: str) -> Element:
    """Confirmed by ``HeldEvent``."""
    return _call_command("HoldCall", "callToBeHeld", call_id, device)


def retrieve_call(call_id: int, device: str) -> Element:
    """Confirmed by ``RetrievedEvent``."""
    return _call_command("RetrieveCall", "callToBeRetrieved", call_id, device)


def single_step_transfer(call_id: int, device: str, to: str) -> Element:
    """Hand the connected call over to ``to`` and leave it."""
    return _call_command("SingleStepTransferCall", "activeCall", call_id, device,
                         {"transferredTo": to})


def deflect_call(call_id: int, device: str, to: str) -> Element:
    """Send a call still ringing at ``device`` on to ``to`` (another number, voicemail)."""
    return _call_command("DeflectCall", "callToBeDiverted", call_id, device,
                         {"newDestination": to})


def start_recording(call_id: int, device: str) -> Element:
    """Record ``device``'s side of a connected call (mx-protocol.md §4.3); the finished
    recording arrives as a ``MailIncomingReadyEvent`` with ``mediaType`` ``Recording``."""
    return _call_command("StartRecording", "Call", call_id, device)


def stop_recording(call_id: int, device: str) -> Element:
    return _call_command("StopRecording", "Call", call_id, device)


def assign_device(name: str) -> Element:
    """Bind the SIP device ``name`` (e.g. the app's soft phone) to the session, so that
    ``AnswerCall`` connects the call there; the MX answers with an ``AssignDeviceInfo`` event
    naming the device it bound (mx-protocol.md §4.2), not with a same-id reply."""
    element = build("AssignDevice")
    sub(element, "deviceID", name, type="device")
    return element


def get_service_list() -> Element:
    """``<GetServiceList/>``: read-only, answered with the same id (the list, or
    ``CSTAErrorCode`` where the session may not see it). Besides its own use, any such answer
    proves the MX has processed everything sent before it on this ordered connection, which
    makes it a fence after commands that have no end marker and a liveness probe."""
    return build("GetServiceList")


def logout() -> Element:
    """``<logout/>`` (lower-case), sent before closing the socket; the MX does not answer."""
    return build("logout")
