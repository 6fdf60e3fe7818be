"""Push delivery end to end over loopback: simulator → MXServer + CallMonitors + PushDispatcher →
fake APNs (TLS + HTTP/2, production and sandbox hosts) and fake FCM (HTTPS + OAuth2).

Devices are registered through the HTTP API where registration is the subject, through the
``DeviceRegistry`` elsewhere. The dispatcher and both fakes share one ``task.Clock`` (started at
the real time, since the fakes check the clients' JWTs against it): retries, the ring window,
delayed answers and the credential alarm interval move only when a test advances it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mxproxy import calls
from mxproxy.config import PushConfig
from mxproxy.csta.events import CallEvent, MailIncomingReady
from mxproxy.csta.messages import EVENTS
from mxproxy.csta.protocol import Message
from mxproxy.metrics import Metrics
from mxproxy.push.credentials import APNsCertificate, Credential
from mxproxy.push.dispatcher import RING_WINDOW, PushDispatcher
from mxproxy.push.fcm import ServiceAccount
from mxproxy.push.system import PushSystem, build
from mxproxy.store import Device, user_key
from mxproxy.store import sqlitefile as tokenfile
from mxproxy.testing import fakeapns, fakefcm
from mxproxy.testing.certs import CertificateAuthority, certificate_authority
from mxproxy.testing.fakeapns import NO_ANSWER, Delayed, FakeAPNs, ReceivedRequest
from mxproxy.testing.fakefcm import (
    INTERNAL,
    INVALID_DATA,
    INVALID_TOKEN,
    SENDER_ID_MISMATCH,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNREGISTERED,
    FakeFCM,
    google_error,
    quota_exceeded,
)
from mxproxy.testing.mxsim import PBX
from mxproxy.testing.mxsim.model import Call, Contact
from tests.support import Daemon, drop_sessions, next_turn
from tests.test_apns import (
    APPLE_DEV,
    APPLE_PROD,
    APPLE_TOPICS,
    BUNDLE,
    DER_NULL,
    KEY_ID,
    TEAM,
    push_certificate_p12,
    signing_key,
    token_key,
    topics_extension,
)

VOIP = f"{BUNDLE}.voip"
ALICE = ("alice", "alice-secret")
BOB = ("bob", "bob-secret")
CALLER = "+15555550100"
CALL_TYPE_FLAGS = 170917889  # what the simulator sends


def company() -> PBX:
    pbx = PBX(sn="TEST1")
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "alice-secret", "3001", first_name="Alice", last_name="Able")
    pbx.add_user("bob", "bob-secret", "3002", first_name="Bob")
    pbx.add_contact(Contact(jid="43884850000099999", first_name="Big", last_name="Boss",
                            business_phone="4000"))
    return pbx


def apns_token(n: int) -> str:
    return f"{n:064x}"


def fcm_token(name: str) -> str:
    return f"{name}:APA91b{'x' * 140}"


class Tracked(PushDispatcher):
    """The dispatcher, keeping what it was handed until it is done with it, so that a test (and
    its cleanup) can wait until every delivery and its bookkeeping are over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[Deferred[None]] = []

    def call_event(self, mx: str, user: str, event: CallEvent, before: calls.Call | None,
                   after: calls.Call | None) -> Deferred[None]:
        handling = super().call_event(mx, user, event, before, after)
        self.pending.append(handling)
        return handling

    def voicemail(self, mx: str, user: str, mail: MailIncomingReady) -> Deferred[None]:
        handling = super().voicemail(mx, user, mail)
        self.pending.append(handling)
        return handling

    async def settled(self) -> None:
        """Fires once every event handed over so far is fully handled; re-raises a failure."""
        while self.pending:
            batch, self.pending = self.pending, []
            for ok, result in await DeferredList(batch, consumeErrors=True):
                if not ok:
                    cast(Failure, result).raiseException()


class Providers:
    """Fake APNs for production and for sandbox, and a fake FCM, on loopback with one Clock.

    ``client_ca``: the APNs fakes ask for client certificates issued by it. ``known_key``:
    whether the APNs fakes trust the token key of :func:`tests.test_apns.token_key`.
    """

    def __init__(self, test: TestCase, clock: Clock, client_ca: CertificateAuthority | None = None,
                 known_key: bool = True) -> None:
        self.authority = fakeapns.server_authority()
        self.apns, self.apns_port = self._apns(test, clock, "production", client_ca, known_key)
        self.sandbox, self.sandbox_port = self._apns(test, clock, "development", client_ca,
                                                     known_key)
        self.fcm = FakeFCM(clock=clock)
        port = fakefcm.listen(self.fcm, reactor=reactor, certificate=self.authority.issue())
        test.addCleanup(self.fcm.disconnect)
        test.addCleanup(port.stopListening)
        directory = test.mktemp()
        os.makedirs(directory)
        info, path = fakefcm.make_service_account(self.fcm.base_url, directory=directory)
        self.fcm.add_account(info)
        self.account = ServiceAccount.from_file(path)

    @staticmethod
    def _apns(test: TestCase, clock: Clock, environment: str,
              client_ca: CertificateAuthority | None, known_key: bool) -> tuple[FakeAPNs, int]:
        fake = FakeAPNs(clock=clock, environment=environment)
        if known_key:
            public = signing_key().public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            fake.add_token_key(KEY_ID, TEAM, public)
        port = fakeapns.listen(fake, reactor=reactor, require_client_cert=client_ca)
        test.addCleanup(fake.drop)
        test.addCleanup(port.stopListening)
        return fake, port.getHost().port  # type: ignore[attr-defined]

    def config(self, **limits: int) -> PushConfig:
        return PushConfig(apns_host=f"127.0.0.1:{self.apns_port}",
                          apns_sandbox_host=f"127.0.0.1:{self.sandbox_port}",
                          fcm_url=self.fcm.base_url, **limits)


