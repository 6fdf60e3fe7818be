"""DeliveredEvent frames per second through CSTAProtocol's decode path vs bare lxml parsing.

The protocol path is what every incoming call goes through: frame decoding, the hardened parse,
the root-name lookup and dispatch to a subscriber. The baseline is ``lxml.etree.fromstring`` on
the same XML bytes, measured in the same run, alternating rounds to even out machine noise.

Usage: python bench/csta_decode.py [--frames N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from lxml import etree
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mxproxy.csta.frame import EVENT_ID, encode
from mxproxy.csta.messages import Delivered
from mxproxy.csta.protocol import CSTAProtocol, Message

DELIVERED = (
    b"<DeliveredEvent><monitorCrossRefID>12</monitorCrossRefID>"
    b"<connection><callID>21</callID><deviceID>3095</deviceID>"
    b"<globalCallID>1234567890123456789</globalCallID></connection>"
    b"<alertingDevice><deviceIdentifier>3095</deviceIdentifier></alertingDevice>"
    b"<alertingDisplayName>Test User</alertingDisplayName>"
    b"<networkCallingDevice><deviceIdentifier>3044</deviceIdentifier></networkCallingDevice>"
    b"<callingDevice><deviceIdentifier>3044</deviceIdentifier></callingDevice>"
    b"<callingDisplayName>Other User</callingDisplayName>"
    b"<calledDevice><deviceIdentifier>3095</deviceIdentifier></calledDevice>"
    b"<lastRedirectionDevice><deviceIdentifier>3044</deviceIdentifier></lastRedirectionDevice>"
    b"<localConnectionInfo>alerting</localConnectionInfo><cause>normal</cause>"
    b"<cmdsAllowed>0</cmdsAllowed><callTypeFlags>170917889</callTypeFlags>"
    b'<cad name="Account" type="string">42</cad></DeliveredEvent>'
)


def lxml_baseline(count: int) -> float:
    fromstring = etree.fromstring
    start = time.perf_counter()
    for _ in range(count):
        fromstring(DELIVERED)
    return time.perf_counter() - start


def protocol_path(count: int, subscriber: Callable[[Message], None]) -> float:
    protocol = CSTAProtocol(Clock())
    protocol.makeConnection(StringTransport())
    protocol.subscribe("DeliveredEvent", subscriber)
    frame = encode(EVENT_ID, DELIVERED)
    receive = protocol.dataReceived
    start = time.perf_counter()
    for _ in range(count):
        receive(frame)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    runs: dict[str, Callable[[], float]] = {
        "lxml.etree.fromstring": lambda: lxml_baseline(args.frames),
        "CSTAProtocol decode + dispatch": lambda: protocol_path(
            args.frames, lambda message: None),
        "... + typed Delivered parse": lambda: protocol_path(
            args.frames, lambda message: Delivered.from_xml(message.element) and None),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    rates = {name: args.frames / seconds for name, seconds in best.items()}
    baseline = rates["lxml.etree.fromstring"]
    print(f"DeliveredEvent of {len(DELIVERED)} bytes, {args.frames} frames, "
          f"best of {args.rounds} alternating rounds")
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:>10,.0f} frames/s   ratio {rate / baseline:.2f}")
    ratio = rates["CSTAProtocol decode + dispatch"] / baseline
    print(f"decode path / lxml ratio: {ratio:.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()
