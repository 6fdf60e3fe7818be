"""Collecting a user's call log: ``callloginfo`` blocks of 21 with no end marker.

The MX sends the log as blocks of up to 21 entries and nothing at all for an empty log
(mx-protocol.md §3.2.1). The log has ended at a block of fewer than 21 entries, at an empty
block, or when the MX has been quiet for a short while after a full block — so a log whose
length is a multiple of 21 costs a fraction of a second, not the original's 7 s timeout.
"""

from __future__ import annotations

import attrs

from mxproxy.csta import commands
from mxproxy.csta.errors import MXTimeout
from mxproxy.csta.messages import CallInfo, CallLogBlock
from mxproxy.csta.protocol import CSTAProtocol

BLOCK_SIZE = 21


@attrs.frozen
class CallLogTiming:
    """How long to wait for the first block (an empty log sends none) and between blocks."""

    first_block: float = 1.0
    quiet: float = 0.3


async def fetch_call_log(protocol: CSTAProtocol, since: int | None,
                         timing: CallLogTiming | None = None) -> list[CallInfo]:
    """Every entry after ``since`` (Unix seconds; None = the whole log), by ``recordId``."""
    timing = timing or CallLogTiming()
    entries: list[CallInfo] = []
    waiting = protocol.expect("callloginfo", timeout=timing.first_block)
    protocol.send(commands.calllog(since))
    while True:
        try:
            message = await waiting
        except MXTimeout:
            break  # an empty log, or quiet after a full block
        block = CallLogBlock.from_xml(message.element)
        entries.extend(block.entries)
        if len(block.entries) < BLOCK_SIZE:
            break
        waiting = protocol.expect("callloginfo", timeout=timing.quiet)
    return sorted(entries, key=lambda entry: entry.record_id)
