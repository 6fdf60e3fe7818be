"""The FCM HTTP v1 sender: service-account files, message bodies, Google's error answers, and
real loopback HTTPS against the fake Google (token minting, caching, refresh, retries, timeouts).
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from mxproxy import logs
from mxproxy.push.fcm import (
    FCMAuthError,
    FCMClient,
    FCMResponse,
    FCMTimeout,
    FCMUnavailable,
    ServiceAccount,
    build_message,
    classify_response,
)
from mxproxy.store import mask_token
from mxproxy.testing.fakefcm import (
    HANG,
    INTERNAL,
    INVALID_DATA,
    INVALID_TOKEN,
    SENDER_ID_MISMATCH,
    UNAUTHENTICATED,
    UNAVAILABLE,
    UNREGISTERED,
    FakeFCM,
    google_error,
    listen,
    make_service_account,
    oauth_error,
    quota_exceeded,
)

CALL = {"event": "call", "callId": "42", "from": "+12125550142"}
LEGACY_SERVER_KEY = "AAAAx1yZ2ab:APA91bHPRgkF3JUikC4ENAHEeMrd41Zxv3hVZjC9KtT8OvPVGJ-hQMRKR"


def device(name: str) -> str:
    """A registration token as long as real ones, distinct per name."""
    return f"{name}:APA91b{'x' * 140}"


def scratch_dir(test: SynchronousTestCase) -> str:
    path = test.mktemp()
    os.makedirs(path)
    return path


class ServiceAccountTests(SynchronousTestCase):
    def write(self, content: str | dict[str, Any]) -> str:
        path = os.path.join(scratch_dir(self), "service-account.json")
        with open(path, "w", encoding="utf-8") as file:
            file.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def info(self, **changes: Any) -> dict[str, Any]:
        info, _ = make_service_account("https://oauth2.example", directory=scratch_dir(self))
        info.update(changes)
        return {key: value for key, value in info.items() if value is not None}

    def assertRefused(self, path: str, *fragments: str) -> str:
        with self.assertRaises(ValueError) as caught:
            ServiceAccount.from_file(path)
        for fragment in fragments:
            self.assertIn(fragment, str(caught.exception))
        return str(caught.exception)

    def test_reads_a_firebase_file(self) -> None:
        info, path = make_service_account("https://oauth2.example", "calls-prod",
                                          directory=scratch_dir(self))
        account = ServiceAccount.from_file(path)
        self.assertEqual((account.project_id, account.client_email, account.private_key,
                          account.token_uri, account.private_key_id),
                         ("calls-prod", info["client_email"], info["private_key"],
                          "https://oauth2.example/token", info["private_key_id"]))
        self.assertNotIn("PRIVATE KEY", repr(account))

    def test_legacy_server_key_is_explained_but_not_echoed(self) -> None:
        message = self.assertRefused(LEGACY_SERVER_KEY, "legacy FCM API", "2024",
                                     "path of a Firebase service-account JSON file (HTTP v1)")
        self.assertNotIn(LEGACY_SERVER_KEY[:12], message)

    def test_missing_file_is_never_echoed(self) -> None:
        """The config makes every value absolute, so a pasted server key looks like a path:
        the message names the config entry (the caller's job), never the value."""
        message = self.assertRefused("/etc/mxproxy/AAAA-server-key", "no such file", "2024")
        self.assertNotIn("AAAA-server-key", message)

    def test_directory_cannot_be_read(self) -> None:
        directory = scratch_dir(self)
        self.assertRefused(directory, "cannot read", "Is a directory")

    def test_not_json(self) -> None:
        self.assertRefused(self.write("project_id = demo"), "is not JSON")

    def test_not_an_object(self) -> None:
        self.assertRefused(self.write("[1, 2]"), "is not a JSON object")

    def test_other_credential_type(self) -> None:
        self.assertRefused(self.write(self.info(type="authorized_user")),
                           '"type": "authorized_user", not "service_account"')

    def test_missing_fields_are_listed(self) -> None:
        path = self.write(self.info(project_id=None, private_key=""))
        self.assertRefused(path, "lacks project_id, private_key")

    def test_key_must_be_rsa_pem(self) -> None:
        path = self.write(self.info(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n"))
        self.assertRefused(path, "private_key is not an unencrypted PEM RSA private key")

    def test_token_uri_must_be_https(self) -> None:
        path = self.write(self.info(token_uri="http://oauth2.example/token"))
        self.assertRefused(path, "token_uri must be an https:// URL")


class BuildMessageTests(SynchronousTestCase):
    def test_data_only_high_priority_with_ttl_and_collapse_key(self) -> None:
        self.assertEqual(build_message("tok", CALL, 30, "call-42"), {"message": {
            "token": "tok",
            "data": CALL,
            "android": {"priority": "HIGH", "ttl": "30s", "collapse_key": "call-42"},
        }})

    def test_collapse_key_is_optional(self) -> None:
        message = build_message("tok", {}, 0)["message"]
        self.assertEqual(message["android"], {"priority": "HIGH", "ttl": "0s"})

    def test_data_values_must_be_strings(self) -> None:
        with self.assertRaises(TypeError) as caught:
            build_message("tok", {"callId": 42}, 30)  # type: ignore[dict-item]
        self.assertIn("'callId'", str(caught.exception))

    def test_ttl_is_whole_seconds_up_to_four_weeks(self) -> None:
        build_message("tok", {}, 2419200)
        for bad in (-1, 2419201, 1.5, True):
            self.assertRaises(ValueError, build_message, "tok", {}, bad)


def google(status: int, rpc_status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = list(details)
    return json.dumps({"error": error}).encode()


def fcm_error(code: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}


def bad_request(field: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": f"Invalid value at '{field}'"}]}


class ClassifyTests(SynchronousTestCase):
    """Google's documented answers (firebase.google.com/docs/cloud-messaging/error-codes)."""

    def test_documented_invalid_token_answer(self) -> None:
        body = google(400, "INVALID_ARGUMENT",
                      "The registration token is not a valid FCM registration token",
                      fcm_error("INVALID_ARGUMENT"))
        self.assertEqual(classify_response(400, body), FCMResponse(
            400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration "
            "token", None, True))

    def test_documented_invalid_data_answer_keeps_the_token(self) -> None:
        body = google(400, "INVALID_ARGUMENT",
                      "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                      bad_request("message.data[0].value"))
        response = classify_response(400, body)
        self.assertEqual((response.error_code, response.token_invalid),
                         ("INVALID_ARGUMENT", False))

    def test_field_violation_on_the_token(self) -> None:
        body = google(400, "INVALID_ARGUMENT", "Request contains an invalid argument.",
                      bad_request("message.token"))
        self.assertTrue(classify_response(400, body).token_invalid)

    def test_payload_problems_without_field_keep_the_token(self) -> None:
        for text in ("Android message is too big", "Request contains an invalid argument."):
            body = google(400, "INVALID_ARGUMENT", text, fcm_error("INVALID_ARGUMENT"))
            self.assertFalse(classify_response(400, body).token_invalid, text)

    def test_token_text_needs_the_fcm_error_detail(self) -> None:
        body = google(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM "
                      "registration token")
        self.assertFalse(classify_response(400, body).token_invalid)

    def test_unregistered_and_sender_mismatch(self) -> None:
        for status, rpc, code in ((404, "NOT_FOUND", "UNREGISTERED"),
                                  (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")):
            response = classify_response(status, google(status, rpc, "x", fcm_error(code)))
            self.assertEqual((response.error_code, response.token_invalid), (code, True))

    def test_permission_denied_without_fcm_error_keeps_the_token(self) -> None:
        response = classify_response(403, google(403, "PERMISSION_DENIED", "denied"))
        self.assertEqual((response.error_code, response.token_invalid),
                         ("PERMISSION_DENIED", False))

    def test_retry_after_seconds_or_http_date(self) -> None:
        body = google(429, "RESOURCE_EXHAUSTED", "quota", fcm_error("QUOTA_EXCEEDED"))
        self.assertEqual(classify_response(429, body, "17").retry_after, 17.0)
        at = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT
        self.assertEqual(classify_response(503, body, "Sun, 06 Nov 1994 08:49:37 GMT",
                                           now=at - 90).retry_after, 90.0)
        self.assertIsNone(classify_response(503, body, "soon").retry_after)

    def test_non_json_error(self) -> None:
        self.assertEqual(classify_response(502, b"<html>Bad Gateway</html>"),
                         FCMResponse(502, None, None, None, False))

    def test_success_carries_the_message_name(self) -> None:
        response = classify_response(200, b'{"name": "projects/p/messages/7"}')
        self.assertTrue(response.ok)
        self.assertEqual(response.name, "projects/p/messages/7")


class Google:
    """The fake Google on loopback HTTPS and an FCMClient for one of its service accounts."""

    def __init__(self, test: TestCase, clock: Clock | None = None,
                 register: bool = True, base_url: str | None = None,
                 trusted: bool = True) -> None:
        self.fake = FakeFCM(clock=clock)
        port = listen(self.fake, reactor=reactor)
        test.addCleanup(port.stopListening)
        test.addCleanup(self.fake.disconnect)
        self.info, self.path = make_service_account(self.fake.base_url,
                                                    directory=scratch_dir(test))
        if register:
            self.fake.add_account(self.info)
        self.client = FCMClient(reactor, ServiceAccount.from_file(self.path),
                                base_url=base_url or self.fake.base_url, clock=clock,
                                trust_root=self.fake.trust_root if trusted else None)
        test.addCleanup(self.client.close)

    def send(self, token: str, collapse_key: str | None = None) -> Deferred[FCMResponse]:
        return self.client.send(token, CALL, 30, collapse_key)


class TokenTests(TestCase):
    async def test_minted_once_and_reused(self) -> None:
        google = Google(self)
        names = [(await google.send(device(f"d{n}"))).name for n in range(3)]
        self.assertEqual(names, [f"projects/demo-project/messages/{n}" for n in (1, 2, 3)])
        self.assertEqual(google.fake.mints, 1)
        self.assertEqual(len({arrival.access_token for arrival in google.fake.received}), 1)

    async def test_concurrent_first_sends_share_one_mint(self) -> None:
        google = Google(self)
        responses = await gatherResults([google.send(device(f"d{n}")) for n in range(5)])
        self.assertTrue(all(response.ok for response in responses))
        self.assertEqual(google.fake.mints, 1)

    async def test_refreshed_five_minutes_before_expiry(self) -> None:
        clock = Clock()
        google = Google(self, clock=clock)  # the fake issues tokens valid 3599 s
        await google.send(device("a"))
        clock.advance(3599 - 300 - 1)
        await google.send(device("a"))
        self.assertEqual(google.fake.mints, 1)
        clock.advance(1)
        await google.send(device("a"))
        self.assertEqual(google.fake.mints, 2)
        tokens = [arrival.access_token for arrival in google.fake.received]
        self.assertEqual(tokens[0], tokens[1])
        self.assertNotEqual(tokens[1], tokens[2])

    async def test_refused_account_is_an_auth_error(self) -> None:
        google = Google(self, register=False)
        failure = await self.assertFailure(google.send(device("a")), FCMAuthError)
        self.assertIn("400: Invalid grant: account not found", str(failure))
        self.assertEqual(google.fake.received, [])

    async def test_failed_mint_is_not_remembered(self) -> None:
        google = Google(self)
        google.fake.script_token(oauth_error(500, "internal_failure", "Backend Error"))
        failure = await self.assertFailure(google.send(device("a")), FCMAuthError)
        self.assertIn("answered 500: Backend Error", str(failure))
        self.assertTrue((await google.send(device("a"))).ok)
        self.assertEqual(google.fake.mints, 1)

    async def test_401_renews_the_token_and_retries_once(self) -> None:
        google = Google(self)
        google.fake.script(device("a"), UNAUTHENTICATED)
        self.assertTrue((await google.send(device("a"))).ok)
        self.assertEqual(google.fake.mints, 2)
        first, retry = google.fake.received
        self.assertNotEqual(first.access_token, retry.access_token)
        self.assertEqual(first.message, retry.message)

    async def test_a_second_401_is_returned(self) -> None:
        google = Google(self)
        google.fake.script(device("a"), UNAUTHENTICATED, UNAUTHENTICATED)
        response = await google.send(device("a"))
        self.assertEqual((response.status, response.error_code, response.token_invalid),
                         (401, "UNAUTHENTICATED", False))
        self.assertEqual((google.fake.mints, len(google.fake.received)), (2, 2))

    async def test_third_party_auth_error_is_not_retried(self) -> None:
        google = Google(self)
        google.fake.script(device("a"), google_error(
            401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service",
            "THIRD_PARTY_AUTH_ERROR"))
        response = await google.send(device("a"))
        self.assertEqual((response.status, response.error_code), (401, "THIRD_PARTY_AUTH_ERROR"))
        self.assertEqual((google.fake.mints, len(google.fake.received)), (1, 1))

    async def test_revoked_token_refused_together_is_renewed_once(self) -> None:
        google = Google(self)
        await google.send(device("a"))
        google.fake.revoke_access_tokens()
        responses = await gatherResults([google.send(device(f"d{n}")) for n in range(3)])
        self.assertTrue(all(response.ok for response in responses))
        self.assertEqual(google.fake.mints, 2)


class MessageTests(TestCase):
    async def test_message_shape(self) -> None:
        google = Google(self)
        await google.send(device("a"), collapse_key="call-42")
        await google.send(device("b"))
        first, second = google.fake.received
        self.assertEqual(first.project_id, "demo-project")
        self.assertEqual(first.message, {
            "token": device("a"),
            "data": CALL,
            "android": {"priority": "HIGH", "ttl": "30s", "collapse_key": "call-42"},
        })
        self.assertEqual(second.message["android"], {"priority": "HIGH", "ttl": "30s"})

    async def test_dead_tokens(self) -> None:
        google = Google(self)
        cases = {"unregistered": (UNREGISTERED, 404, "UNREGISTERED"),
                 "mismatch": (SENDER_ID_MISMATCH, 403, "SENDER_ID_MISMATCH"),
                 "invalid": (INVALID_TOKEN, 400, "INVALID_ARGUMENT")}
        for name, (reply, status, code) in cases.items():
            google.fake.script(device(name), reply)
            response = await google.send(device(name))
            self.assertEqual((response.status, response.error_code, response.token_invalid),
                             (status, code, True), name)

    async def test_errors_that_keep_the_token(self) -> None:
        google = Google(self)
        cases = {"data": (INVALID_DATA, 400, "INVALID_ARGUMENT", None),
                 "quota": (quota_exceeded(30), 429, "QUOTA_EXCEEDED", 30.0),
                 "unavailable": (UNAVAILABLE, 503, "UNAVAILABLE", None),
                 "internal": (INTERNAL, 500, "INTERNAL", None)}
        for name, (reply, status, code, retry_after) in cases.items():
            google.fake.script(device(name), reply)
            response = await google.send(device(name))
            self.assertEqual((response.status, response.error_code, response.retry_after,
                              response.token_invalid), (status, code, retry_after, False), name)
            self.assertTrue(response.message, name)

    async def test_scripted_replies_are_used_in_order(self) -> None:
        google = Google(self)
        google.fake.script(device("a"), UNAVAILABLE)
        statuses = [(await google.send(device("a"))).status for _ in range(2)]
        self.assertEqual(statuses, [503, 200])

    async def test_other_project_is_permission_denied_not_a_dead_token(self) -> None:
        google = Google(self)
        other = dict(google.info, project_id="other-project")
        path = os.path.join(scratch_dir(self), "other.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(other, file)
        client = FCMClient(reactor, ServiceAccount.from_file(path), base_url=google.fake.base_url,
                           trust_root=google.fake.trust_root)
        self.addCleanup(client.close)
        response = await client.send(device("a"), CALL, 30)
        self.assertEqual((response.status, response.error_code, response.token_invalid),
                         (403, "PERMISSION_DENIED", False))

    async def test_fake_refuses_a_malformed_message(self) -> None:
        google = Google(self)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = HTTPClient(Agent(reactor, BrowserLikePolicyForHTTPS(google.fake.trust_root),
                                pool=pool))
        access = await google.client.tokens.get()
        url = f"{google.fake.base_url}/v1/projects/demo-project/messages:send"
        body = build_message(device("a"), {}, 30)
        body["message"]["data"] = {"callId": 42}
        headers: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {access}"}
        answer = await http.post(url, json=body, headers=headers)
        response = classify_response(answer.code, await answer.content())
        self.assertEqual((response.status, response.error_code, response.token_invalid),
                         (400, "INVALID_ARGUMENT", False))
        self.assertIn("message.data[0].value", response.message or "")
        self.assertEqual(google.fake.received, [])


class FailureTests(TestCase):
    async def test_timeout(self) -> None:
        clock = Clock()
        google = Google(self, clock=clock)
        google.fake.script(device("slow"), HANG)
        sending = google.send(device("slow"))
        await google.fake.wait_for(1)
        clock.advance(4.9)
        self.assertNoResult(sending)
        clock.advance(0.1)
        failure = await self.assertFailure(sending, FCMTimeout)
        self.assertIn("FCM did not answer within 5 s", str(failure))
        self.assertTrue((await google.send(device("fast"))).ok)

    async def test_untrusted_certificate_is_unavailable(self) -> None:
        google = Google(self, trusted=False)
        await self.assertFailure(google.send(device("a")), FCMUnavailable)
        self.assertEqual(google.fake.mints, 0)

    async def test_connection_refused_is_unavailable(self) -> None:
        gone = FakeFCM()
        await maybeDeferred(listen(gone, reactor=reactor).stopListening)
        url = gone.base_url
        google = Google(self, base_url=url)
        failure = await self.assertFailure(google.send(device("a")), FCMUnavailable)
        self.assertIn(url, str(failure))
        self.assertEqual(google.fake.mints, 1)


class SecretTests(TestCase):
    async def test_secrets_never_reach_the_log(self) -> None:
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.addCleanup(logs.set_debug, False)
        logs.set_debug(True)
        google = Google(self)
        google.fake.script(device("a"), UNAUTHENTICATED, INVALID_TOKEN)
        await google.send(device("a"))
        text = "\n".join(formatEvent(event) + repr(event) for event in events)
        self.assertIn(mask_token(device("a")), text)
        key_body = google.info["private_key"].splitlines()[1]
        secrets = [device("a"), key_body] + [a.access_token for a in google.fake.received]
        for secret in secrets:
            self.assertNotIn(secret, text)

