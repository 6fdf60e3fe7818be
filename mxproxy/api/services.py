"""``GET /mx/<mx>/services``: the MX's system services, so that an app knows, say, the
voicemail extension to deflect a call to.

The list is the same for every user of an MX and changes only when an administrator adds a
service, so it is fetched once (``GetServiceList`` on the first caller's session) and kept for
:data:`KEEP_FOR` seconds; a failed fetch is not kept. Each request still proves its credentials,
as every route does.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from mxproxy.api.routing import Endpoints, app, encode, json_body
from mxproxy.csta import commands
from mxproxy.csta.messages import ServiceList
from mxproxy.sessions import UserSession

KEEP_FOR = 600.0


class ServiceCache:
    """The encoded answer of each MX, with when it was fetched."""

    def __init__(self, clock: IReactorTime, keep_for: float = KEEP_FOR) -> None:
        self._clock = clock
        self._keep_for = keep_for
        self._answers: dict[str, tuple[float, bytes]] = {}

    def fresh(self, mx: str) -> bytes | None:
        found = self._answers.get(mx)
        if found is None or self._clock.seconds() - found[0] >= self._keep_for:
            return None
        return found[1]

    def keep(self, mx: str, body: bytes) -> None:
        self._answers[mx] = (self._clock.seconds(), body)


class ServiceRoutes(Endpoints):
    """``/mx/<mx>/services``."""

    services: ServiceCache

    @app.route("/mx/<mx>/services", methods=["GET"])
    async def service_list(self, request: Request, mx: str) -> bytes:
        caller = self.auth.caller(request, mx)
        await self.auth.identify(caller)
        body = self.services.fresh(mx)
        if body is None:

            async def fetch(session: UserSession) -> ServiceList:
                reply = await session.protocol.request(commands.get_service_list())
                return ServiceList.from_xml(reply.element)

            listing = await self.auth.on_session(caller, fetch)
            body = encode({"services": [service.to_json() for service in listing.services]})
            self.services.keep(mx, body)
        return json_body(request, body)