class PushTestCase(TestCase):
    """A daemon (HTTP API + server link) with push delivery to the fakes, counted in
    ``metrics``."""

    timeout = 30  # seconds: a push that never arrives fails the test soon

    async def start(self, credential: Credential | None = None,
                    client_ca: CertificateAuthority | None = None, known_key: bool = True,
                    max_in_flight: int = 512, max_queued: int = 4096,
                    max_devices_per_user: int = 20, link_clock: Clock | None = None) -> Daemon:
        self.clock = Clock()
        self.clock.advance(int(reactor.seconds()))  # whole seconds: exact differences
        self.pbx = company()
        self.providers = Providers(self, self.clock, client_ca, known_key)
        self.apns, self.sandbox, self.fcm = (self.providers.apns, self.providers.sandbox,
                                             self.providers.fcm)
        self.credential = credential or token_key()
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.max_devices_per_user = max_devices_per_user
        self.metrics = Metrics()
        self.db = self.mktemp()
        self.system = self.push_system()
        self.d = await self.daemon(link_clock)
        self.alice = self.user("alice")
        self.bob = self.user("bob")
        return self.d

    def push_system(self) -> PushSystem:
        """What ``build`` assembles for this config, with the dispatcher on the test's Clock
        (``build`` gives it the reactor)."""
        built = build(reactor, self.db, [self.credential], {BUNDLE: self.providers.account},
                      self.providers.config(max_in_flight=self.max_in_flight,
                                            max_devices_per_user=self.max_devices_per_user),
                      trust_root=self.providers.authority.cert_pem)
        dispatcher = Tracked(built.store, built.senders, self.clock,
                             max_in_flight=self.max_in_flight, max_queued=self.max_queued,
                             metrics=self.metrics)
        system = PushSystem(built.store, dispatcher, built.senders, built.clients)
        self.addCleanup(system.stopService)
        self.addCleanup(dispatcher.settled)  # runs first: nothing may be left half done
        return system

    async def daemon(self, link_clock: Clock | None = None) -> Daemon:
        return await Daemon(self, self.pbx, push=self.system, link_clock=link_clock,
                            metrics=self.metrics).start()

    @property
    def dispatcher(self) -> Tracked:
        return cast(Tracked, self.system.dispatcher)

    def user(self, login: str) -> str:
        return user_key(self.pbx.sn, self.pbx.user(login).jid)

    # -- registration -------------------------------------------------------------------------

    async def token(self, method: str, auth: tuple[str, str], provider: str, bundle: str,
                    token: str, query: str = "") -> None:
        """POST or DELETE /mx/dev/token/<provider>/<bundle><query> as ``auth``."""
        path = f"/token/{provider}/{bundle}{query}"
        response, body = await self.d.request(method, path, auth,
                                              body=json.dumps({"token": token}).encode(),
                                              headers={"Content-Type": "application/json"})
        self.assertEqual(response.code, 204, body)

    async def register(self, login: str, provider: str, bundle: str, token: str,
                       sandbox: bool = False) -> None:
        """Straight through the device registration the API uses (store, then monitor)."""
        await self.d.devices.register(self.pbx.user(login).jid, provider, bundle, sandbox, token)

    async def devices(self, user: str) -> list[Device]:
        return await self.system.store.devices(user)

    # -- events -------------------------------------------------------------------------------

    def handled(self, name: str, ext: str | None = None) -> Deferred[None]:
        """Fires once the next event ``name`` (for ``ext``'s monitor, if given) has reached the
        proxy and the dispatcher is done with everything it was given."""
        protocol = self.d.server.protocol
        assert protocol is not None
        match = None
        if ext is not None:
            [(_, ref)] = self.pbx.monitors_of(ext)

            def match(message: Message) -> bool:
                event = EVENTS[message.name].from_xml(message.element)
                return getattr(event, "monitor_cross_ref_id", None) == ref

        async def wait() -> None:
            await protocol.expect(name, match=match)
            await next_turn()  # the monitors' subscriber may come after the expectation
            await self.dispatcher.settled()

        return Deferred.fromCoroutine(wait())

    def ring(self, calling: str, ext: str, calling_name: str = "") -> Call:
        return self.pbx.place_call(calling, ext, calling_name=calling_name)

    async def until(self, condition: Callable[[], object], what: str) -> None:
        """Let the reactor run until ``condition`` holds (for state no event announces)."""
        deadline = reactor.seconds() + 10
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            await next_turn()

    async def retry_in(self, seconds: float) -> None:
        """Wait for the dispatcher to schedule its retry; check the delay; let it come."""
        await self.until(self.clock.getDelayedCalls, "a retry to be scheduled")
        [retry] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(retry.getTime() - self.clock.seconds(), seconds)
        self.clock.advance(seconds)

    def logged(self) -> list[str]:
        """Every log line from now on, formatted."""
        lines: list[str] = []

        def observe(event: LogEvent) -> None:
            lines.append(formatEvent(event))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines


def by_token(requests: list[ReceivedRequest]) -> dict[str, list[ReceivedRequest]]:
    found: dict[str, list[ReceivedRequest]] = {}
    for request in requests:
        found.setdefault(request.token, []).append(request)
    return found


