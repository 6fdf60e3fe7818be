"""The admin endpoint: ``/healthz`` and ``/metrics``, served on a private address only.

The health report says whether every MX link is up, the token store can write and, with
several instances on PostgreSQL, the lock connection answers (200, else 503: an owner without
it has stopped pushing, a standby without it cannot take over), and what an operator checks
first: the version running, since when, the last error, the call monitors, whether this
instance owns each MX, the token store. The metrics are the daemon's registry plus the gauges
of live state (links, monitors, roles, pushes in flight, certificate expiry), read from the
objects at scrape time instead of being updated on every change. Neither shows a password, a
device token or a key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from mxproxy import __version__
from mxproxy.api.errors import HTTPError, not_found, write_error
from mxproxy.api.request import SERVER
from mxproxy.metrics import Metrics
from mxproxy.mx import MXServer
from mxproxy.roles import DatabaseState, MXRole

if TYPE_CHECKING:
    from mxproxy.push.system import PushSystem  # imported by a daemon with push delivery only

STORE_TIMEOUT = 2.0
"""Seconds the health report waits for the token store's query (it queues behind writes)."""

UNWRITABLE = "unwritable"
"""The token store's state while writes fail (disk full): the only one that makes it unhealthy."""

Monitors = Mapping[str, Sized]
"""The call monitors of each MX (:class:`mxproxy.monitors.CallMonitors`), by its name."""
EMPTY: Monitors = MappingProxyType({})
Roles = Mapping[str, MXRole]
"""Whether this instance owns each MX, by its name (none given: it owns them all)."""
NO_ROLES: Roles = MappingProxyType({})
NotAfter = Callable[[], datetime | None]
"""When the served TLS certificate expires, or None while there is none."""


def admin_site(metrics: Metrics, servers: Iterable[MXServer], push: PushSystem | None,
               clock: IReactorTime, tls_not_after: NotAfter | None = None,
               monitors: Monitors = EMPTY, roles: Roles = NO_ROLES,
               database: DatabaseState | None = None) -> Site:
    """The site of ``/healthz`` and ``/metrics`` for these MX links, their call monitors and
    roles, push delivery (None when not configured) and the lock connection (None: no shared
    database); ``tls_not_after`` gives the served certificate's expiry, if any. Adds the
    live-state collector to ``metrics``: call it once per daemon."""
    servers = tuple(servers)
    metrics.registry.register(LiveState(servers, push, clock, tls_not_after, monitors, roles,
                                        database))
    return _QuietSite(_AdminPages(Health(servers, push, clock, monitors=monitors, roles=roles,
                                         database=database), metrics))


class Health:
    """The ``/healthz`` report: each MX link, its call monitors and role, the token store, the
    lock connection."""

    def __init__(self, servers: Iterable[MXServer], push: PushSystem | None,
                 clock: IReactorTime, store_timeout: float = STORE_TIMEOUT,
                 monitors: Monitors = EMPTY, roles: Roles = NO_ROLES,
                 database: DatabaseState | None = None) -> None:
        self._servers = tuple(servers)
        self._push = push
        self._monitors = monitors
        self._roles = roles
        self._database = database
        self._clock = clock
        self._store_timeout = store_timeout

    async def report(self) -> tuple[bool, dict[str, Any]]:
        """(whether every link is up, the token store can write and the lock connection
        answers, the JSON report)."""
        store = await self._store()
        database = self._database
        healthy = all(server.state.connected for server in self._servers) and (
            store is None or store["state"] != UNWRITABLE) and (
            database is None or database.up)
        links = {server.config.name: self._link(server) for server in self._servers}
        report = {"healthy": healthy, "version": __version__, "mx": links, "tokenStore": store}
        if database is not None:
            report["database"] = {"state": "up" if database.up else "down",
                                  "since": _rfc3339(database.since),
                                  "lastError": database.last_error}
        return healthy, report

    def _link(self, server: MXServer) -> dict[str, Any]:
        state = server.state
        report: dict[str, Any] = {
            "link": "up" if state.connected else "down", "since": _rfc3339(state.since),
            "reconnects": state.reconnects, "monitors": _monitors(self._monitors, server),
            "role": _role(self._roles, server).role}
        if server.sn is not None:
            report["sn"] = server.sn
        if not state.connected:
            report["state"] = state.cause
            report["lastError"] = state.last_error
            report["nextAttempt"] = _rfc3339(state.next_attempt)
        if state.login_failed is not None:
            code, text = state.login_failed
            report["loginFailed"] = {"code": code, "text": text}
        return report

    async def _store(self) -> dict[str, Any] | None:
        """``ok`` and the device count, or the class of the error the query ended with; but
        :data:`UNWRITABLE` while the last write failed for want of storage."""
        if self._push is None:
            return None
        store = self._push.store
        report: dict[str, Any]
        try:
            report = {"state": "ok",
                      "devices": await store.count().addTimeout(self._store_timeout, self._clock)}
        except Exception as error:
            report = {"state": type(error).__name__}
        failure = store.write_failure
        if failure is not None:
            report.update(state=UNWRITABLE, since=_rfc3339(failure.since),
                          lastError=failure.reason)
        return report


