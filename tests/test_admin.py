"""The admin endpoint over loopback HTTP: ``/healthz`` and ``/metrics`` of a daemon whose MX link,
user sessions and push delivery run against the simulator and the fake providers.

Links run on a Clock started at a fixed time (``since`` is a known string); the HTTP API, the
user sessions and the simulator share another, so that a reply delayed by 0.3 s of that clock
is a round trip and a request of exactly 0.3 s.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseNeverReceived

from mxproxy import __version__
from mxproxy.admin import STORE_TIMEOUT, Health, LiveState, NotAfter, admin_site
from mxproxy.csta.client import MXAddress
from mxproxy.metrics import Metrics
from mxproxy.mx import REFUSED_RETRY
from mxproxy.push.credentials import APNsCertificate, Credential
from mxproxy.push.system import PushSystem
from mxproxy.roles import DatabaseState, MXRole
from mxproxy.testing.certs import certificate_authority
from mxproxy.testing.fakeapns import Delayed
from mxproxy.testing.fakefcm import INVALID_DATA
from tests.support import Daemon, drop_sessions, next_turn, serve
from tests.test_api import company
from tests.test_apns import APPLE_DEV, APPLE_PROD, BUNDLE, DER_NULL, push_certificate_p12
from tests.test_mx import Running
from tests.test_mx import company as mx_company
from tests.test_push import (
    ALICE,
    CALLER,
    VOIP,
    PushTestCase,
    apns_token,
    fcm_token,
)
from tests.test_tokens import BIG_TOKEN, fill_up, make_room

LINK_EPOCH = 1_800_000_000  # 2027-01-15T08:00:00Z
DAY = 86_400.0
ADDRESS_BOOK, CALL = "/mx/{mx}/addressbook", "/mx/{mx}/call"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples named ``name``, by labels."""
    return {labels: found for (sample, labels), found in samples.items() if sample == name}


