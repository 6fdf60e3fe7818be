"""The validated configuration: frozen attrs classes that the rest of the daemon reads.

The file format and its checks are in :mod:`mxproxy.configfile`; these classes are what it
produces, and what ``--demo`` builds without a file (:mod:`mxproxy.demo`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

DEFAULT_MX_PORT = 7778
"""Used when ``addr`` has no port: the MX's TLS port, whatever ``tls`` says (plain TCP is 7777)."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class ConfigError(ValueError):
    """Configuration problems, one line each: ``<file>: <JSON path>: <what is wrong>``."""

    def __init__(self, lines: str | Sequence[str], warnings: Sequence[str] = ()) -> None:
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        self.warnings = list(warnings)
        """The file's warnings, for a report of everything found (``check-config``)."""
        super().__init__("\n".join(self.lines))


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
