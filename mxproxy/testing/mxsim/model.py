"""The records a simulated PBX is made of, its fault and protocol-variant switches, and the
two refusals its operations raise.

Plain attrs classes with no behaviour beyond validation, so tests and the demo can build them
directly; the PBX (``pbx.py``) owns them and turns changes into wire events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from mxproxy.csta.commands import RECORDING
from mxproxy.csta.xml import Element

if TYPE_CHECKING:
    from mxproxy.testing.mxsim.server import Session

MalformedKind = Literal["xml", "header", "length", "id"]
MALFORMED_KINDS: tuple[MalformedKind, ...] = ("xml", "header", "length", "id")
CallLogEnd = Literal["short", "empty-terminator"]
CALL_LOG_ENDS: tuple[CallLogEnd, ...] = ("short", "empty-terminator")
RecordingShape = Literal["connection", "root"]
RECORDING_SHAPES: tuple[RecordingShape, ...] = ("connection", "root")
ALL = "*"
NoReply = frozenset[str] | Literal["*"]


class UnknownObject(KeyError):
    """A login, JID, extension or call id the PBX does not have (control API: 404)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Conflict(ValueError):
    """The change would duplicate a login, extension or JID, or the call is not in a state
    that allows it (control API: 409)."""


class WrongState(Conflict):
    """A call command refused for the call's state; ``value`` is the ECMA-323
    ``stateIncompatibility`` value the MX answers with."""

    def __init__(self, value: str, message: str) -> None:
        super().__init__(message)
        self.value = value


@attrs.define
class Contact:
    """One ``abentry`` of the address book; ``business_phone`` is the extension."""

    jid: str
    first_name: str = ""
    last_name: str = ""
    business_phone: str = ""
    home_phone: str = ""
    cell_phone: str = ""
    email: str = ""
    did: str = ""
    exchange_id: str = ""
    home_system: str = ""
    presence: str = "Available"
    presence_note: str = ""

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)


@attrs.frozen
class CallRecord:
    """One ``callinfo`` of a user's call log (timestamps in Unix seconds); immutable, so that
    the blocks built from it can be cached."""

    record_id: int
    gcid: str
    direction: Literal["incoming", "outgoing"]
    disconnect: int
    calling_party: str
    original_called_party: str
    missed: bool = False
    connect: int | None = None  # absent for unanswered calls
    first_name: str = ""
    last_name: str = ""
    extension: str = ""
    service_name: str = ""
    service_extension: str = ""
    call_type: int = 1
    leg_type: int = 1
    self_leg_type: int = 1
    monitor_type: int = 0


@attrs.define
class Voicemail:
    """One message of a user's mailbox, a voicemail or (``media_type`` ``Recording``) a call
    recording; ``content`` is the whole file (e.g. a WAV)."""

    mail_id: int
    content: bytes = attrs.field(repr=lambda content: f"<{len(content)} bytes>")
    from_number: str = ""
    from_name: str = ""
    caller_name: str = ""
    to: str = ""
    received: int = 0
    duration: int = 0
    read: bool = False
    note: str = ""
    media_type: str = "VoiceMail"
    file_format: str = "wav"
    owner_type: str = "user"
    gcid: str = ""


@attrs.define
class User:
    """A login that can open a user session, with its mailbox and call log.

    ``clear_text_only`` models an LDAP-backed account: the MX cannot check a hash, refuses it
    with ``loginFailed Code="4"`` and accepts only the clear-text retry.
    """

    login: str
    password: str
    extension: str
    jid: str
    first_name: str = ""
    last_name: str = ""
    soft_phone_pwd: str = ""
    clear_text_only: bool = False
    devices: list[str] = attrs.Factory(list)
    """The SIP devices (soft phones) ``AssignDevice`` may bind for this user."""
    call_log: list[CallRecord] = attrs.Factory(list)
    voicemails: dict[int, Voicemail] = attrs.Factory(dict)
    recordings: dict[int, Voicemail] = attrs.Factory(dict)
    """Recordings of the user's calls: a mailbox of their own, which ``Mail*`` commands reach
    with ``<mediaType>Recording</mediaType>`` only."""

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part)

    def mailbox(self, media_type: str) -> dict[int, Voicemail]:
        """The voicemails, or the recordings (``media_type`` ``Recording``)."""
        return self.recordings if media_type == RECORDING else self.voicemails


@attrs.frozen
class Service:
    """A system service (``GetServiceList``, mx-protocol.md §4.4): voicemail, an auto
    attendant, the park server...; ``service_type`` is the MX's code (``VM``, ``AA``,
    ``ParkServer``, ``BindServer``, ``AdvancedACD``)."""

    service_id: int
    name: str
    service_type: str
    extension: str
    home_system: str


CallState = Literal["alerting", "established", "held", "cleared"]