class Admin:
    """The admin site of a test daemon on an ephemeral loopback port."""

    def __init__(self, test: TestCase, daemon: Daemon, metrics: Metrics, push: PushSystem | None,
                 clock: Any, tls_not_after: NotAfter | None = None) -> None:
        site = admin_site(metrics, [daemon.server], push, clock, tls_not_after,
                          monitors={"dev": daemon.calls.monitors})
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.daemon = daemon

    async def request(self, path: str, method: str = "GET",
                      headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        return await self.daemon.request(method, path, headers=headers, base=self.base)

    async def health(self) -> tuple[int, Any]:
        response, body = await self.request("/healthz")
        assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
        return response.code, json.loads(body)

    async def scrape(self) -> Samples:
        response, body = await self.request("/metrics")
        assert response.code == 200, body
        return parse(body)


class AdminTestCase(PushTestCase):
    """The push test daemon, its server link on a Clock at :data:`LINK_EPOCH`, and its admin
    site."""

    async def admin(self, credential: Credential | None = None,
                    tls_not_after: NotAfter | None = None, **kwargs: Any) -> Admin:
        self.link = Clock()
        self.link.advance(LINK_EPOCH)
        await self.start(credential, link_clock=self.link, **kwargs)
        return Admin(self, self.d, self.metrics, self.system, self.clock, tls_not_after)


class HealthTests(AdminTestCase):
    async def test_every_link_up_is_200(self) -> None:
        admin = await self.admin()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))
        self.assertEqual(await admin.health(), (200, {
            "healthy": True, "version": __version__,
            "mx": {"dev": {"link": "up", "since": "2027-01-15T08:00:00Z", "reconnects": 0,
                           "monitors": 1, "role": "owner", "sn": "TEST1"}},
            "tokenStore": {"state": "ok", "devices": 2}}))

    async def test_a_lost_link_is_503_until_it_is_back(self) -> None:
        admin = await self.admin()
        await self.register("alice", "apns", VOIP, apns_token(1))
        server = self.d.server
        assert server.protocol is not None
        self.link.advance(90)
        closed = server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        code, report = await admin.health()
        self.assertEqual(code, 503)
        self.assertFalse(report["healthy"])
        link = report["mx"]["dev"]
        self.assertIn("connection lost", link.pop("lastError"))
        self.assertEqual(link, {"link": "down", "since": "2027-01-15T08:01:30Z", "state": "lost",
                                "nextAttempt": "2027-01-15T08:01:31Z", "reconnects": 0,
                                "monitors": 0, "role": "owner", "sn": "TEST1"})
        samples = await admin.scrape()
        self.assertEqual(value(samples, "mxproxy_mx_link_up", mx="dev"), 0)
        self.assertEqual(value(samples, "mxproxy_mx_reconnects_total", mx="dev"), 0)

        ready = server.when_ready()
        self.link.advance(1)  # the first retry is due
        await ready
        await self.until(lambda: len(self.d.calls.monitors) == 1, "the monitor restarted")
        self.assertEqual(await admin.health(), (200, {
            "healthy": True, "version": __version__,
            "mx": {"dev": {"link": "up", "since": "2027-01-15T08:01:31Z", "reconnects": 1,
                           "monitors": 1, "role": "owner", "sn": "TEST1"}},
            "tokenStore": {"state": "ok", "devices": 1}}))
        samples = await admin.scrape()
        self.assertEqual(value(samples, "mxproxy_mx_link_up", mx="dev"), 1)
        self.assertEqual(value(samples, "mxproxy_mx_reconnects_total", mx="dev"), 1)
        self.assertEqual(value(samples, "mxproxy_call_monitors", mx="dev"), 1)

    async def test_a_failing_token_store_is_named_by_its_error(self) -> None:
        admin = await self.admin()
        await self.system.store.close()
        code, report = await admin.health()
        self.assertEqual(code, 200, "only the MX links decide the status")
        self.assertEqual(report["tokenStore"], {"state": "StoreClosed"})

    async def test_a_full_disk_is_503_and_unhealthy_until_a_write_succeeds(self) -> None:
        admin = await self.admin()
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        store = self.system.store
        await fill_up(store)
        path = f"/token/apns/{VOIP}"
        body = json.dumps({"token": BIG_TOKEN}).encode()
        response, answer = await self.d.request("POST", path, ALICE, body=body)
        self.assertEqual((response.code, json.loads(answer)), (503, {
            "error": "device tokens cannot be stored right now; try again later"}))
        code, report = await admin.health()
        self.assertEqual(code, 503)
        self.assertFalse(report["healthy"])
        self.assertRegex(report["tokenStore"].pop("since"), r"^\d{4}-\d\d-\d\dT[0-9:]{8}Z$")
        self.assertEqual(report["tokenStore"], {
            "state": "unwritable", "devices": 1,
            "lastError": f"token store {self.db}: database or disk is full"})
        self.assertEqual(report["mx"]["dev"]["link"], "up")
        self.assertEqual([device.token for device in await self.devices(self.alice)],
                         [apns_token(1)])  # not acknowledged, and not stored either

        await make_room(store)  # space freed: the next registration is stored
        response, answer = await self.d.request("POST", path, ALICE, body=body)
        self.assertEqual((response.code, answer), (204, b""))
        self.assertEqual(await admin.health(), (200, {
            "healthy": True, "version": __version__,
            "mx": {"dev": {"link": "up", "since": "2027-01-15T08:00:00Z", "reconnects": 0,
                           "monitors": 1, "role": "owner", "sn": "TEST1"}},
            "tokenStore": {"state": "ok", "devices": 2}}))

    async def test_no_secret_in_health_or_metrics(self) -> None:
        admin = await self.admin()
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        await self.token("POST", ALICE, "gfcm", BUNDLE, fcm_token("a"))
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        _, health = await admin.request("/healthz")
        _, metrics = await admin.request("/metrics")
        self.assertIn(b"mxproxy_pushes_total", metrics)
        for body in (health, metrics):
            for secret in (b"server-secret", ALICE[1].encode(), apns_token(1).encode(),
                           fcm_token("a").encode(), b"PRIVATE KEY"):
                self.assertNotIn(secret, body)