def call_fields(call: Call, time: float, **extra: Any) -> dict[str, Any]:
    """The push body for the simulator's DeliveredEvent of ``call``: the original's, and the
    name of the MX in the API's URLs (the test daemon's is ``dev``)."""
    fields: dict[str, Any] = {
        "callId": call.call_id, "deviceId": call.called, "globalCallId": call.global_call_id,
        "alertingDevice": call.called, "callingDevice": call.calling,
        "calledDevice": call.called, "lastRedirectionDevice": call.calling,
        "localConnectionInfo": "alerting", "cause": "normal",
        "callTypeFlags": CALL_TYPE_FLAGS, "time": int(time), "mx": "dev"}
    fields.update(extra)
    return fields


# -- what a push looks like -----------------------------------------------------------------------


class PayloadTests(PushTestCase):
    async def test_voip_push_carries_the_call_json(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", VOIP, apns_token(1))
        call = self.ring(CALLER, "3001", calling_name="Carl Caller")
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(request.token, apns_token(1))
        headers = request.headers
        self.assertEqual((headers["apns-push-type"], headers["apns-topic"],
                          headers["apns-priority"], headers["apns-expiration"]),
                         ("voip", VOIP, "10", "0"))
        self.assertNotIn("apns-collapse-id", headers)
        self.assertEqual(request.payload,
                         call_fields(call, self.clock.seconds(), callingName="Carl Caller"))
        self.assertIsInstance(request.payload["globalCallId"], str)
        # What the app needs to answer: POST /mx/<mx>/calls/<callId>/answer.
        self.assertEqual((request.payload["mx"], request.payload["callId"]),
                         ("dev", call.call_id))
        self.assertEqual(self.sandbox.received, [])
        [device] = await self.devices(self.alice)
        self.assertEqual(device.last_success, self.clock.seconds())
        self.assertEqual(self.dispatcher.delivered, 1)

    async def test_alert_push_names_the_caller_from_the_address_book(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        call = self.pbx.create_call("4000", "3001")
        call.calling_name = ""  # the MX names no caller: the proxy's address book does
        self.pbx.ring(call)
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        headers = request.headers
        self.assertEqual((headers["apns-push-type"], headers["apns-topic"],
                          headers["apns-priority"], headers["apns-expiration"]),
                         ("alert", BUNDLE, "10", "0"))
        payload = dict(request.payload)
        aps = payload.pop("aps")
        self.assertEqual(aps["alert"]["body"], "Incoming call from Big Boss")
        self.assertEqual(aps["sound"], "default")
        self.assertEqual(payload, call_fields(call, self.clock.seconds(), callingName="Big Boss"))

    async def test_alert_push_for_an_unknown_caller_shows_the_number(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        call = self.ring(CALLER, "3001")
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        payload = dict(request.payload)
        self.assertEqual(payload.pop("aps")["alert"]["body"], f"Incoming call from {CALLER}")
        self.assertEqual(payload, call_fields(call, self.clock.seconds()))
        self.assertNotIn("callingName", payload)

    async def test_fcm_message_is_data_only_strings_high_priority_short_ttl(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "gfcm", BUNDLE, fcm_token("a"))
        call = self.ring(CALLER, "3001", calling_name="Carl Caller")
        [arrival] = await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        message = arrival.message
        self.assertEqual(arrival.project_id, self.providers.account.project_id)
        self.assertEqual(set(message), {"token", "data", "android"})  # no "notification"
        self.assertEqual(message["token"], fcm_token("a"))
        expected = call_fields(call, self.clock.seconds(), callingName="Carl Caller")
        self.assertEqual(message["data"], {key: str(value) for key, value in expected.items()})
        self.assertTrue(all(isinstance(value, str) for value in message["data"].values()))
        android = message["android"]
        self.assertEqual(android["priority"], "HIGH")
        self.assertTrue(android["ttl"].endswith("s"))
        self.assertLessEqual(int(android["ttl"][:-1]), RING_WINDOW)
        self.assertGreater(int(android["ttl"][:-1]), 0)
        self.assertEqual(android["collapse_key"], call.global_call_id)
        self.assertEqual(self.apns.received, [])


# -- where it goes and with which credential ----------------------------------------------------


class RoutingTests(PushTestCase):
    async def test_sandbox_token_goes_to_the_sandbox_host(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(2), query="?sandbox")
        await self.token("POST", ALICE, "apns", VOIP, apns_token(3), query="?sandbox=1")
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        await self.sandbox.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1)])
        self.assertEqual(sorted(r.token for r in self.sandbox.received),
                         [apns_token(2), apns_token(3)])
        sandboxed = {d.token: d.sandbox for d in await self.devices(self.alice)}
        self.assertEqual(sandboxed, {apns_token(1): False, apns_token(2): True,
                                     apns_token(3): True})

    async def test_sandbox_spelled_false_means_production(self) -> None:
        """``?sandbox=0`` and ``?sandbox=false`` are production devices, not sandbox ones
        (the mere presence of the key used to count); a value that is no boolean is 400."""
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1), query="?sandbox=0")
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(2), query="?sandbox=false")
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(3), query="?sandbox=")
        sandboxed = {d.token: d.sandbox for d in await self.devices(self.alice)}
        self.assertEqual(sandboxed, {apns_token(1): False, apns_token(2): False,
                                     apns_token(3): True})
        response, body = await self.d.request(
            "POST", f"/token/apns/{BUNDLE}?sandbox=maybe", ALICE,
            body=json.dumps({"token": apns_token(4)}).encode())
        self.assertEqual((response.code, json.loads(body)["error"]),
                         (400, '"sandbox" must be true or false (or given without a value)'))

    async def test_token_auth_with_a_jwt_the_fake_verifies(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        await self.token("POST", ALICE, "apns", VOIP, apns_token(2), query="?sandbox")
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        await self.sandbox.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(self.dispatcher.delivered, 2)  # the fakes accepted the JWT
        for request in self.apns.received + self.sandbox.received:
            scheme, _, token = request.headers["authorization"].partition(" ")
            self.assertEqual(scheme, "bearer")
            self.assertEqual(jwt.get_unverified_header(token)["kid"], KEY_ID)
            claims = jwt.decode(token, signing_key().public_key(), algorithms=["ES256"])
            self.assertEqual(claims["iss"], TEAM)

    async def test_certificate_auth_with_a_client_certificate_the_fake_requires(self) -> None:
        apple = certificate_authority("fake Apple WWDR CA")
        path = self.mktemp()
        push_certificate_p12(path, apple, {
            APPLE_DEV: DER_NULL, APPLE_PROD: DER_NULL,
            APPLE_TOPICS: topics_extension((BUNDLE, "app"), (VOIP, "voip"))})
        credential = APNsCertificate.from_p12(path, "secret")
        await self.start(credential=credential, client_ca=apple)
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        await self.token("POST", ALICE, "apns", VOIP, apns_token(2), query="?sandbox")
        self.ring(CALLER, "3001")
        [alert] = await self.apns.wait_for(1)
        [voip] = await self.sandbox.wait_for(1)
        await self.dispatcher.settled()
        # Without the certificate the fake answers 403 MissingProviderToken: these succeeded.
        self.assertEqual(self.dispatcher.delivered, 2)
        self.assertEqual((alert.headers["apns-push-type"], voip.headers["apns-push-type"]),
                         ("alert", "voip"))
        self.assertNotIn("authorization", alert.headers)
        self.assertNotIn("authorization", voip.headers)


# -- what the providers' answers do to the token ------------------------------------------------


class PruningTests(PushTestCase):
    async def after_a_call(self, provider: str, bundle: str, token: str, *script: Any,
                           pushes: int = 1) -> list[Device]:
        """Register ``token`` for alice, script its answers, ring her; her devices after."""
        await self.register("alice", provider, bundle, token)
        fake: FakeAPNs | FakeFCM = self.apns if provider == "apns" else self.fcm
        fake.script(token, *script)
        self.ring(CALLER, "3001")
        await fake.wait_for(pushes)
        await self.dispatcher.settled()
        return await self.devices(self.alice)

    async def assertPruned(self, provider: str, bundle: str, token: str, *script: Any) -> None:
        self.assertEqual(await self.after_a_call(provider, bundle, token, *script), [])
        self.assertEqual(self.dispatcher.failed, 1)

    async def assertKept(self, provider: str, bundle: str, token: str, reason: str,
                         *script: Any, pushes: int = 1) -> Device:
        [device] = await self.after_a_call(provider, bundle, token, *script, pushes=pushes)
        self.assertEqual((device.token, device.last_error_reason), (token, reason))
        self.assertEqual(device.last_error, self.clock.seconds())
        return device

    async def test_apns_bad_device_token_is_pruned(self) -> None:
        await self.start()
        await self.assertPruned("apns", BUNDLE, apns_token(1), (400, "BadDeviceToken"))

    async def test_apns_device_token_not_for_topic_is_pruned(self) -> None:
        await self.start()
        self.apns.register_device(apns_token(1), "com.example.other")  # Apple says no itself
        self.assertEqual(await self.after_a_call("apns", BUNDLE, apns_token(1)), [])
        [request] = self.apns.received
        self.assertEqual(request.headers["apns-topic"], BUNDLE)

    async def test_apns_unregistered_is_pruned(self) -> None:
        await self.start()
        # APNs says the token went stale after it was registered.
        later = int((reactor.seconds() + 60) * 1000)
        await self.assertPruned("apns", VOIP, apns_token(1), (410, "Unregistered", later))

    async def test_apns_unregistered_before_a_re_registration_is_kept(self) -> None:
        await self.start()
        # APNs says the token went stale at a time before the app registered it (again).
        earlier = int((reactor.seconds() - 60) * 1000)
        await self.assertKept("apns", VOIP, apns_token(1), "Unregistered",
                              (410, "Unregistered", earlier))

    async def test_fcm_unregistered_is_pruned(self) -> None:
        await self.start()
        await self.assertPruned("gfcm", BUNDLE, fcm_token("a"), UNREGISTERED)

    async def test_fcm_sender_id_mismatch_is_pruned(self) -> None:
        await self.start()
        await self.assertPruned("gfcm", BUNDLE, fcm_token("a"), SENDER_ID_MISMATCH)

    async def test_fcm_invalid_argument_about_the_token_is_pruned(self) -> None:
        await self.start()
        await self.assertPruned("gfcm", BUNDLE, fcm_token("a"), INVALID_TOKEN)

    async def test_fcm_field_violation_on_the_token_is_pruned(self) -> None:
        await self.start()
        violation = google_error(400, "INVALID_ARGUMENT", "Invalid registration token",
                                 violations=[("message.token", "Invalid registration token")])
        await self.assertPruned("gfcm", BUNDLE, fcm_token("a"), violation)

    async def test_fcm_invalid_argument_on_another_field_keeps_the_token(self) -> None:
        await self.start()
        await self.assertKept("gfcm", BUNDLE, fcm_token("a"), "INVALID_ARGUMENT", INVALID_DATA)

    async def test_apns_other_bad_requests_keep_the_token(self) -> None:
        await self.start()
        await self.assertKept("apns", BUNDLE, apns_token(1), "BadTopic", (400, "BadTopic"))

    async def test_apns_invalid_provider_token_keeps_tokens_and_alarms_once(self) -> None:
        await self.start(known_key=False)  # the fakes do not know our signing key
        lines = self.logged()
        await self.register("alice", "apns", BUNDLE, apns_token(1))
        await self.register("alice", "apns", VOIP, apns_token(2))
        for pushes in (2, 4):
            self.ring(CALLER, "3001")
            await self.apns.wait_for(pushes)
            await self.dispatcher.settled()
        self.assertEqual(self.dispatcher.failed, 4)
        devices = await self.devices(self.alice)
        self.assertEqual([(d.token, d.last_error_reason) for d in devices],
                         [(apns_token(1), "InvalidProviderToken"),
                          (apns_token(2), "InvalidProviderToken")])
        alarms = [line for line in lines if "apns rejects our credentials" in line]
        self.assertEqual(len(alarms), 1, lines)
        self.assertIn("InvalidProviderToken", alarms[0])

    async def test_fcm_unauthenticated_keeps_the_token(self) -> None:
        await self.start()
        lines = self.logged()
        # FCMClient renews its access token after a 401 and tries once more.
        await self.assertKept("gfcm", BUNDLE, fcm_token("a"), "UNAUTHENTICATED",
                              UNAUTHENTICATED, UNAUTHENTICATED, pushes=2)
        self.assertEqual(len([line for line in lines if "gfcm rejects our credentials" in line]),
                         1)


# -- retries within the ring window -------------------------------------------------------------


class RetryTests(PushTestCase):
    async def test_apns_busy_then_success_within_the_ring_window(self) -> None:
        await self.start()
        await self.register("alice", "apns", VOIP, apns_token(1))
        self.apns.script(apns_token(1), (503, "ServiceUnavailable"),
                         (429, "TooManyRequests", 2))
        self.ring(CALLER, "3001")
        start = self.clock.seconds()
        await self.apns.wait_for(1)
        await self.retry_in(1.0)  # no retry-after: the first backoff step
        await self.apns.wait_for(2)
        await self.retry_in(2.0)  # the server's retry-after
        received = await self.apns.wait_for(3)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in received], [apns_token(1)] * 3)
        self.assertEqual([r.time - start for r in received], [0.0, 1.0, 3.0])
        self.assertEqual(received[0].payload, received[2].payload)
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (1, 2))
        [device] = await self.devices(self.alice)
        self.assertEqual(device.last_success, start + 3.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    async def test_fcm_unavailable_and_quota_then_success(self) -> None:
        await self.start()
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))
        self.fcm.script(fcm_token("a"), UNAVAILABLE, quota_exceeded(3), INTERNAL)
        self.ring(CALLER, "3001")
        await self.fcm.wait_for(1)
        await self.retry_in(1.0)
        await self.fcm.wait_for(2)
        await self.retry_in(3.0)  # Retry-After: 3 beats the backoff step of 2
        await self.fcm.wait_for(3)
        await self.retry_in(4.0)
        received = await self.fcm.wait_for(4)
        await self.dispatcher.settled()
        self.assertEqual([a.reply.status for a in received], [503, 429, 500, 200])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (1, 3))

    async def test_no_retry_past_the_ring_window(self) -> None:
        await self.start()
        lines = self.logged()
        await self.register("alice", "apns", VOIP, apns_token(1))
        self.apns.script(apns_token(1), *[(503, "ServiceUnavailable")] * 10)
        self.ring(CALLER, "3001")
        start = self.clock.seconds()
        for attempt, wait in enumerate((1.0, 2.0, 4.0, 8.0), start=1):
            await self.apns.wait_for(attempt)
            await self.retry_in(wait)
        # The fifth attempt fails at +15 s; the next (+31 s) would be past the ring window.
        received = await self.apns.wait_for(5)
        await self.dispatcher.settled()
        self.assertEqual([r.time - start for r in received], [0.0, 1.0, 3.0, 7.0, 15.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (0, 5))
        self.assertTrue(any("past the ring window" in line for line in lines), lines)
        [device] = await self.devices(self.alice)
        self.assertEqual(device.last_error_reason, "ServiceUnavailable")

    async def test_retry_after_beyond_the_ring_window_is_not_waited_for(self) -> None:
        await self.start()
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))
        self.fcm.script(fcm_token("a"), quota_exceeded(int(RING_WINDOW) + 1))
        self.ring(CALLER, "3001")
        await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.fcm.received), 1)
        self.assertEqual([d.token for d in await self.devices(self.alice)], [fcm_token("a")])


