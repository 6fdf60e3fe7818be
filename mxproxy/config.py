"""Load and validate ``mxproxy.json`` into frozen attrs classes.

The format is the original product's (``mx``, ``apns``, ``gfcm``), extended compatibly. Every
problem is a :class:`ConfigError` of one line naming the file and the JSON path, raised before
anything listens. Unknown keys are only warnings, returned next to the :class:`Config`, so that a
typo is visible without refusing a file written for a newer version.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from difflib import get_close_matches
from types import MappingProxyType
from typing import Any, TypeVar

import attrs
from cryptography import x509

DEFAULT_MX_PORT = 7778
"""Used when ``addr`` has no port: the MX's TLS port, whatever ``tls`` says (plain TCP is 7777)."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})
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


class ConfigError(ValueError):
    """A configuration problem, as one line: ``<file>: <JSON path>: <what is wrong>``."""


@attrs.frozen
class MXConfig:
    """How to reach and log in to one MX; ``name`` is the ``<mx-name>`` of ``/mx/<mx-name>/``."""

    name: str
    host: str  # an IPv6 literal is stored without brackets
    port: int
    login: str
    password: str = attrs.field(repr=False)
    tls: bool = True
    fingerprint: bytes | None = None  # SHA-256 of the MX certificate (32 bytes) to pin
    ca: str | None = None  # absolute path of a PEM file of CA certificates to verify against
    clear_text_retry: bool = False
    max_contacts: int = 100_000
    """Contacts the address book may hold; an MX announcing or sending more fails the link."""


@attrs.frozen
class APNsConfig:
    """One APNs credential: a ``.p12`` certificate and its password (the original's form), or a
    ``.p8`` token key with its key id, team id and the topics (bundle ids) it may push to."""

    path: str  # absolute
    password: str | None = attrs.field(default=None, repr=False)
    key_id: str | None = None
    team_id: str | None = None
    topics: tuple[str, ...] = ()

    @property
    def is_token_key(self) -> bool:
        return self.key_id is not None


@attrs.frozen
class PushConfig:
    """Where the push providers are; overridden for tests and the demo."""

    apns_host: str | None = None  # "host:port" instead of api.push.apple.com:443
    apns_sandbox_host: str | None = None
    ca: str | None = None  # absolute path of an extra trusted root for those hosts
    fcm_url: str | None = None  # instead of https://fcm.googleapis.com
    max_in_flight: int = 512  # pushes sent and unanswered, per provider
    max_queued: int = 4096  # pushes waiting for one of those slots, per provider
    max_devices_per_user: int = 20  # beyond it a registration replaces the oldest device