class LinkStateTests(TestCase):
    """Why a link is down, in a word an operator (or an alert) can act on without the log."""

    async def link(self, running: Running) -> dict[str, Any]:
        await running.failed()
        healthy, report = await Health([running.server], None, running.clock).report()
        self.assertFalse(healthy)
        link: dict[str, Any] = report["mx"]["dev"]
        return link

    async def test_a_refused_server_login_shows_the_mx_reply(self) -> None:
        pbx = mx_company(1)
        running = Running(self, serve(self, pbx), password="wrong")
        self.assertEqual(await self.link(running), {
            "link": "down", "since": None, "reconnects": 0, "monitors": 0, "role": "owner",
            "state": "loginFailed", "loginFailed": {"code": 1,
                                                    "text": "Invalid user name or password"},
            "lastError": "login failed (code 1): Invalid user name or password",
            "nextAttempt": "1970-01-01T00:05:00Z"})
        pbx.add_server_login("server", "wrong")
        ready = running.server.when_ready()
        running.clock.advance(REFUSED_RETRY)
        await ready
        _, report = await Health([running.server], None, running.clock).report()
        self.assertEqual(report["mx"]["dev"], {"link": "up", "since": "1970-01-01T00:05:00Z",
                                               "reconnects": 0, "monitors": 0, "role": "owner",
                                               "sn": "TEST1"})

    async def test_tls_to_a_plain_tcp_mx(self) -> None:
        plain = serve(self, mx_company(1))
        link = await self.link(Running(self, MXAddress(plain.host, plain.port, tls=True)))
        self.assertEqual(link["state"], "wrongTransport")
        self.assertIn("did not complete a TLS handshake", link["lastError"])
        self.assertNotIn("loginFailed", link)

    async def test_an_unreachable_mx(self) -> None:
        link = await self.link(Running(self, MXAddress("mx.invalid", 7778)))
        self.assertEqual((link["state"], link["lastError"]),
                         ("unreachable", "cannot connect to mx.invalid:7778: the name does not "
                                         "resolve"))


class PushMetricsTests(AdminTestCase):
    async def test_pushes_by_provider_and_result_and_pruned_tokens(self) -> None:
        admin = await self.admin()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))
        self.apns.script(apns_token(2), (400, "BadDeviceToken"))
        self.fcm.script(fcm_token("a"), INVALID_DATA)  # not the token's fault: kept
        self.ring(CALLER, "3001")
        await self.apns.wait_for(2)
        await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        samples = await admin.scrape()
        self.assertEqual(series(samples, "mxproxy_pushes_total"), {
            frozenset({("provider", "apns"), ("result", "delivered")}): 1,
            frozenset({("provider", "apns"), ("result", "rejected")}): 1,
            frozenset({("provider", "gfcm"), ("result", "failed")}): 1})
        self.assertEqual(series(samples, "mxproxy_pruned_tokens_total"),
                         {frozenset({("provider", "apns")}): 1})
        self.assertEqual([d.token for d in await self.devices(self.alice)],
                         [apns_token(1), fcm_token("a")])
        for provider in ("apns", "gfcm"):
            self.assertEqual(value(samples, "mxproxy_pushes_in_flight", provider=provider), 0)
            self.assertEqual(value(samples, "mxproxy_pushes_queued", provider=provider), 0)
        self.assertEqual(series(samples, "mxproxy_apns_certificate_expires_in_seconds"), {},
                         "a token key does not expire")

    async def test_pushes_in_flight_and_queued(self) -> None:
        admin = await self.admin(max_in_flight=1, max_queued=1)
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("bob", "apns", VOIP, apns_token(2))
        self.apns.script(apns_token(1), Delayed(5.0))  # APNs holds alice's answer
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        self.ring(CALLER, "3002")
        await self.until(lambda: self.dispatcher.slots["apns"].waiting == 1, "bob's push queued")
        samples = await admin.scrape()
        self.assertEqual(value(samples, "mxproxy_pushes_in_flight", provider="apns"), 1)
        self.assertEqual(value(samples, "mxproxy_pushes_queued", provider="apns"), 1)
        self.assertEqual(value(samples, "mxproxy_pushes_in_flight", provider="gfcm"), 0)
        self.clock.advance(5.0)
        await self.apns.wait_for(2)
        await self.dispatcher.settled()
        samples = await admin.scrape()
        self.assertEqual(value(samples, "mxproxy_pushes_in_flight", provider="apns"), 0)
        self.assertEqual(value(samples, "mxproxy_pushes_queued", provider="apns"), 0)
        self.assertEqual(value(samples, "mxproxy_pushes_total", provider="apns",
                               result="delivered"), 2)

    async def test_seconds_until_the_certificates_expire(self) -> None:
        path = self.mktemp()
        push_certificate_p12(path, certificate_authority("fake Apple WWDR CA"),
                             {APPLE_DEV: DER_NULL, APPLE_PROD: DER_NULL})
        credential = APNsCertificate.from_p12(path, "secret")
        served: list[datetime | None] = [None]
        admin = await self.admin(credential, tls_not_after=lambda: served[0])
        served[0] = datetime.fromtimestamp(self.clock.seconds() + 30 * DAY, UTC)
        apns_left = credential.certificate.not_valid_after_utc.timestamp() - self.clock.seconds()
        self.assertTrue(DAY - 600 < apns_left <= DAY, apns_left)  # the test certificate: 1 day

        samples = await admin.scrape()
        self.assertEqual(series(samples, "mxproxy_apns_certificate_expires_in_seconds"), {
            frozenset({("bundle", BUNDLE), ("environment", "production")}): apns_left,
            frozenset({("bundle", BUNDLE), ("environment", "development")}): apns_left})
        self.assertEqual(value(samples, "mxproxy_tls_certificate_expires_in_seconds"),
                         30 * DAY)

        self.clock.advance(2 * DAY)  # read at each scrape
        served[0] = None  # no certificate (yet): no sample
        samples = await admin.scrape()
        self.assertEqual(value(samples, "mxproxy_apns_certificate_expires_in_seconds",
                               bundle=BUNDLE, environment="production"), apns_left - 2 * DAY)
        self.assertEqual(series(samples, "mxproxy_tls_certificate_expires_in_seconds"), {})