@attrs.define
class Call:
    """A two-party call: ``calling`` and ``callee``, either an extension or an outside number.

    ``called`` is the number first dialled; ``callee`` is where the call is now: ringing there
    while ``alerting``, replaced by the target of a transfer or deflection (``redirected_by``
    the device that sent it on). ``answered_by`` is the device that answered: the callee, or
    another that picked the call up. ``answered_on`` is
    the SIP device the user answered on (``AssignDevice``), empty when answered at the
    extension itself; ``held_by`` the party that put the call on hold; ``recordings`` the
    parties recording it (``StartRecording``), each with when it started.
    """

    call_id: int
    global_call_id: str
    calling: str
    called: str
    calling_name: str = ""
    callee_name: str = ""
    state: CallState = "alerting"
    callee: str = ""
    answered_by: str = ""
    answered_on: str = ""
    held_by: str = ""
    redirected_by: str = ""
    started: int = 0
    answered: int | None = None
    recordings: dict[str, int] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        self.callee = self.callee or self.called

    @property
    def ends(self) -> tuple[str, str]:
        """The two parties: the caller, and who answered (or, unanswered, the callee)."""
        return self.calling, self.answered_by or self.callee

    @property
    def involved(self) -> tuple[str, ...]:
        """Every device whose monitors hear of the call: both ends, and where it rang when
        another device picked it up."""
        return tuple(dict.fromkeys(d for d in (self.calling, self.callee, self.answered_by) if d))

    def other_end(self, device: str) -> str:
        calling, answering = self.ends
        return answering if device == calling else calling


@attrs.frozen
class ReceivedCommand:
    """One frame a session received, as tests see it.

    ``name`` is the root's local name, except for ``iq`` where it is ``iq:<id attribute>``
    (``iq:addressbook``, ``iq:calllog``, ``iq:mode``) because the root alone says nothing.
    """

    name: str
    invoke_id: int
    element: Element
    session: Session = attrs.field(eq=False, repr=False)


def _no_reply(value: Any) -> NoReply:
    if value == ALL:
        return "*"
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


def _arm_malformed(faults: Faults, _attribute: Any, kind: MalformedKind | None
                   ) -> MalformedKind | None:
    if kind is not None and kind not in MALFORMED_KINDS:
        raise ValueError(f"malformed_next must be one of {MALFORMED_KINDS} or None, got {kind!r}")
    if kind is not None:
        faults.malformed_round += 1
    return kind


@attrs.define
class Faults:
    """Switches that make the simulator misbehave like a slow or broken MX.

    * ``reply_delay``: seconds before a request is processed, so its reply and the events it
      causes (``ablist``, ``callloginfo``, call events of MakeCall) all come late; order is kept.
    * ``no_reply``: command names (as in :class:`ReceivedCommand`) that are recorded but neither
      executed nor answered; ``"*"`` means every command.
    * ``malformed_next``: each session's next outgoing frame is replaced by a broken one
      (``"xml"`` bad body, ``"header"`` non-zero bytes 0-1, ``"length"`` length < 8, ``"id"``
      non-digit id). Once per session for every assignment, sessions opened later included,
      until it is set back to ``None``.
    * ``refuse_logins``: every login gets ``loginFailed``.
    """

    reply_delay: float = attrs.field(default=0.0, converter=float)
    no_reply: NoReply = attrs.field(default=frozenset(), converter=_no_reply)
    malformed_next: MalformedKind | None = attrs.field(
        default=None, on_setattr=_arm_malformed)
    refuse_logins: bool = attrs.field(default=False,
                                      validator=attrs.validators.instance_of(bool))
    malformed_round: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        _arm_malformed(self, None, self.malformed_next)

    @reply_delay.validator
    def _check_delay(self, _attribute: Any, value: float) -> None:
        if value < 0:
            raise ValueError(f"reply_delay must be >= 0, got {value}")

    def silences(self, name: str) -> bool:
        return self.no_reply == ALL or name in self.no_reply


@attrs.define
class Variants:
    """Choices where the real MX behaviour is unknown (mx-protocol.md §7.5).

    ``call_log_end``: ``"short"`` ends a call log only by a block of fewer than 21 entries
    (nothing at all for an empty log); ``"empty-terminator"`` additionally sends an empty
    ``<callloginfo/>`` when the last block was full or the log is empty.

    ``recording_state``: where ``RecordingStateEvent`` puts ``callID``/``deviceID``: inside
    ``<connection>`` (mx-http-proxy's reading, ECMA style) or directly under the root
    (mxproxy's reading); mx-protocol.md §3.7 has both.
    """

    call_log_end: CallLogEnd = attrs.field(
        default="short", validator=attrs.validators.in_(CALL_LOG_ENDS))
    recording_state: RecordingShape = attrs.field(
        default="connection", validator=attrs.validators.in_(RECORDING_SHAPES))
