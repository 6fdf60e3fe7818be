"""Typed failures of the MX link, shared by the protocol, the client and everything above them.

A ``CSTAErrorCode`` (mx-protocol.md §3.8) becomes one of three classes, read from the ECMA-323
error values it carries (the XML names of ECMA-269's universal failures), so that the API can
tell "not now" from "no such call" from "not so":

* :class:`UnknownCall`: the operation error ``invalidCallID`` -- no call has that id.
* :class:`CallStateError`: any ``<stateIncompatibility>`` value, and the operation error
  ``invalidConnectionID`` (the call goes on, but no longer at that device). The simulator
  sends ``noCallToAnswer`` (not ringing at that device: answered elsewhere, transferred,
  deflected, over), ``noConnectionToClear``, ``noActiveCall`` (hold, transfer or recording
  of a call that is not connected), ``noHeldCall`` (retrieve of a call that is not held) and
  ``invalidObjectState`` (deflect of a call that is not ringing there, a second
  ``StartRecording``, ``StopRecording`` of a call not recorded).
* :class:`CSTAError` itself for the rest: ``invalidDeviceID``, ``invalidDestination``,
  ``privilegeViolationOnSpecifiedDevice`` (another user's device), the MX's private codes
  such as ``URM Denied``.

The real MX's values are not documented (only ``URM Denied`` is seen), so a refusal carrying
none of these stays a plain :class:`CSTAError`. Each keeps the MX's own text.
"""

from __future__ import annotations


class MXError(Exception):
    """Base of every failure talking to an MX."""


class CSTAError(MXError):
    """The MX answered a request with ``CSTAErrorCode``; ``text`` is the MX's own reason."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


UNKNOWN_CALL = "invalidCallID"
INVALID_CONNECTION = "invalidConnectionID"
STATE_INCOMPATIBILITY = "stateIncompatibility"
"""The ``CSTAErrorCode`` child that holds a state error's value (``operation`` holds the rest)."""
NO_CALL_TO_ANSWER = "noCallToAnswer"
NO_CONNECTION_TO_CLEAR = "noConnectionToClear"
NO_ACTIVE_CALL = "noActiveCall"
NO_HELD_CALL = "noHeldCall"
INVALID_OBJECT_STATE = "invalidObjectState"
CALL_STATE_VALUES = frozenset({INVALID_CONNECTION, NO_CALL_TO_ANSWER, NO_CONNECTION_TO_CLEAR,
                               NO_ACTIVE_CALL, NO_HELD_CALL, INVALID_OBJECT_STATE,
                               "noCallToClear", "noCallToComplete",
                               "invalidConnectionIDForActiveCall"})
"""State values recognised wherever they appear, should an MX put them under ``operation``."""


class CallStateError(CSTAError):
    """The call exists, but not in a state that allows the command at that device."""


class UnknownCall(CSTAError):
    """The MX knows no call with that id."""


class DeviceNotAssigned(CSTAError):
    """``AssignDevice`` was answered with another device than the one asked for: how the MX
    says no to a name it does not know for the user (mx-protocol.md §4.2)."""


class LoginError(MXError):
    """The MX refused a login with ``loginFailed``."""

    def __init__(self, code: int, message: str, apiversion: int = 0) -> None:
        super().__init__(f"login failed (code {code}): {message}" if message else
                         f"login failed (code {code})")
        self.code = code
        self.message = message
        self.apiversion = apiversion


class MXTimeout(MXError):
    """No reply within the allowed time."""


class MXUnavailable(MXError):
    """The link is down: it could not be opened, or it closed before the reply arrived."""


class LinkFailed(MXUnavailable):
    """The link could not be opened for a reason an operator can act on; ``hint`` is what to
    check first. The message names the MX's address: it belongs in the log, not in an answer to
    an HTTP client."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class Unreachable(LinkFailed):
    """No connection: refused, a name that does not resolve, no answer."""


class WrongTransport(LinkFailed):
    """The peer ended the first exchange in a way that says TLS met plain TCP: TLS configured
    for a plain-TCP port, or the reverse (or the port is not an MX's)."""


class CertificateRefused(LinkFailed):
    """The MX's certificate is not the pinned one, or not issued by the configured CA."""


class LoggedOut(MXUnavailable):
    """The MX ended the session with a ``Logout`` event; ``mode`` is the reason it gave."""

    def __init__(self, mode: str) -> None:
        super().__init__(f"logged out by the MX (mode {mode or 'unspecified'!r})")
        self.mode = mode


class ProtocolViolation(MXError):
    """The MX sent something that breaks the protocol (bad framing, unparseable reply)."""