class APITestCase(TestCase):
    """A daemon without push delivery whose API, user sessions and simulator share a Clock."""

    async def admin(self) -> Admin:
        self.clock = Clock()
        self.metrics = Metrics()
        self.pbx = company(clock=self.clock)
        self.d = await Daemon(self, self.pbx, clock=self.clock, metrics=self.metrics).start()
        return Admin(self, self.d, self.metrics, None, self.clock)


class HTTPMetricsTests(APITestCase):
    async def test_requests_by_route_template_method_and_status(self) -> None:
        admin = await self.admin()
        for _ in range(2):  # a login, then the cached-login fast path
            response, _ = await self.d.request("GET", "/addressbook", ALICE)
            self.assertEqual(response.code, 200)
        root = self.d.base.removesuffix("/mx/dev")
        requests = [("GET", "/mx/dev/calllog", None, 401),
                    ("GET", "/mx/elsewhere/addressbook", ALICE, 404),
                    ("GET", "/mx/dev/no/such/route", ALICE, 404),
                    ("DELETE", "/mx/dev/addressbook", ALICE, 405),
                    ("BREW", "/mx/dev/addressbook", ALICE, 405)]
        for method, path, auth, status in requests:
            response, _ = await self.d.request(method, path, auth, base=root)
            self.assertEqual(response.code, status, path)
        response, _ = await self.d.request("POST", "/mx/dev/call", ALICE, base=root,
                                           body=b"x" * (64 * 1024 + 1))
        self.assertEqual(response.code, 413)
        samples = await admin.scrape()

        def labels(route: str, method: str, status: str) -> frozenset[tuple[str, str]]:
            return frozenset({("route", route), ("method", method), ("status", status)})

        self.assertEqual(series(samples, "mxproxy_http_requests_total"), {
            labels(ADDRESS_BOOK, "GET", "200"): 2,
            labels("/mx/{mx}/calllog", "GET", "401"): 1,
            labels(ADDRESS_BOOK, "GET", "404"): 1,  # an unknown MX, not a new series
            labels("other", "GET", "404"): 1,
            labels("other", "DELETE", "405"): 1,
            labels("other", "other", "405"): 1,
            labels("other", "POST", "413"): 1})  # refused before routing, counted all the same
        self.assertEqual(value(samples, "mxproxy_http_request_duration_seconds_count",
                               route=ADDRESS_BOOK, method="GET"), 3)

    async def test_request_time_and_csta_round_trip(self) -> None:
        admin = await self.admin()
        response, _ = await self.d.request("GET", "/addressbook", ALICE)  # alice logs in
        self.assertEqual(response.code, 200)
        self.pbx.faults.reply_delay = 0.3
        body = json.dumps({"from": CALLER, "to": "3002"}).encode()
        pending = Deferred.fromCoroutine(self.d.request("POST", "/call", ALICE, body=body))
        await self.pbx.wait_for("MakeCall")
        self.clock.advance(0.3)
        response, answer = await pending
        self.assertEqual(response.code, 200, answer)
        samples = await admin.scrape()

        def histogram(name: str, **labels: str) -> tuple[float | None, ...]:
            """count, sum, and the buckets up to 0.25 s and 0.5 s."""
            return (value(samples, f"{name}_count", **labels),
                    value(samples, f"{name}_sum", **labels),
                    value(samples, f"{name}_bucket", le="0.25", **labels),
                    value(samples, f"{name}_bucket", le="0.5", **labels))

        count, total, quick, slow = histogram("mxproxy_csta_round_trip_seconds", mx="dev",
                                              request="MakeCall")
        self.assertEqual((count, quick, slow), (1, 0, 1))
        self.assertAlmostEqual(total, 0.3)
        count, total, quick, slow = histogram("mxproxy_http_request_duration_seconds",
                                              route=CALL, method="POST")
        self.assertEqual((count, quick, slow), (1, 0, 1))
        self.assertAlmostEqual(total, 0.3)
        self.assertEqual(value(samples, "mxproxy_csta_round_trip_seconds_count", mx="dev",
                               request="loginRequest"), 2, "the server link's and alice's")

    async def test_a_client_gone_before_the_answer(self) -> None:
        admin = await self.admin()
        await self.d.request("GET", "/addressbook", ALICE)  # alice logs in
        self.pbx.faults.reply_delay = 5.0
        pending = Deferred.fromCoroutine(self.d.request("GET", "/voicemail", ALICE))
        await self.pbx.wait_for("MonitorStart")  # her mail monitor, before the list
        pending.cancel()  # the client hangs up
        await self.assertFailure(pending, ResponseNeverReceived)
        gone = {"route": "/mx/{mx}/voicemail", "method": "GET", "status": "disconnected"}
        for _ in range(100):
            if self.metrics.registry.get_sample_value("mxproxy_http_requests_total", gone):
                break
            await next_turn()  # until the server has seen the connection go
        self.clock.advance(5.0)  # the MX answers nobody
        self.assertEqual(value(await admin.scrape(), "mxproxy_http_requests_total", **gone), 1)


