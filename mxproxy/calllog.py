"""Collecting a user's call log: ``callloginfo`` blocks with no end marker, ended by a fence.

The MX sends the log as id-9999 blocks of up to 21 entries and nothing at all for an empty log
(mx-protocol.md §3.2.1): no block says it is the last, so a quiet period was the only guess, and
a slow MX beat it (an empty answer, then late blocks answering the user's next request). The
MX runs one connection's commands in order, so a ``GetServiceList`` sent right after the
request is a fence: its same-id answer, a list or ``CSTAErrorCode``, comes after every block.
Any log, empty or a multiple of 21 long, ends one round trip after its last block.

A log is complete or the request fails: ``ProtocolViolation`` (502) when a block, or any frame
during the collection, cannot be read; ``MXTimeout`` (504) when the fence is not answered
within the deadline. Either way, and when the caller gives up, the link is logged out, so that
nothing still owed for this request can answer another one.

An MX that never answered ``GetServiceList`` would get 504 for every call log, after the
deadline. That is chosen, not overlooked: blocks alone never prove a log complete (the old
guesses returned logs with holes, or another request's entries), a refusal (``CSTAErrorCode``,
what the simulator answers to a command it does not know) ends the log like a list does, and
a steady 504 is seen and reported where a silently short log is not.
"""

from __future__ import annotations

import operator

import attrs

from mxproxy.csta import commands
from mxproxy.csta.errors import CSTAError, ProtocolViolation
from mxproxy.csta.messages import CallInfo, CallLogBlock
from mxproxy.csta.protocol import CSTAProtocol, Message
from mxproxy.csta.xml import XMLError

DEADLINE = 7.0
_RECORD_ID = operator.attrgetter("record_id")


@attrs.frozen
class CallLogTiming:
    """``deadline``: seconds from the request to the fence's answer, every block included.

    7 s is what the original's client library allowed the MX for each answer (mx-protocol.md
    §1.6) and what its users already waited at worst. Here it bounds the whole log, which
    costs little beyond the MX's first answer: about 2 ms a block with the simulator, 0.4-0.5 s
    for 5,000 entries over TCP or TLS on loopback (bench/calllog_collect.py)."""

    deadline: float = DEADLINE


async def fetch_call_log(protocol: CSTAProtocol, since: int | None,
                         timing: CallLogTiming | None = None) -> list[CallInfo]:
    """Every entry after ``since`` (Unix seconds; None = the whole log), by ``recordId``."""
    deadline = (timing or CallLogTiming()).deadline
    entries: list[CallInfo] = []
    malformed: list[XMLError] = []

    def receive(message: Message) -> None:
        try:
            entries.extend(CallLogBlock.from_xml(message.element).entries)
        except XMLError as error:
            malformed.append(error)

    unreadable = protocol.unreadable_frames
    unsubscribe = protocol.subscribe("callloginfo", receive)
    try:
        protocol.send(commands.calllog(since))
        try:
            await protocol.request(commands.get_service_list(), timeout=deadline)
        except CSTAError:
            pass  # refused, but answered in order: the blocks are all in
        if malformed:
            raise ProtocolViolation(f"malformed call-log block: {malformed[0]}")
        if protocol.unreadable_frames != unreadable:
            raise ProtocolViolation("an unreadable frame arrived with the call log")
    except Exception:  # CancelledError too; a coroutine closed unfinished does no I/O
        protocol.logout()
        raise
    finally:
        unsubscribe()
    return sorted(entries, key=_RECORD_ID)
