"""A fake Zultys MX speaking the real CSTA-XML wire protocol, for tests, benchmarks and the demo.

Build a :class:`PBX` (or :func:`demo_pbx`), serve it with :func:`listen`, drive it from Python
(``place_call``, ``answer``, ``hold``, ``transfer``, ``deflect``, ``hang_up``,
``start_recording``, ``leave_voicemail``, ``logout``, ``faults``...) or over the loopback
control API (:mod:`mxproxy.testing.mxsim.control`).
"""

from mxproxy.testing.mxsim.control import listen_control
from mxproxy.testing.mxsim.demo import demo_pbx
from mxproxy.testing.mxsim.model import (
    Call,
    CallRecord,
    Conflict,
    Contact,
    Faults,
    ReceivedCommand,
    UnknownObject,
    User,
    Variants,
    Voicemail,
)
from mxproxy.testing.mxsim.operations import password_hash
from mxproxy.testing.mxsim.pbx import PBX
from mxproxy.testing.mxsim.server import Session, SessionFactory, listen

__all__ = [
    "PBX", "Call", "CallRecord", "Conflict", "Contact", "Faults", "ReceivedCommand", "Session",
    "SessionFactory", "UnknownObject", "User", "Variants", "Voicemail", "demo_pbx", "listen",
    "listen_control", "password_hash",
]