class HealthUnitTests(SynchronousTestCase):
    def test_a_token_store_that_does_not_answer_in_time(self) -> None:
        clock = Clock()
        never: Deferred[int] = Deferred()  # a long write queue, a file locked by an admin
        push = SimpleNamespace(store=SimpleNamespace(count=lambda: never, write_failure=None))
        report = Deferred.fromCoroutine(Health([], cast(PushSystem, push), clock).report())
        self.assertNoResult(report)
        clock.advance(STORE_TIMEOUT)
        self.assertEqual(self.successResultOf(report), (True, {
            "healthy": True, "version": __version__, "mx": {},
            "tokenStore": {"state": "TimeoutError"}}))


class RoleTests(TestCase):
    """Several instances on one database: each MX's role here, and the lock connection."""

    async def test_a_standby_with_its_database_is_healthy(self) -> None:
        running = Running(self, serve(self, mx_company(1)))
        await running.server.when_ready()
        database = DatabaseState(up=True, since=0.0)
        roles = {"dev": MXRole("dev", owner=False)}
        healthy, report = await Health([running.server], None, running.clock, roles=roles,
                                       database=database).report()
        self.assertTrue(healthy)
        self.assertEqual(report["mx"]["dev"]["role"], "standby")
        self.assertEqual(report["database"], {"state": "up", "since": "1970-01-01T00:00:00Z",
                                              "lastError": None})
        samples = parse(generate_latest(_collected(LiveState(
            [running.server], None, running.clock, roles=roles, database=database))))
        self.assertEqual((value(samples, "mxproxy_mx_owner", mx="dev"),
                          value(samples, "mxproxy_database_up")), (0, 1))

    async def test_without_its_database_an_owner_or_a_standby_is_unhealthy(self) -> None:
        running = Running(self, serve(self, mx_company(1)))
        await running.server.when_ready()
        database = DatabaseState(up=False, since=60.0, last_error="connection refused")
        for owner in (True, False):
            roles = {"dev": MXRole("dev", owner=owner)}
            healthy, report = await Health([running.server], None, running.clock, roles=roles,
                                           database=database).report()
            self.assertFalse(healthy)
            self.assertEqual(report["database"], {"state": "down",
                                                  "since": "1970-01-01T00:01:00Z",
                                                  "lastError": "connection refused"})
        samples = parse(generate_latest(_collected(LiveState(
            [running.server], None, running.clock, roles=roles, database=database))))
        self.assertEqual(value(samples, "mxproxy_database_up"), 0)

    async def test_one_instance_owns_every_mx_and_has_no_lock_connection(self) -> None:
        running = Running(self, serve(self, mx_company(1)))
        await running.server.when_ready()
        _, report = await Health([running.server], None, running.clock).report()
        self.assertEqual((report["mx"]["dev"]["role"], "database" in report), ("owner", False))
        samples = parse(generate_latest(_collected(LiveState([running.server], None,
                                                             running.clock))))
        self.assertEqual((value(samples, "mxproxy_mx_owner", mx="dev"),
                          series(samples, "mxproxy_database_up")), (1, {}))


