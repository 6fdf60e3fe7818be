"""Unsolicited MX events about calls, mail and the session (mx-protocol.md §3.6-3.9, §4.2, §4.7).

Each call event names the element that holds its connection (``establishedConnection``,
``droppedConnection``, ...) and lists its own fields; the shared parts (monitor, call, device,
global call id, cause) are declared once in :class:`CallEvent`. Identifiers stay strings:
``globalCallID`` is numeric in samples but nothing guarantees it (mx-protocol.md §7.13).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import attrs

from mxproxy.csta.records import XMLRecord, boolean, derived, integer, string
from mxproxy.csta.xml import Element, attr, find, findall

CallData = tuple[str, str, str]


def _device(name: str) -> Any:
    """A CSTA device reference: the text of ``<name><deviceIdentifier>``."""
    return string(f"{name}/deviceIdentifier")


def _call_data(element: Element) -> tuple[CallData, ...]:
    return tuple((attr(item, "name"), attr(item, "type"), (item.text or "").strip())
                 for item in findall(element, "cad"))


@attrs.frozen
class MonitorEvent(XMLRecord):
    """An event raised by a monitor; ``monitor_cross_ref_id`` says which one (and so which user)."""

    monitor_cross_ref_id: int = integer("monitorCrossRefID")


@attrs.frozen
class CallEvent(MonitorEvent):
    """Parts every call event shares. ``callID``/``deviceID`` are read from the event's own
    connection element, or from the root when the MX puts them there."""

    connection_tag: ClassVar[str] = "connection"

    call_id: int = integer("callID", in_connection=True)
    device_id: str = string("deviceID", in_connection=True)
    global_call_id: str = string("globalCallID", in_connection=True)
    cause: str = string("cause")

    @classmethod
    def from_xml(cls, element: Element) -> Self:
        connection = find(element, cls.connection_tag)
        return cls._read(element, element if connection is None else connection)


@attrs.frozen
class Delivered(CallEvent):
    """``DeliveredEvent``: a call is alerting a monitored device — the event that rings phones."""

    alerting_device: str = _device("alertingDevice")
    alerting_display_name: str = string("alertingDisplayName")
    network_calling_device: str = _device("networkCallingDevice")
    calling_device: str = _device("callingDevice")
    calling_display_name: str = string("callingDisplayName")
    called_device: str = _device("calledDevice")
    last_redirection_device: str = _device("lastRedirectionDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")
    cad: tuple[CallData, ...] = derived(_call_data, ())

    def push_payload(self, time: int) -> dict[str, object]:
        """The push notification body of the original (mx-protocol.md §6.5); ``time`` is when
        the event was processed, since the MX does not stamp it."""
        payload: dict[str, object] = {
            "callId": self.call_id,
            "deviceId": self.device_id,
            "globalCallId": self.global_call_id,
            "alertingDevice": self.alerting_device,
            "callingDevice": self.calling_device,
            "calledDevice": self.called_device,
            "lastRedirectionDevice": self.last_redirection_device,
            "localConnectionInfo": self.local_connection_info,
            "cause": self.cause,
        }
        if self.call_type_flags:
            payload["callTypeFlags"] = self.call_type_flags
        payload["time"] = time
        return payload


@attrs.frozen
class Established(CallEvent):
    """``EstablishedEvent``: the call was answered."""

    connection_tag = "establishedConnection"

    answering_device: str = _device("answeringDevice")
    answering_display_name: str = string("answeringDisplayName")
    calling_device: str = _device("callingDevice")
    calling_display_name: str = string("callingDisplayName")
    called_device: str = _device("calledDevice")
    last_redirection_device: str = _device("lastRedirectionDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")
    cad: tuple[CallData, ...] = derived(_call_data, ())


@attrs.frozen
class Originated(CallEvent):
    """``OriginatedEvent``: a monitored device placed a call."""

    connection_tag = "originatedConnection"

    calling_device: str = _device("callingDevice")
    called_device: str = _device("calledDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")


@attrs.frozen
class ConnectionCleared(CallEvent):
    """``ConnectionClearedEvent``: a party hung up."""

    connection_tag = "droppedConnection"

    releasing_device: str = _device("releasingDevice")
    local_connection_info: str = string("localConnectionInfo")


@attrs.frozen
class Held(CallEvent):
    """``HeldEvent``."""

    connection_tag = "heldConnection"

    holding_device: str = _device("holdingDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")


@attrs.frozen
class Retrieved(CallEvent):
    """``RetrievedEvent``: a held call was taken back."""

    connection_tag = "retrievedConnection"

    retrieving_device: str = _device("retrievingDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")


@attrs.frozen
class Diverted(CallEvent):
    """``DivertedEvent``: the call went elsewhere (forward, deflect, pick-up)."""

    diverting_device: str = _device("divertingDevice")
    new_destination: str = _device("newDestination")
    last_redirection_device: str = _device("lastRedirectionDevice")
    local_connection_info: str = string("localConnectionInfo")
    cmds_allowed: int = integer("cmdsAllowed")
    call_type_flags: int = integer("callTypeFlags")


@attrs.frozen
class ServiceInitiated(CallEvent):
    """``ServiceInitiatedEvent``: a device went off-hook to make a call."""

    connection_tag = "initiatedConnection"

    initiating_device: str = _device("initiatingDevice")
    local_connection_info: str = string("localConnectionInfo")


@attrs.frozen
class NetworkReached(CallEvent):
    """``NetworkReachedEvent``: an outgoing call left the MX for the network."""

    connection_tag = "outboundConnection"

    network_interface_used: str = _device("networkInterfaceUsed")
    calling_device: str = _device("callingDevice")
    called_device: str = _device("calledDevice")
    local_connection_info: str = string("localConnectionInfo")


@attrs.frozen
class Failed(CallEvent):
    """``FailedEvent``: the call could not be completed."""

    connection_tag = "failedConnection"

    calling_device: str = _device("callingDevice")
    called_device: str = _device("calledDevice")
    local_connection_info: str = string("localConnectionInfo")


@attrs.frozen
class Transferred(CallEvent):
    """``TransferedEvent`` (sic, as the MX spells it) or ``TransferredEvent``."""

    connection_tag = "primaryOldCall"

    transferring_device: str = _device("transferringDevice")
    transferred_to_device: str = _device("transferredToDevice")
    local_connection_info: str = string("localConnectionInfo")


@attrs.frozen
class RecordingState(CallEvent):
    """``RecordingStateEvent``; ``callID``/``deviceID`` come inside ``<connection>`` or directly
    under the root — both shapes are seen (mx-protocol.md §3.7)."""

    rec_is_available: bool = boolean("RecIsAvailable")
    rec_is_active: bool = boolean("RecIsActive")


@attrs.frozen
class CallParkInfo(MonitorEvent):
    """``callParkInfo``: where a parked call waits."""

    park_id: str = string("parkID")


@attrs.frozen
class MailIncomingReady(MonitorEvent):
    """``MailIncomingReadyEvent``: a new voicemail or call recording (mx-protocol.md §3.9.5).
    ``ownerId`` moved from element to attribute and ``Duration`` lost its capital over time."""

    sender: str = string("@from")
    from_name: str = string("@fromName")
    caller_name: str = string("@callerName")
    to: str = string("@to")
    private: str = string("@private")
    urgent: str = string("@urgent")
    owner_id: str = string("@ownerId", "ownerId")
    owner_type: str = string("@ownerType")
    mail_id: str = string("mailId")
    media_type: str = string("mediaType")
    gcid: str = string("gcid")
    received: int = integer("received")
    duration: int = integer("duration", "Duration")
    read: bool = boolean("read")
    file_format: str = string("fileFormat")
    note: str = string("note")


@attrs.frozen
class Logout(XMLRecord):
    """``<Logout mode=…/>``: the MX ended the session (e.g. a forced login elsewhere)."""

    mode: str = string("@mode")


@attrs.frozen
class AssignDeviceInfo(XMLRecord):
    """``AssignDeviceInfo``: the SIP device the MX bound to the session after ``AssignDevice``
    (mx-protocol.md §4.2); another name than the one asked for means the binding failed."""

    device_id: str = string("deviceID")


@attrs.frozen
class Presence(XMLRecord):
    """``presence``: a user's status; ``sender`` is ``"0"`` for the session's own user."""

    sender: str = string("@from")
    status: str = string("@status")
    mx_status: str = string("@mxStatus")
    note: str = string("presenceNote", "@presenceNote")