# -- after the call rang ------------------------------------------------------------------------


class FollowUpTests(PushTestCase):
    async def ringing(self) -> Call:
        """Alice has a VoIP, an alert and an FCM device; a call rang all three."""
        await self.start()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))
        call = self.ring(CALLER, "3001", calling_name="Carl Caller")
        await self.apns.wait_for(2)
        await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        return call

    async def assertFollowUp(self, call: Call, reason: str, body: str) -> None:
        await self.apns.wait_for(3)
        await self.fcm.wait_for(2)
        await self.dispatcher.settled()
        pushes = by_token(self.apns.received)
        self.assertEqual(len(pushes[apns_token(1)]), 1, "a VoIP push is only ever a call")
        self.assertEqual(pushes[apns_token(1)][0].headers["apns-push-type"], "voip")
        ringing, ended = pushes[apns_token(2)]
        self.assertEqual(ended.headers["apns-push-type"], "alert")
        self.assertEqual(ended.headers["apns-collapse-id"], call.global_call_id)
        self.assertEqual(ringing.headers["apns-collapse-id"], call.global_call_id)
        self.assertEqual(ended.payload, {"event": "callEnded", "reason": reason,
                                         "callId": call.call_id,
                                         "aps": {"alert": {"title": "Call ended",
                                                           "body": body}}})
        message = self.fcm.received[1].message
        self.assertEqual(message["data"], {"event": "callEnded", "reason": reason,
                                           "callId": str(call.call_id)})
        self.assertEqual(message["android"]["collapse_key"],
                         self.fcm.received[0].message["android"]["collapse_key"])

    async def test_hang_up_before_answer_ends_the_alert_and_fcm_ringing(self) -> None:
        call = await self.ringing()
        self.pbx.hang_up(call)
        await self.assertFollowUp(call, "ended", "Call ended")

    async def test_answered_on_another_device(self) -> None:
        call = await self.ringing()
        self.pbx.answer(call, device="3002")  # picked up at another extension
        await self.assertFollowUp(call, "answeredElsewhere", "Answered on another device")
        cleared = self.handled("ConnectionClearedEvent")
        self.pbx.hang_up(call)
        await cleared
        self.assertEqual((len(self.apns.received), len(self.fcm.received)), (3, 2))

    async def test_answered_by_the_user_elsewhere_stops_their_apps_ringing(self) -> None:
        call = await self.ringing()
        self.pbx.answer(call)  # on her desk phone
        await self.assertFollowUp(call, "answeredElsewhere", "Answered on another device")

    async def test_the_answering_device_is_left_out_of_the_follow_up(self) -> None:
        call = await self.ringing()
        # The app says so before it answers (POST calls/<id>/answer with its token); APNs
        # tokens in either case are one device.
        self.d.devices.answered_here(self.pbx.user("alice").jid, call.call_id,
                                     apns_token(2).upper())
        established = self.handled("EstablishedEvent")
        self.pbx.answer(call)
        await established
        await self.fcm.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual(len(self.apns.received), 2)
        self.assertEqual(self.fcm.received[1].message["data"]["reason"], "answeredElsewhere")

    async def test_an_unknown_answering_token_changes_nothing(self) -> None:
        call = await self.ringing()
        self.d.devices.answered_here(self.pbx.user("alice").jid, call.call_id, apns_token(9))
        self.d.devices.answered_here(self.pbx.user("alice").jid, call.call_id + 1,
                                     apns_token(2))
        self.pbx.answer(call)
        await self.assertFollowUp(call, "answeredElsewhere", "Answered on another device")

    async def test_an_answer_said_while_the_devices_are_read_still_counts(self) -> None:
        await self.start()
        await self.register("alice", "apns", BUNDLE, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        store = self.system.store
        stored = await store.devices(self.alice)
        reading: list[Deferred[list[Device]]] = []

        def held(user: str) -> Deferred[list[Device]]:  # until the test says
            reading.append(Deferred())
            return reading[-1]

        self.patch(store, "devices", held)
        call = self.ring(CALLER, "3001")
        await self.until(lambda: reading, "alice's devices being read")
        self.d.devices.answered_here(self.pbx.user("alice").jid, call.call_id, apns_token(2))
        reading[0].callback(stored)
        await self.apns.wait_for(2)
        established = self.handled("EstablishedEvent")
        self.pbx.answer(call)
        await established
        await self.apns.wait_for(3)
        await self.dispatcher.settled()
        self.assertEqual([request.token for request in self.apns.received[2:]], [apns_token(1)])

    async def test_call_over_before_its_push_went_out_rings_nothing(self) -> None:
        await self.start()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        cleared = self.handled("ConnectionClearedEvent")
        call = self.ring(CALLER, "3001")
        self.pbx.hang_up(call)  # both events reach the proxy before her devices are read
        await cleared
        self.assertEqual(self.apns.received, [])
        self.assertEqual(self.dispatcher.delivered + self.dispatcher.failed, 0)


class DuplicateTests(PushTestCase):
    async def test_repeated_delivered_event_pushes_each_device_once(self) -> None:
        await self.start()
        await self.register("alice", "apns", BUNDLE, apns_token(1))
        call = self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        await self.dispatcher.settled()
        again = self.handled("DeliveredEvent")
        self.pbx.ring(call)
        await again
        self.assertEqual(len(self.apns.received), 1)
        # A device registered meanwhile is told once, the first one still not again.
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        again = self.handled("DeliveredEvent")
        self.pbx.ring(call)
        await again
        self.assertEqual([r.token for r in self.apns.received],
                         [apns_token(1), apns_token(2)])

    async def test_far_end_of_the_users_own_outgoing_call_is_not_pushed(self) -> None:
        await self.start()
        await self.register("alice", "apns", BUNDLE, apns_token(1))
        await self.register("bob", "apns", BUNDLE, apns_token(2))
        at_alice = self.handled("DeliveredEvent", ext="3001")
        self.ring("3001", "3002")  # alice calls bob: both monitors see the DeliveredEvent
        await at_alice
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(request.token, apns_token(2))
        self.assertEqual(request.payload["aps"]["alert"]["body"],
                         "Incoming call from Alice Able")
        self.assertEqual(len(self.apns.received), 1)


# -- monitors: link drops, restarts, unregistration ---------------------------------------------


class MonitorTests(PushTestCase):
    async def test_monitors_restarted_after_a_link_drop(self) -> None:
        link = Clock()
        await self.start(link_clock=link)
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        server = self.d.server
        assert server.protocol is not None
        closed = server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        self.assertEqual(self.pbx.monitors_of("3001"), [])
        restarted = self.pbx.wait_for("MonitorStart")
        ready = server.when_ready()
        assert server.state.next_attempt is not None
        link.advance(server.state.next_attempt - link.seconds())
        await ready
        await restarted
        self.assertEqual(len(self.pbx.monitors_of("3001")), 1)
        call = self.ring(CALLER, "3001")
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual((request.token, request.payload["callId"]),
                         (apns_token(1), call.call_id))

    async def test_stored_users_are_monitored_after_a_daemon_restart(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "gfcm", BUNDLE, fcm_token("a"))
        await self.d.server.stopService()
        await self.dispatcher.settled()
        await self.system.stopService()
        self.system = self.push_system()  # the same database file
        restarted = self.pbx.wait_for("MonitorStart")
        self.d = await self.daemon()
        command = await restarted
        self.assertEqual(command.element.findtext("monitorObject/deviceObject"), "3001")
        self.ring(CALLER, "3001")
        [arrival] = await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(arrival.message["token"], fcm_token("a"))

    async def test_delete_of_the_last_token_stops_the_monitor(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        await self.token("POST", ALICE, "gfcm", BUNDLE, fcm_token("a"))
        self.assertEqual(len(self.pbx.monitors_of("3001")), 1)
        await self.token("DELETE", ALICE, "apns", BUNDLE, apns_token(1))
        self.assertEqual(len(self.pbx.monitors_of("3001")), 1)
        self.assertNotIn("MonitorStop", [c.name for c in self.pbx.received])
        stopped = self.pbx.wait_for("MonitorStop")
        await self.token("DELETE", ALICE, "gfcm", BUNDLE, fcm_token("a"))
        await stopped
        self.assertEqual(self.pbx.monitors_of("3001"), [])
        self.assertEqual(await self.devices(self.alice), [])

    async def test_a_device_beyond_push_max_devices_per_user_replaces_the_oldest(self) -> None:
        await self.start(max_devices_per_user=2)
        for n in (1, 2, 3):
            await self.token("POST", ALICE, "apns", VOIP, apns_token(n))
        self.assertEqual([device.token for device in await self.devices(self.alice)],
                         [apns_token(2), apns_token(3)])
        self.ring(CALLER, "3001")
        await self.apns.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual({r.token for r in self.apns.received}, {apns_token(2), apns_token(3)})

    async def test_an_apns_token_in_either_case_is_one_device(self) -> None:
        await self.start()
        token = "0A1B2C" * 10 + "3D4E"
        await self.token("POST", ALICE, "apns", VOIP, token)
        await self.token("POST", ALICE, "apns", VOIP, token.lower())
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in self.apns.received], [token.lower()])
        stopped = self.pbx.wait_for("MonitorStop")
        await self.token("DELETE", ALICE, "apns", VOIP, "0a1B2c" * 10 + "3D4e")
        await stopped
        self.assertEqual(await self.devices(self.alice), [])

    async def test_token_moved_to_another_user_stops_the_previous_owners_monitor(self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        [(_, alice_ref)] = self.pbx.monitors_of("3001")
        stopped = self.pbx.wait_for("MonitorStop")
        await self.token("POST", BOB, "apns", BUNDLE, apns_token(1))  # the phone changed hands
        command = await stopped
        self.assertEqual(command.element.findtext("monitorCrossRefID"), str(alice_ref))
        self.assertEqual(self.pbx.monitors_of("3001"), [])
        self.assertEqual(len(self.pbx.monitors_of("3002")), 1)
        self.ring(CALLER, "3001")
        call = self.ring(CALLER, "3002")
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual((request.token, request.payload["callId"]),
                         (apns_token(1), call.call_id))

    async def test_token_moved_away_keeps_the_monitor_of_an_owner_with_devices_left(
            self) -> None:
        await self.start()
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(1))
        await self.token("POST", ALICE, "apns", BUNDLE, apns_token(2))
        await self.token("POST", BOB, "apns", BUNDLE, apns_token(1))
        self.assertEqual(len(self.pbx.monitors_of("3001")), 1)
        self.assertNotIn("MonitorStop", [c.name for c in self.pbx.received])
        self.ring(CALLER, "3001")
        [request] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(request.token, apns_token(2))