class LiveState:
    """The collector of the gauges that mirror live state, read at each scrape."""

    def __init__(self, servers: Iterable[MXServer], push: PushSystem | None,
                 clock: IReactorTime, tls_not_after: NotAfter | None = None,
                 monitors: Monitors = EMPTY, roles: Roles = NO_ROLES,
                 database: DatabaseState | None = None) -> None:
        self._servers = tuple(servers)
        self._push = push
        self._monitors = monitors
        self._roles = roles
        self._database = database
        self._clock = clock
        self._tls_not_after = tls_not_after

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mxproxy_mx_link_up", "1 while the server link to the MX is "
                               "logged in with its address book loaded, else 0", labels=["mx"])
        reconnects = CounterMetricFamily("mxproxy_mx_reconnects", "Times the server link to the "
                                         "MX was established again after a loss", labels=["mx"])
        monitors = GaugeMetricFamily("mxproxy_call_monitors", "Users whose calls are monitored "
                                     "on the server link (for pushes, call routes, streams)",
                                     labels=["mx"])
        owner = GaugeMetricFamily("mxproxy_mx_owner", "1 while this instance owns the MX (runs "
                                  "the call monitors for pushes and sends them), 0 on standby",
                                  labels=["mx"])
        for server in self._servers:
            name = server.config.name
            up.add_metric([name], int(server.state.connected))
            reconnects.add_metric([name], server.state.reconnects)
            monitors.add_metric([name], _monitors(self._monitors, server))
            owner.add_metric([name], int(_role(self._roles, server).owner))
        yield from (up, reconnects, monitors, owner)
        database = GaugeMetricFamily("mxproxy_database_up", "1 while the lock connection to "
                                     "the shared PostgreSQL database answers, else 0")
        if self._database is not None:  # one instance on SQLite: no sample
            database.add_metric([], int(self._database.up))
        yield database
        yield from self._pushes()
        yield from self._expiry()

    def _pushes(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily("mxproxy_pushes_in_flight", "Pushes sent to the provider "
                                      "and not answered yet", labels=["provider"])
        queued = GaugeMetricFamily("mxproxy_pushes_queued", "Pushes waiting for one of the "
                                   "provider's in-flight slots", labels=["provider"])
        slots = self._push.dispatcher.slots if self._push is not None else {}
        for provider, provider_slots in slots.items():
            in_flight.add_metric([provider], provider_slots.busy)
            queued.add_metric([provider], provider_slots.waiting)
        yield from (in_flight, queued)

    def _expiry(self) -> Iterator[Metric]:
        now = self._clock.seconds()
        apns = GaugeMetricFamily("mxproxy_apns_certificate_expires_in_seconds", "Seconds until "
                                 "the APNs provider certificate (.p12) of the bundle id and "
                                 "environment expires; negative once expired (token keys do "
                                 "not expire)", labels=["bundle", "environment"])
        for (bundle, environment), expiry in _apns_expiry(self._push).items():
            apns.add_metric([bundle, environment], expiry.timestamp() - now)
        tls = GaugeMetricFamily("mxproxy_tls_certificate_expires_in_seconds", "Seconds until "
                                "the served TLS certificate expires; negative once expired")
        not_after = self._tls_not_after() if self._tls_not_after is not None else None
        if not_after is not None:
            tls.add_metric([], not_after.timestamp() - now)
        yield from (apns, tls)


def _monitors(monitors: Monitors, server: MXServer) -> int:
    """How many call monitors run on the server link."""
    running = monitors.get(server.config.name)
    return len(running) if running is not None else 0


def _role(roles: Roles, server: MXServer) -> MXRole:
    """This instance's role for the MX: the owner when nothing else decides."""
    return roles.get(server.config.name) or MXRole(server.config.name, owner=True)


def _apns_expiry(push: PushSystem | None) -> dict[tuple[str, str], datetime]:
    """The expiry of each APNs certificate in use, by (bundle id, environment)."""
    found: dict[tuple[str, str], datetime] = {}
    if push is None:
        return found
    from mxproxy.push.apns import APNsClient  # loaded already: push delivery is configured
    from mxproxy.push.credentials import APNsCertificate

    for client in push.clients:
        credential = client.credential if isinstance(client, APNsClient) else None
        if isinstance(credential, APNsCertificate):
            for environment in credential.environments:
                found[(credential.bundle_id, environment)] = \
                    credential.certificate.not_valid_after_utc
    return found


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _AdminPages(Resource):
    """``GET /healthz`` and ``GET /metrics``; JSON errors for anything else."""

    isLeaf = True

    def __init__(self, health: Health, metrics: Metrics) -> None:
        super().__init__()
        self._health = health
        self._metrics = metrics
        self._pages: dict[bytes, Callable[[Request], Any]] = {
            b"/healthz": self._healthz, b"/metrics": self._scrape}

    def render(self, request: Request) -> Any:
        request.setHeader(b"Server", SERVER)
        page = self._pages.get(request.path)
        if page is None:
            return write_error(request, not_found())
        if request.method not in (b"GET", b"HEAD"):
            return write_error(request, HTTPError(405, "method not allowed",
                                                  {"Allow": "GET, HEAD"}))
        return page(request)

    def _scrape(self, request: Request) -> bytes:
        accept = (request.getHeader(b"Accept") or b"").decode("latin-1")
        body, content_type = self._metrics.exposition(accept)
        request.setHeader(b"Content-Type", content_type.encode())
        return body

    def _healthz(self, request: Request) -> object:
        """Answered once the token store answered its query, or did not in time."""
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        async def answer() -> None:
            healthy, report = await self._health.report()
            if gone:
                return  # the prober hung up
            request.setResponseCode(200 if healthy else 503)
            request.setHeader(b"Content-Type", b"application/json")
            request.write(json.dumps(report).encode())
            request.finish()

        Deferred.fromCoroutine(answer()).addErrback(request.processingFailed)
        return NOT_DONE_YET


class _QuietSite(Site):
    """A Site without access log: probes and scrapes every few seconds would bury the log."""

    def log(self, request: http.Request) -> None:
        pass
