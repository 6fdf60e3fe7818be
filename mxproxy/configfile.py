"""Load and validate ``mxproxy.json`` into the classes of :mod:`mxproxy.config`.

The format is the original product's (``mx``, ``apns``, ``gfcm``), extended compatibly. Every
problem is one line naming the file and the JSON path; all of a file's problems are found in one
run and raised together as a :class:`ConfigError` before anything listens, so that an operator
fixes them in one go. Unknown keys are only warnings, returned next to the :class:`Config`, so
that a typo is visible without refusing a file written for a newer version.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from difflib import get_close_matches
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

from cryptography import x509

from mxproxy.config import (
    DEFAULT_MX_PORT,
    APNsConfig,
    Config,
    ConfigError,
    MXConfig,
    PushConfig,
)

_TOP_KEYS = ("mx", "apns", "gfcm", "push")
_APNS_KEY_KEYS = ("keyId", "teamId", "topics")
_PUSH_KEYS = ("apnsHost", "apnsSandboxHost", "ca", "fcmUrl", "maxInFlight", "maxQueued",
              "maxDevicesPerUser")
_MX_KEYS = ("addr", "login", "password", "tls", "fingerprint", "ca", "clearTextRetry",
            "maxContacts")
_MX_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PLAIN_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_ADDR = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>[0-9]{1,5}))?")
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_HEX_SEPARATORS = re.compile(r"[:\s]")
_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")
_JSON_TYPE_NAMES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}

_T = TypeVar("_T")


def load_config(path: str) -> tuple[Config, list[str]]:
    """Read and validate the file at ``path``; return the config and the warnings to log.

    Raises :class:`ConfigError` for a file that cannot be read, is not JSON, or is not valid.
    """
    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: cannot read: not UTF-8 (byte {error.start})") from None
    try:
        data = json.loads(text, object_pairs_hook=_JSONObject.from_pairs)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    return parse_config(data, path)


def parse_config(data: object, source: str) -> tuple[Config, list[str]]:
    """Validate decoded JSON. ``source`` names the file in messages, and relative ``ca`` paths
    are resolved against its directory. The :class:`ConfigError` holds every problem found."""
    parser = _Parser(source)
    config = parser.config(data)
    if parser.errors or config is None:
        raise ConfigError(parser.errors, parser.warnings)
    return config, parser.warnings


class _JSONObject(dict[str, Any]):
    """A decoded JSON object that remembers keys given twice, which ``json`` drops silently."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JSONObject:
        obj = cls(pairs)
        counts = Counter(key for key, _ in pairs)
        obj.duplicates = tuple(key for key, count in counts.items() if count > 1)
        return obj


def _child(path: str, key: str) -> str:
    """The JSON path of ``key`` inside ``path``: ``mx.dev.addr``, or ``apns["cert.p12"]``."""
    if not _PLAIN_PATH_SEGMENT.fullmatch(key):
        return f"{path}[{_quote(key)}]"
    return f"{path}.{key}" if path else key


def _quote(value: str) -> str:
    """Quote a value for a message, escaping anything that could break it onto two lines."""
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


class _Invalid(Exception):
    """A section or entry whose problems are noted already: it cannot be built."""