# -- limits -------------------------------------------------------------------------------------


class InFlightTests(PushTestCase):
    async def test_push_beyond_the_in_flight_limit_and_the_queue_fails_fast(self) -> None:
        await self.start(max_in_flight=1, max_queued=0)
        lines = self.logged()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("bob", "apns", VOIP, apns_token(2))
        self.apns.script(apns_token(1), Delayed(5.0))  # APNs holds alice's answer
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        self.assertEqual(self.dispatcher.in_flight["apns"], 1)
        self.ring(CALLER, "3002")
        await self.until(lambda: self.dispatcher.failed == 1, "bob's push to be dropped")
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1)])
        self.assertTrue(any("apns has 1 pushes in flight and 0 waiting; dropping the call push"
                            in line for line in lines), lines)
        self.clock.advance(5.0)  # alice's answer comes
        await self.until(lambda: self.dispatcher.delivered == 1, "alice's push to be answered")
        await self.dispatcher.settled()
        self.assertEqual(self.dispatcher.in_flight["apns"], 0)
        self.ring(CALLER, "3002")  # room again
        await self.apns.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1), apns_token(2)])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (2, 1))

    async def test_push_beyond_the_in_flight_limit_waits_its_turn(self) -> None:
        await self.start(max_in_flight=1, max_queued=1)
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("bob", "apns", VOIP, apns_token(2))
        self.apns.script(apns_token(1), Delayed(5.0))
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        self.ring(CALLER, "3002")
        await self.until(lambda: self.dispatcher.slots["apns"].waiting == 1, "bob's push queued")
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1)])
        self.clock.advance(5.0)  # alice's answer frees the slot, which passes to bob's push
        await self.apns.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1), apns_token(2)])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (2, 0))
        self.assertEqual(self.dispatcher.in_flight["apns"], 0)

    async def test_a_push_waiting_past_the_ring_window_is_dropped(self) -> None:
        await self.start(max_in_flight=1, max_queued=1)
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("bob", "apns", VOIP, apns_token(2))
        self.apns.script(apns_token(1), Delayed(60.0))  # longer than the ring window
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        self.ring(CALLER, "3002")
        await self.until(lambda: self.dispatcher.slots["apns"].waiting == 1, "bob's push queued")
        self.clock.advance(30.0)
        await self.until(lambda: self.dispatcher.failed == 1, "bob's push to expire")
        self.assertEqual(self.dispatcher.slots["apns"].waiting, 0)
        self.clock.advance(30.0)
        await self.dispatcher.settled()
        self.assertEqual([r.token for r in self.apns.received], [apns_token(1)])


