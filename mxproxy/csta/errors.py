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
