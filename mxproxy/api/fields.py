"""Reading a request: the body as JSON or an HTML form, typed fields, and query arguments.

Every function raises a 400 ``HTTPError`` that names the field, so routes read like the API
table and never see a value of the wrong type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

from twisted.web.server import Request

from mxproxy.api.errors import bad_request

_SMALL_NUMBER = re.compile(r"[0-9]{1,9}")
"""A digit string worth reading as a number: ``int()`` of thousands of digits costs quadratic
time (Python refuses more than 4,300), and no seconds field needs more than nine."""
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
"""Control characters, lone surrogates (JSON's ``"\\ud800"``) and the two non-characters: XML
cannot carry them, so an MX command holding one could not even be built."""
_UNPRINTABLE_IN_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
                                   "\ud800-\udfff\ufffe\uffff]")
"""The same, tabs and line breaks allowed."""
_RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")
_SPELLED = {"true": True, "1": True, "false": False, "0": False}


def body_fields(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or as an HTML form. A body that is a JSON object counts as
    JSON whatever its label (``curl -d '{...}'`` calls it a form)."""
    body = b""
    if request.content is not None:
        request.content.seek(0)  # twisted.web has read a POSTed form already
        body = request.content.read()
    if not body.strip():
        return {}
    if body.lstrip().startswith(b"{") or _media_type(request) == b"application/json":
        try:
            fields = json.loads(body)
        except ValueError as error:  # UnicodeDecodeError included
            raise bad_request(f"malformed JSON: {error}") from None
        except RecursionError:
            raise bad_request("malformed JSON: nested too deeply") from None
        if not isinstance(fields, dict):
            raise bad_request("the JSON body must be an object")
        return fields
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[-1] for key, values in form.items()}


def _media_type(request: Request) -> bytes:
    return (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()


def flag(value: Any) -> Any:
    """Booleans as JSON gives them, or as a form spells them; anything else is returned as
    it is, for the caller to refuse."""
    return _SPELLED.get(value.lower(), value) if isinstance(value, str) else value


def text(fields: Mapping[str, Any], name: str) -> str:
    """A required non-empty string of printable characters, stripped."""
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f'"{name}" is required (a non-empty string)')
    return printable(value, name).strip()


def printable(value: str, name: str, lines: bool = False) -> str:
    """``value`` unless it holds a character an MX command cannot carry; with ``lines``, tabs
    and line breaks are allowed (a note may span lines)."""
    if (_UNPRINTABLE_IN_LINES if lines else _UNPRINTABLE).search(value):
        raise bad_request(f'"{name}" must not contain control characters or unpaired '
                          "surrogates")
    return value


def seconds(fields: Mapping[str, Any], name: str, default: int, lowest: int,
            highest: int) -> int:
    """A whole number of seconds in [lowest, highest], as a JSON number or a digit string."""
    value = fields.get(name, default)
    if isinstance(value, str) and _SMALL_NUMBER.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise bad_request(f'"{name}" must be a whole number of seconds from {lowest} to '
                          f"{highest}")
    return value


def timestamp(request: Request) -> int | None:
    """``timestamp`` as Unix seconds or RFC 3339 (with a zone); absent means the whole log."""
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(b"timestamp")
    if not values:
        return None
    raw = values[-1].decode("utf-8", "replace").strip()
    if _UNIX_SECONDS.fullmatch(raw):
        return int(raw)
    moment = None
    if _RFC3339.fullmatch(raw):
        try:
            moment = datetime.fromisoformat(raw.upper())
        except ValueError:
            pass
    if moment is None:
        raise bad_request(f"timestamp {raw[:40]!r}: expected Unix seconds or RFC 3339 with a "
                          "time zone, e.g. 2017-07-28T14:31:47Z")
    return int(moment.timestamp())


def query_flag(request: Request, name: str) -> bool:
    """A boolean query argument: a bare ``?name`` or ``?name=`` is true (the original's
    ``?sandbox``), as are ``1``/``true``; ``0``/``false`` are false. twisted.web leaves keys
    without ``=`` out of ``request.args``, hence the own parse."""
    query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
    values = parse_qs(query, keep_blank_values=True).get(name)
    if not values:
        return False
    value = flag(values[-1].strip())
    if value == "":
        return True
    if not isinstance(value, bool):
        raise bad_request(f'"{name}" must be true or false (or given without a value)')
    return value