class FullDiskTests(PushTestCase):
    async def test_pushes_go_out_and_the_full_disk_is_logged_once_not_per_push(self) -> None:
        await self.start()
        for n in (1, 2, 3):
            await self.register("alice", "apns", VOIP, apns_token(n))
        lines = self.logged()

        def full(connection: sqlite3.Connection, batch: list[Any]) -> list[bool]:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error

        self.patch(tokenfile, "notes", full)
        self.ring(CALLER, "3001")
        await self.apns.wait_for(3)
        await self.dispatcher.settled()
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (3, 0))
        self.assertIsNotNone(self.system.store.write_failure)
        self.assertEqual([line for line in lines if "disk is full" in line], [
            f"token store {self.db}: database or disk is full; device registrations answer 503 "
            "and /healthz reports the store until a write succeeds"])
        self.assertEqual([line for line in lines if "cannot record" in line], [])


class FairShareTests(PushTestCase):
    """Alice's call rings ten devices, Bob's one; APNs takes one push at a time and holds the
    first for 5 s. Bob's push must not wait behind Alice's, nor be dropped for them."""

    async def ring_alice_then_bob(self, max_queued: int) -> list[str]:
        """Both calls rung, Bob's once his push waits or was dropped; the lines logged."""
        await self.start(max_in_flight=1, max_queued=max_queued)
        lines = self.logged()
        for n in range(10):
            await self.register("alice", "apns", VOIP, apns_token(100 + n))
        await self.register("bob", "apns", VOIP, apns_token(2))
        self.apns.script(apns_token(100), Delayed(5.0))
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        alices = min(9, max_queued)
        await self.until(lambda: self.dispatcher.slots["apns"].waiting == alices,
                         "alice's pushes to queue")
        dropped = self.dispatcher.failed
        self.ring(CALLER, "3002")
        await self.until(lambda: self.dispatcher.slots["apns"].waiting == alices + 1
                         or self.dispatcher.failed > dropped, "bob's push to queue or drop")
        self.clock.advance(5.0)
        await self.apns.wait_for(min(11, max_queued + 1))
        await self.dispatcher.settled()
        return lines

    async def test_a_call_waits_one_turn_not_behind_another_calls_devices(self) -> None:
        await self.ring_alice_then_bob(max_queued=20)
        self.assertEqual([r.token for r in self.apns.received],
                         [apns_token(100), apns_token(101), apns_token(2)]
                         + [apns_token(100 + n) for n in range(2, 10)])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (11, 0))

    async def test_a_full_queue_drops_the_flooding_calls_push_not_the_other(self) -> None:
        lines = await self.ring_alice_then_bob(max_queued=4)
        self.assertEqual([r.token for r in self.apns.received],
                         [apns_token(100), apns_token(101), apns_token(2), apns_token(102),
                          apns_token(103)])
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (5, 6))
        dropped = [line for line in lines if "dropping the call push" in line]
        self.assertEqual(len(dropped), 6)
        self.assertEqual([line for line in dropped if "…0002" in line], [])