@attrs.frozen
class Config:
    """The whole validated configuration; the mappings are read-only and keep the file's order."""

    mx: Mapping[str, MXConfig]
    apns: Mapping[str, APNsConfig] = _EMPTY
    gfcm: Mapping[str, str] = _EMPTY  # app name -> absolute path of a service-account JSON
    push: PushConfig = PushConfig()
    path: str | None = None  # None for the built-in demo configuration


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
    are resolved against its directory."""
    parser = _Parser(source)
    return parser.config(data), parser.warnings


def demo_config(host: str, port: int) -> Config:
    """The configuration of ``--demo``: one MX named ``demo``, the in-process simulator."""
    demo = MXConfig(name="demo", host=host, port=port, login="server", password="server", tls=False)
    return Config(mx=MappingProxyType({demo.name: demo}))


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


class _Parser:
    """One validation run: knows the source for messages and collects warnings."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path or 'top level'}: {message}")

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")

    def config(self, data: object) -> Config:
        top = self.as_object(data, "")
        self.warn_unknown_keys(top, "", _TOP_KEYS)
        if "mx" not in top:
            raise self.error("mx", "required")
        return Config(
            mx=self.mx_section(top["mx"]),
            apns=self.apns_section(top),
            gfcm=MappingProxyType({app: self.relative(value) for app, value
                                   in self.string_map(top, "gfcm").items()}),
            push=self.push_section(top),
            path=self.source,
        )

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

    def required_string(self, obj: Mapping[str, Any], path: str, key: str) -> str:
        value = self.typed(obj, path, key, str)
        if value is None:
            raise self.error(_child(path, key), "required")
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
        """A section mapping names to strings (``apns``, ``gfcm``); values are never echoed."""
        section = self.optional_object(top, key)
        for name, value in section.items():
            if not isinstance(value, str):
                raise self.error(_child(key, name), f"expected a string, got {_json_type(value)}")
        return MappingProxyType(dict(section))

    def relative(self, name: str) -> str:
        """A file named in the config, absolute: twistd may chdir before it is read."""
        return os.path.abspath(os.path.join(os.path.dirname(self.source), name))

    def apns_section(self, top: Mapping[str, Any]) -> Mapping[str, APNsConfig]:
        section = self.optional_object(top, "apns")
        entries = {}
        for name, value in section.items():
            path = _child("apns", name)
            if isinstance(value, str):
                entries[name] = APNsConfig(self.relative(name), password=value)
                continue
            entry = self.as_object(value, path)
            self.warn_unknown_keys(entry, path, _APNS_KEY_KEYS)
            topics = self.typed(entry, path, "topics", list)
            if not topics or not all(isinstance(t, str) and t for t in topics):
                raise self.error(_child(path, "topics"),
                                 "expected a non-empty array of bundle ids")
            entries[name] = APNsConfig(self.relative(name),
                                       key_id=self.required_string(entry, path, "keyId"),
                                       team_id=self.required_string(entry, path, "teamId"),
                                       topics=tuple(topics))
        return MappingProxyType(entries)

    def push_section(self, top: Mapping[str, Any]) -> PushConfig:
        section = self.optional_object(top, "push")
        self.warn_unknown_keys(section, "push", _PUSH_KEYS)
        hosts = {}
        for key in ("apnsHost", "apnsSandboxHost"):
            value = self.typed(section, "push", key, str)
            if value is not None and not _ADDR.fullmatch(value):
                raise self.error(_child("push", key), f'expected "host:port", got {_quote(value)}')
            hosts[key] = value
        ca = self.typed(section, "push", "ca", str)
        fcm_url = self.typed(section, "push", "fcmUrl", str)
        if fcm_url is not None and not fcm_url.startswith(("https://", "http://")):
            raise self.error("push.fcmUrl", f"expected an http(s) URL, got {_quote(fcm_url)}")
        limits: dict[str, int] = {}  # the fields given; the others keep PushConfig's defaults
        for key, field, least in (("maxInFlight", "max_in_flight", 1),
                                  ("maxQueued", "max_queued", 0),
                                  ("maxDevicesPerUser", "max_devices_per_user", 1)):
            limit = self.whole_number(section, "push", key, least)
            if limit is not None:
                limits[field] = limit
        return PushConfig(apns_host=hosts["apnsHost"], apns_sandbox_host=hosts["apnsSandboxHost"],
                          ca=None if ca is None else self.ca_file(ca, "push.ca"),
                          fcm_url=fcm_url, **limits)

    def mx_section(self, value: object) -> Mapping[str, MXConfig]:
        section = self.as_object(value, "mx")
        if not section:
            raise self.error("mx", "expected at least one MX, got an empty object")
        return MappingProxyType(
            {name: self.mx_entry(name, entry) for name, entry in section.items()}
        )

    def mx_entry(self, name: str, value: object) -> MXConfig:
        path = _child("mx", name)
        if not _MX_NAME.fullmatch(name) or name in (".", ".."):
            raise self.error(
                path, "name must match [A-Za-z0-9._-]+ and not be . or .. (it is a URL segment)"
            )
        entry = self.as_object(value, path)
        self.warn_unknown_keys(entry, path, _MX_KEYS)
        host, port = self.host_port(entry, path)
        login = self.required_string(entry, path, "login")
        password = self.required_string(entry, path, "password")
        tls = self.typed(entry, path, "tls", bool)
        tls = True if tls is None else tls
        fingerprint = self.typed(entry, path, "fingerprint", str)
        ca = self.typed(entry, path, "ca", str)
        if fingerprint is not None and ca is not None:
            raise self.error(path, 'use either "fingerprint" or "ca", not both')
        for key in ("fingerprint", "ca"):
            if key in entry and not tls:
                raise self.error(_child(path, key), 'requires "tls": true')
        clear_text_retry = bool(self.typed(entry, path, "clearTextRetry", bool))
        if clear_text_retry and not tls:
            self.warn(
                _child(path, "clearTextRetry"),
                "user passwords may be sent in clear text over an unencrypted connection",
            )
        max_contacts = self.whole_number(entry, path, "maxContacts", 1)
        return MXConfig(
            name=name,
            host=host,
            port=port,
            login=login,
            password=password,
            tls=tls,
            fingerprint=None if fingerprint is None else self.sha256(fingerprint, path),
            ca=None if ca is None else self.ca_file(ca, _child(path, "ca")),
            clear_text_retry=clear_text_retry,
            **({} if max_contacts is None else {"max_contacts": max_contacts}),
        )

    def host_port(self, entry: Mapping[str, Any], entry_path: str) -> tuple[str, int]:
        """Split ``addr``: ``host:port``, ``[v6]:port`` or a bare host (port 7778)."""
        addr = self.required_string(entry, entry_path, "addr")
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