def _collected(collector: LiveState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry


class PageTests(APITestCase):
    async def test_health_without_push_delivery(self) -> None:
        admin = await self.admin()
        code, report = await admin.health()
        self.assertEqual(code, 200)
        link = report["mx"]["dev"]
        since = datetime.strptime(link.pop("since"), "%Y-%m-%dT%H:%M:%S%z")
        self.assertEqual(since.utcoffset(), timedelta(0))
        self.assertEqual(report, {"healthy": True, "version": __version__, "tokenStore": None,
                                  "mx": {"dev": {
            "link": "up", "reconnects": 0, "monitors": 0, "role": "owner", "sn": "TEST1"}}})

    async def test_other_paths_are_404(self) -> None:
        admin = await self.admin()
        for path in ("/", "/healthz/", "/metrics/x", "/metricsx", "/mx/dev/addressbook"):
            response, body = await admin.request(path)
            self.assertEqual((response.code, json.loads(body)), (404, {"error": "not found"}),
                             path)
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"application/json"])

    async def test_every_answer_names_the_server(self) -> None:
        admin = await self.admin()
        for path in ("/healthz", "/metrics", "/nothing"):
            response, _ = await admin.request(path)
            self.assertEqual(response.headers.getRawHeaders(b"server"),
                             [f"MXProxy/{__version__}".encode()], path)

    async def test_get_and_head_only(self) -> None:
        admin = await self.admin()
        response, body = await admin.request("/metrics", "POST")
        self.assertEqual((response.code, json.loads(body)), (405, {"error": "method not allowed"}))
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        response, body = await admin.request("/healthz", "HEAD")
        self.assertEqual((response.code, body), (200, b""))

    async def test_metrics_in_the_format_the_scraper_asks_for(self) -> None:
        admin = await self.admin()
        response, body = await admin.request("/metrics")
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"text/plain; version=0.0.4"), content_type)
        self.assertIn(b"# TYPE mxproxy_mx_link_up gauge", body)
        response, body = await admin.request(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertTrue(content_type.startswith(b"application/openmetrics-text"), content_type)
        self.assertTrue(body.endswith(b"# EOF\n"))

    async def test_each_daemon_has_its_own_registry(self) -> None:
        first = await self.admin()
        second = await self.admin()
        await self.d.request("GET", "/addressbook", ALICE)
        self.assertEqual(value(await second.scrape(), "mxproxy_http_requests_total",
                               route=ADDRESS_BOOK, method="GET", status="200"), 1)
        self.assertEqual(value(await first.scrape(), "mxproxy_http_requests_total",
                               route=ADDRESS_BOOK, method="GET", status="200"), 0)