# -- graceful stop ------------------------------------------------------------------------------


class GracefulStopTests(PushTestCase):
    async def test_a_stopping_daemon_lets_the_push_in_flight_be_answered(self) -> None:
        await self.start()
        await self.register("alice", "apns", VOIP, apns_token(1))
        self.apns.script(apns_token(1), Delayed(2.0))
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        stopped = self.system.stopService()
        self.clock.advance(1.0)
        self.assertFalse(stopped.called)
        self.clock.advance(1.0)  # the answer arrives within the grace period
        await stopped
        self.assertEqual((self.dispatcher.delivered, self.dispatcher.failed), (1, 0))

    async def test_a_registration_while_the_store_closes_answers_503(self) -> None:
        """Shutting down is a state that passes (a restart, another instance), as a full disk
        is: 503 and try again, not a 500."""
        await self.start()
        lines = self.logged()
        await self.system.store.close()
        response, body = await self.d.request(
            "POST", f"/token/apns/{VOIP}", ALICE,
            body=json.dumps({"token": apns_token(1)}).encode(),
            headers={"Content-Type": "application/json"})
        self.assertEqual(response.code, 503, body)
        self.assertIn(b"try again later", body)
        self.assertIsNone(self.system.store.write_failure)  # no fault to report: it stops
        self.assertFalse(any("answer 503" in line for line in lines), lines)

    async def test_a_stopping_daemon_waits_five_seconds_at_most(self) -> None:
        await self.start()
        lines = self.logged()
        await self.register("alice", "apns", VOIP, apns_token(1))
        self.apns.script(apns_token(1), NO_ANSWER)
        self.ring(CALLER, "3001")
        await self.apns.wait_for(1)
        stopped = self.system.stopService()
        self.clock.advance(4.9)
        self.assertFalse(stopped.called)
        self.clock.advance(0.1)
        await stopped
        self.assertTrue(any("stopping after 5 s with pushes still unanswered" in line
                            for line in lines), lines)