class _Parser:
    """One validation run: knows the source for messages, collects the errors and warnings.

    A check raises the :class:`ConfigError` of its one problem; :meth:`attempt` notes it and
    goes on with the next check, so one bad value does not hide the others. A section or entry
    with a problem is built as None: the run ends in an error anyway.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path or 'top level'}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")

    def attempt(self, check: Callable[[], _T]) -> _T | None:
        """``check()``, or None once its problems are noted."""
        try:
            return check()
        except ConfigError as error:
            self.errors.extend(error.lines)
        except _Invalid:
            pass  # noted by the checks it is made of
        return None

    def config(self, data: object) -> Config | None:
        top = self.attempt(lambda: self.as_object(data, ""))
        if top is None:
            return None
        self.warn_unknown_keys(top, "", _TOP_KEYS)
        mx = self.attempt(lambda: self.mx_section(self.required(top, "", "mx", _TOP_KEYS)))
        apns = self.attempt(lambda: self.apns_section(top))
        gfcm = self.attempt(lambda: MappingProxyType({
            app: self.relative(value) for app, value in self.string_map(top, "gfcm").items()}))
        push = self.attempt(lambda: self.push_section(top))
        if mx is None or apns is None or gfcm is None or push is None:
            return None
        return Config(mx=mx, apns=apns, gfcm=gfcm, push=push, path=self.source)

    def as_object(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"expected an object, got {_json_type(value)}")
        for key in getattr(value, "duplicates", ()):
            self.warn(_child(path, key), "given more than once, the last one is used")
        return value

    def optional_object(self, top: Mapping[str, Any], key: str) -> dict[str, Any]:
        return self.as_object(top[key], key) if key in top else {}

    def typed(self, obj: Mapping[str, Any], path: str, key: str, kind: type[_T]) -> _T | None:
        """``obj[key]`` if present, checked against the JSON type ``kind``; None if absent."""
        if key not in obj:
            return None
        value = obj[key]
        if not isinstance(value, kind):
            expected = _JSON_TYPE_NAMES[kind]
            raise self.error(_child(path, key), f"expected {expected}, got {_json_type(value)}")
        return value

    def whole_number(self, obj: Mapping[str, Any], path: str, key: str,
                     least: int) -> int | None:
        """``obj[key]`` if present, a whole number ≥ ``least``; None if absent."""
        value = self.typed(obj, path, key, int)
        if value is not None and (isinstance(value, bool) or value < least):
            raise self.error(_child(path, key), f"expected a whole number ≥ {least}")
        return value

    def required(self, obj: Mapping[str, Any], path: str, key: str,
                 known: tuple[str, ...]) -> Any:
        """``obj[key]``; when it is missing, the error points at an unknown key that looks
        like it (``pasword`` for ``password``): the warning alone stands far from the error."""
        if key in obj:
            return obj[key]
        close = get_close_matches(key, [other for other in obj if other not in known], n=1)
        hint = f" (did you mean {_quote(close[0])}?)" if close else ""
        raise self.error(_child(path, key), f"required{hint}")

    def required_string(self, obj: Mapping[str, Any], path: str, key: str,
                        known: tuple[str, ...]) -> str:
        self.required(obj, path, key, known)
        value = self.typed(obj, path, key, str)
        assert value is not None
        if not value:
            raise self.error(_child(path, key), "must not be empty")
        return value

    def warn_unknown_keys(self, obj: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
        for key in obj:
            if key not in known:
                close = get_close_matches(key, known, n=1)
                hint = f" (did you mean {_quote(close[0])}?)" if close else ""
                self.warn(_child(path, key), f"unknown key, ignored{hint}")

    def string_map(self, top: Mapping[str, Any], key: str) -> Mapping[str, str]:
        """A section mapping names to strings (``gfcm``); values are never echoed."""
        section = self.optional_object(top, key)
        bad = [self.error(_child(key, name), f"expected a string, got {_json_type(value)}")
               for name, value in section.items() if not isinstance(value, str)]
        if bad:
            raise ConfigError([line for error in bad for line in error.lines])
        return MappingProxyType(dict(section))

    def entries(self, section: Mapping[str, Any],
                build: Callable[[str, Any], _T]) -> Mapping[str, _T]:
        """Each entry of ``section`` built, every entry's problems noted."""
        built = {name: self.attempt(partial(build, name, value))
                 for name, value in section.items()}
        valid = {name: entry for name, entry in built.items() if entry is not None}
        if len(valid) < len(built):
            raise _Invalid
        return MappingProxyType(valid)

    def relative(self, name: str) -> str:
        """A file named in the config, absolute: twistd may chdir before it is read."""
        return os.path.abspath(os.path.join(os.path.dirname(self.source), name))

    def apns_section(self, top: Mapping[str, Any]) -> Mapping[str, APNsConfig]:
        return self.entries(self.optional_object(top, "apns"), self.apns_entry)

    def apns_entry(self, name: str, value: object) -> APNsConfig:
        path = _child("apns", name)
        if isinstance(value, str):
            return APNsConfig(self.relative(name), password=value)
        entry = self.as_object(value, path)
        self.warn_unknown_keys(entry, path, _APNS_KEY_KEYS)
        key_id = self.attempt(lambda: self.required_string(entry, path, "keyId", _APNS_KEY_KEYS))
        team_id = self.attempt(
            lambda: self.required_string(entry, path, "teamId", _APNS_KEY_KEYS))
        topics = self.attempt(lambda: self.topics(entry, path))
        if key_id is None or team_id is None or topics is None:
            raise _Invalid
        return APNsConfig(self.relative(name), key_id=key_id, team_id=team_id, topics=topics)

    def topics(self, entry: Mapping[str, Any], path: str) -> tuple[str, ...]:
        topics = self.typed(entry, path, "topics", list)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise self.error(_child(path, "topics"), "expected a non-empty array of bundle ids")
        return tuple(topics)

    def push_section(self, top: Mapping[str, Any]) -> PushConfig:
        section = self.optional_object(top, "push")
        self.warn_unknown_keys(section, "push", _PUSH_KEYS)
        noted = len(self.errors)
        fields: dict[str, Any] = {}  # the fields given; the others keep PushConfig's defaults
        for key, field in (("apnsHost", "apns_host"), ("apnsSandboxHost", "apns_sandbox_host")):
            fields[field] = self.attempt(partial(self.host_and_port, section, key))
        ca = self.attempt(partial(self.typed, section, "push", "ca", str))
        fields["ca"] = None if ca is None else self.attempt(partial(self.ca_file, ca, "push.ca"))
        fields["fcm_url"] = self.attempt(lambda: self.url(section, "fcmUrl"))
        for key, field, least in (("maxInFlight", "max_in_flight", 1),
                                  ("maxQueued", "max_queued", 0),
                                  ("maxDevicesPerUser", "max_devices_per_user", 1)):
            limit = self.attempt(partial(self.whole_number, section, "push", key, least))
            if limit is not None:
                fields[field] = limit
        if len(self.errors) > noted:
            raise _Invalid
        return PushConfig(**fields)

    def host_and_port(self, section: Mapping[str, Any], key: str) -> str | None:
        value = self.typed(section, "push", key, str)
        if value is not None and not _ADDR.fullmatch(value):
            raise self.error(_child("push", key), f'expected "host:port", got {_quote(value)}')
        return value

    def url(self, section: Mapping[str, Any], key: str) -> str | None:
        value = self.typed(section, "push", key, str)
        if value is not None and not value.startswith(("https://", "http://")):
            raise self.error(_child("push", key), f"expected an http(s) URL, got {_quote(value)}")
        return value

    def mx_section(self, value: object) -> Mapping[str, MXConfig]:
        section = self.as_object(value, "mx")
        if not section:
            raise self.error("mx", "expected at least one MX, got an empty object")
        return self.entries(section, self.mx_entry)

    def mx_entry(self, name: str, value: object) -> MXConfig:
        path = _child("mx", name)
        if not _MX_NAME.fullmatch(name) or name in (".", ".."):
            raise self.error(
                path, "name must match [A-Za-z0-9._-]+ and not be . or .. (it is a URL segment)"
            )
        entry = self.as_object(value, path)
        self.warn_unknown_keys(entry, path, _MX_KEYS)
        noted = len(self.errors)
        address = self.attempt(lambda: self.host_port(entry, path))
        login = self.attempt(lambda: self.required_string(entry, path, "login", _MX_KEYS))
        password = self.attempt(lambda: self.required_string(entry, path, "password", _MX_KEYS))
        tls = self.attempt(lambda: self.typed(entry, path, "tls", bool))
        tls = True if tls is None else tls
        fingerprint = self.attempt(lambda: self.fingerprint(entry, path))
        ca_name = self.attempt(partial(self.typed, entry, path, "ca", str))
        coherent = self.attempt(partial(self.trust_rules, entry, path, tls))
        ca = None if ca_name is None or not coherent else self.attempt(
            partial(self.ca_file, ca_name, _child(path, "ca")))
        clear_text_retry = bool(self.attempt(
            lambda: self.typed(entry, path, "clearTextRetry", bool)))
        if clear_text_retry and not tls:
            self.warn(
                _child(path, "clearTextRetry"),
                "user passwords may be sent in clear text over an unencrypted connection",
            )
        max_contacts = self.attempt(lambda: self.whole_number(entry, path, "maxContacts", 1))
        if len(self.errors) > noted or address is None or login is None or password is None:
            raise _Invalid
        return MXConfig(
            name=name,
            host=address[0],
            port=address[1],
            login=login,
            password=password,
            tls=tls,
            fingerprint=fingerprint,
            ca=ca,
            clear_text_retry=clear_text_retry,
            **({} if max_contacts is None else {"max_contacts": max_contacts}),
        )

    def trust_rules(self, entry: Mapping[str, Any], path: str, tls: bool) -> bool:
        """How the MX certificate is checked: by one means, and only over TLS (True)."""
        if "fingerprint" in entry and "ca" in entry:
            raise self.error(path, 'use either "fingerprint" or "ca", not both')
        for key in ("fingerprint", "ca"):
            if key in entry and not tls:
                raise self.error(_child(path, key), 'requires "tls": true')
        return True

    def fingerprint(self, entry: Mapping[str, Any], path: str) -> bytes | None:
        text = self.typed(entry, path, "fingerprint", str)
        return None if text is None else self.sha256(text, path)

    def host_port(self, entry: Mapping[str, Any], entry_path: str) -> tuple[str, int]:
        """Split ``addr``: ``host:port``, ``[v6]:port`` or a bare host (port 7778)."""
        addr = self.required_string(entry, entry_path, "addr", _MX_KEYS)
        match = _ADDR.fullmatch(addr)
        if match:
            host = match["v6"] or match["host"]
            port = int(match["port"] or DEFAULT_MX_PORT)
            valid_host = _is_ipv6(host) if match["v6"] else bool(_HOSTNAME.fullmatch(host))
            if valid_host and 1 <= port <= 65535:
                return host, port
        raise self.error(_child(entry_path, "addr"), f'expected "host:port", got {_quote(addr)}')

    def sha256(self, text: str, entry_path: str) -> bytes:
        digits = _HEX_SEPARATORS.sub("", text)
        if not _SHA256_HEX.fullmatch(digits):
            raise self.error(
                _child(entry_path, "fingerprint"),
                "expected the SHA-256 of the MX certificate as 64 hex digits "
                f"(colons and spaces allowed), got {_quote(text)}",
            )
        return bytes.fromhex(digits)

    def ca_file(self, name: str, path: str) -> str:
        """Check the CA file now; return it absolute, since twistd may chdir before it is read."""
        ca_path = self.relative(name)
        try:
            with open(ca_path, "rb") as file:
                pem = file.read()
        except OSError as error:
            raise self.error(path, f"cannot read {_quote(ca_path)}: {error.strerror}") from None
        try:
            x509.load_pem_x509_certificates(pem)
        except ValueError:
            raise self.error(path, f"{_quote(ca_path)} holds no valid PEM certificate") from None
        return ca_path


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
