"""Typed failures of the MX link, shared by the protocol, the client and everything above them."""

from __future__ import annotations


class MXError(Exception):
    """Base of every failure talking to an MX."""


class CSTAError(MXError):
    """The MX answered a request with ``CSTAErrorCode``; ``text`` is the MX's own reason."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


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


class LoggedOut(MXUnavailable):
    """The MX ended the session with a ``Logout`` event; ``mode`` is the reason it gave."""

    def __init__(self, mode: str) -> None:
        super().__init__(f"logged out by the MX (mode {mode or 'unspecified'!r})")
        self.mode = mode


class ProtocolViolation(MXError):
    """The MX sent something that breaks the protocol (bad framing, unparseable reply)."""
