"""What the API needs of one configured MX, and of the push side, as interfaces: the API
depends on these shapes, not on how the daemon builds them."""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred

from mxproxy.calls import CallState
from mxproxy.events import EventHub
from mxproxy.mx import MXServer
from mxproxy.sessions import SessionPool


class Devices(Protocol):
    """Device-token registration for one MX (the push side implements it)."""

    def supports(self, provider: str, bundle: str, sandbox: bool) -> bool: ...

    async def register(self, jid: str, provider: str, bundle: str, sandbox: bool,
                       token: str) -> None: ...

    async def unregister(self, jid: str, provider: str, bundle: str, sandbox: bool,
                         token: str) -> None: ...

    def answered_here(self, jid: str, call_id: int, token: str) -> Deferred[None]:
        """The device with ``token`` is answering the call: the user's other pushed devices
        are told ``answeredElsewhere``, that one not. Fires (never failing) once whoever
        pushed the call knows: before the answer goes to the MX."""


@attrs.frozen
class MXAccess:
    """One MX as the API sees it: its server link, its user sessions, its users' calls, its
    device registrations (None when no push provider is configured), and its users' live events
    (None where nothing publishes them)."""

    server: MXServer
    pool: SessionPool
    calls: CallState
    devices: Devices | None = None
    events: EventHub | None = None
