"""The one place where failures become HTTP statuses and ``{"error": "..."}`` bodies."""

from __future__ import annotations

import json
from collections.abc import Mapping

from twisted.logger import LogLevel
from twisted.web.server import Request

from mxproxy.csta.errors import (
    CallStateError,
    CSTAError,
    DeviceNotAssigned,
    LoginError,
    MXTimeout,
    MXUnavailable,
    ProtocolViolation,
    UnknownCall,
)
from mxproxy.csta.frame import FrameTooLarge
from mxproxy.csta.xml import XMLError
from mxproxy.logs import Logger
from mxproxy.store import StoreUnavailable

log = Logger(__name__)

_PHRASES = {429: b"Too Many Requests"}  # twisted.web knows no phrase for it


class HTTPError(Exception):
    """A failure whose status and message the API chose itself; ``detail`` goes to the log
    only (what the client must not see, such as the MX's address)."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.detail = detail


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def not_found(message: str = "not found") -> HTTPError:
    return HTTPError(404, message)


def as_http_error(error: BaseException) -> HTTPError:
    """The status for a failure; unknown failures are 500 and logged with their traceback."""
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, LoginError):
        return HTTPError(403, f"the MX refused the login: {error.message or 'no reason given'}")
    if isinstance(error, CallStateError):
        return HTTPError(409, f"the call is not in a state that allows this: {error.text}")
    if isinstance(error, UnknownCall):
        return HTTPError(404, f"the MX knows no such call: {error.text}")
    if isinstance(error, DeviceNotAssigned):
        return HTTPError(400, str(error))
    if isinstance(error, CSTAError):
        return HTTPError(400, f"the MX refused the command: {error.text}")
    if isinstance(error, MXTimeout):
        return HTTPError(504, "the MX did not answer in time", detail=str(error))
    if isinstance(error, (ProtocolViolation, XMLError)):
        return HTTPError(502, f"unexpected reply from the MX: {error}")
    if isinstance(error, MXUnavailable):  # its text names the MX's address
        return HTTPError(503, "the MX is unavailable", detail=str(error))
    if isinstance(error, StoreUnavailable):  # the details went to the log, once
        return HTTPError(503, "device tokens cannot be stored right now; try again later")
    if isinstance(error, FrameTooLarge):
        return HTTPError(400, "the request does not fit in one MX command")
    return HTTPError(500, "internal error")


def write_error(request: Request, error: HTTPError) -> bytes:
    """Status, headers and JSON body of ``error``; logged once, at a level by its status."""
    request.setResponseCode(error.status, _PHRASES.get(error.status))
    for name, value in error.headers.items():
        request.setHeader(name, value)
    request.setHeader(b"Content-Type", b"application/json")
    method = request.method.decode("ascii", "replace")
    path = request.path.decode("utf-8", "replace")
    # Not "message": a legacy log observer (trial's, twistd's text log) blanks that key in the
    # event that later observers get.
    log.emit(LogLevel.warn if error.status >= 500 else LogLevel.info,
             "{status} {method} {path}: {error}", status=error.status, method=method, path=path,
             error=error.message if error.detail is None else f"{error.message}: {error.detail}")
    return json.dumps({"error": error.message}).encode()
