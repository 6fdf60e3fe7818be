"""The HTTP API end to end: HTTP client → API → pooled sessions → simulator, on loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from mxproxy import __version__
from mxproxy.api.clients import ClientAddresses
from mxproxy.api.mailstream import STALL_TIMEOUT
from mxproxy.csta.client import MXAddress
from mxproxy.options import trusted_proxy
from mxproxy.testing.mxsim import PBX
from mxproxy.testing.mxsim.model import Contact
from tests.support import (
    Daemon,
    RawResponse,
    exchange,
    next_turn,
    open_descriptors,
    settled_descriptors,
)
from tests.test_tls import capture_logs

ALICE = ("alice", "alice-secret")
ALICE_HEADER = b"Authorization: Basic YWxpY2U6YWxpY2Utc2VjcmV0\r\n"
DAY = 86_400
SERVER = f"MXProxy/{__version__}".encode()


def company(clock: Any = None, chunk_size: int = 32768) -> PBX:
    pbx = PBX(sn="TEST1", clock=clock, chunk_size=chunk_size)
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "alice-secret", "3001", first_name="Alice", last_name="Able")
    pbx.add_user("bob", "bob-secret", "3002", first_name="Bob")
    pbx.add_contact(Contact(jid="43884850000099999", first_name="Big", business_phone="4000",
                            home_system="43884850000000077", email="big@example.invalid"))
    return pbx


def add_calls(pbx: PBX, count: int, start: int = 1_700_000_000) -> None:
    for n in range(count):
        pbx.add_call_record("alice", direction="incoming", disconnect=start + n * 60,
                            calling_party=f"+1555{n:07d}", original_called_party="3001")


def loads(body: bytes) -> Any:
    return json.loads(body.decode("utf-8"))


class APITestCase(TestCase):
    async def daemon(self, pbx: PBX | None = None, **kwargs: Any) -> Daemon:
        self.pbx = pbx if pbx is not None else company()
        self.d = await Daemon(self, self.pbx, **kwargs).start()
        return self.d

    async def get(self, path: str, auth: tuple[str, str] | None = ALICE,
                  **kwargs: Any) -> tuple[Any, bytes]:
        return await self.d.request("GET", path, auth, **kwargs)

    async def send(self, method: str, path: str, fields: Any = None, raw: bytes | None = None,
                   auth: tuple[str, str] | None = ALICE,
                   content_type: str = "application/json") -> tuple[Any, bytes]:
        body = raw if raw is not None else json.dumps(fields).encode()
        return await self.d.request(method, path, auth, body=body,
                                    headers={"Content-Type": content_type})

    def assertError(self, result: tuple[Any, bytes], status: int, text: str = "") -> Any:
        response, body = result
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        error = loads(body)["error"]
        self.assertIn(text, error)
        return response


class AuthTests(APITestCase):
    async def test_missing_credentials(self) -> None:
        await self.daemon()
        response = self.assertError(await self.get("/addressbook", auth=None), 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                         [b'Basic realm="mxproxy"'])

    async def test_malformed_credentials(self) -> None:
        await self.daemon()
        for header in ("Basic !!!", "Bearer abc", "Basic " + "bm9jb2xvbg=="):  # "nocolon"
            self.assertError(await self.get("/addressbook", auth=None,
                                            headers={"Authorization": header}), 401)

    async def test_wrong_password_is_403(self) -> None:
        await self.daemon()
        self.assertError(await self.get("/addressbook", auth=("alice", "nope")), 403,
                         "refused the login")

    async def test_wrong_password_after_a_cached_success_is_403(self) -> None:
        await self.daemon()
        response, _ = await self.get("/addressbook")
        self.assertEqual(response.code, 200)
        self.assertError(await self.get("/addressbook", auth=("alice", "nope")), 403)
        response, _ = await self.get("/addressbook")
        self.assertEqual(response.code, 200)

    async def test_mx_unreachable_is_503(self) -> None:
        await self.daemon(user_address=MXAddress("127.0.0.1", await _closed_port(), tls=False))
        self.assertError(await self.get("/voicemail"), 503, "unavailable")

    async def assertUnavailableWithoutItsAddress(self, address: MXAddress, log: str) -> None:
        """The client learns that the MX is down, not where it is; the log keeps both."""
        lines = capture_logs(self, "mxproxy.api")
        await self.daemon(user_address=address)
        response, body = await self.get("/voicemail")
        self.assertEqual((response.code, loads(body)), (503, {"error": "the MX is unavailable"}))
        for secret in (address.host, str(address.port)):
            self.assertNotIn(secret.encode(), body)
        self.assertIn(f"503 GET /mx/dev/voicemail: the MX is unavailable: {log}", lines)

    async def test_an_mx_refusing_connections_is_503_without_its_address(self) -> None:
        port = await _closed_port()
        await self.assertUnavailableWithoutItsAddress(
            MXAddress("127.0.0.1", port, tls=False),
            f"cannot connect to 127.0.0.1:{port}: connection refused")

    async def test_an_mx_name_that_does_not_resolve_is_503_without_it(self) -> None:
        await self.assertUnavailableWithoutItsAddress(
            MXAddress("mx.invalid", 7778), "cannot connect to mx.invalid:7778: the name does "
                                           "not resolve")

    async def test_mx_timeout_is_504(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        self.pbx.faults.no_reply = frozenset({"loginRequest"})
        pending = Deferred.fromCoroutine(self.get("/calllog"))
        await self.pbx.wait_for("loginRequest")
        clock.advance(7)
        self.assertError(await pending, 504)

    async def test_throttle_after_five_failures_per_login(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        for _ in range(5):
            self.assertError(await self.get("/addressbook", auth=("alice", "nope")), 403)
        response = self.assertError(await self.get("/addressbook"), 429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"60"])
        self.assertEqual(self.pbx.failed_logins["alice"], 5, "the MX saw no sixth attempt")
        clock.advance(60)
        response, _ = await self.get("/addressbook")
        self.assertEqual(response.code, 200)

    async def test_blocks_grow(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        for expected in (b"60", b"120"):
            for _ in range(5):
                self.assertError(await self.get("/addressbook", auth=("alice", "nope")), 403)
            response = self.assertError(await self.get("/addressbook"), 429)
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [expected])
            clock.advance(int(expected))

    async def test_throttle_per_client_address_across_logins(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        for n in range(50):
            self.assertError(await self.get("/addressbook", auth=(f"guess{n}", "x")), 403)
        response = self.assertError(await self.get("/addressbook", auth=("bob", "bob-secret")),
                                    429)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"60"])

    async def test_common_headers(self) -> None:
        await self.daemon()
        for path, auth in (("/addressbook", ALICE), ("/addressbook", None), ("/nowhere", ALICE)):
            response, _ = await self.get(path, auth=auth)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders(b"server"), [f"MXProxy/{__version__}".encode()])
            self.assertEqual(headers.getRawHeaders(b"x-api-version"), [b"1.0"])
            self.assertEqual(headers.getRawHeaders(b"x-service-version"), [__version__.encode()])

    async def test_access_log_has_no_credentials(self) -> None:
        await self.daemon()
        path = self.mktemp()
        self.d.site.logPath = path
        self.d.site.startFactory()
        self.addCleanup(self.d.site.stopFactory)
        await self.get("/addressbook")
        self.d.site._logFile.flush()
        with open(path, "rb") as log:
            text = log.read()
        self.assertIn(b"GET /mx/dev/addressbook", text)
        self.assertNotIn(b"Basic", text)
        self.assertNotIn(b"alice-secret", text)
        self.assertNotIn(b"YWxpY2U6YWxpY2Utc2VjcmV0", text)  # base64 of alice:alice-secret


class RoutingErrorTests(APITestCase):
    async def test_unknown_mx_route_method_body(self) -> None:
        await self.daemon()
        self.assertError(await self.get("/addressbook", base=self.d.base.replace("/dev", "/x")),
                         404, "unknown MX")
        self.assertError(await self.get("/nowhere"), 404)
        response = self.assertError(await self.send("PUT", "/call", {}), 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertError(await self.send("POST", "/call", raw=b"x" * (64 * 1024 + 1)), 413)
        self.assertEqual((await self.get("/addressbook"))[0].code, 200)  # cached login now
        self.assertError(await self.send("GET", "/addressbook", raw=b"x" * (64 * 1024 + 1)),
                         413)  # the cached-login fast path refuses it too
        self.assertError(await self.send("POST", "/call", raw=b'{"from": '), 400, "malformed JSON")
        self.assertError(await self.send("POST", "/call", raw=b"[1, 2]"), 400, "object")

    async def test_token_registration_is_reserved(self) -> None:
        await self.daemon()
        self.assertError(await self.send("POST", "/token/apns/com.example", {"token": "x"},
                                         auth=None), 401)
        self.assertError(await self.send("POST", "/token/apns/com.example", {"token": "x"}),
                         501)


class AddressBookTests(APITestCase):
    async def test_contacts_with_jids_as_strings_and_one_login_for_many_requests(self) -> None:
        await self.daemon()
        for _ in range(5):
            response, body = await self.get("/addressbook")
            self.assertEqual(response.code, 200)
        book = loads(body)["addressbook"]
        self.assertEqual(len(book), 3)
        big = book["43884850000099999"]
        self.assertEqual(big, {"firstName": "Big", "lastName": "", "ext": "4000",
                               "email": "big@example.invalid", "homeSystem": "43884850000000077"})
        self.assertIsInstance(big["homeSystem"], str)
        self.assertEqual(self.pbx.logins["alice"], 1)


class CallLogTests(APITestCase):
    async def call_log(self, query: str = "") -> list[dict[str, Any]]:
        response, body = await self.get("/calllog" + query)
        self.assertEqual(response.code, 200, body)
        entries: list[dict[str, Any]] = loads(body)["callog"]
        return entries

    async def test_lengths_around_the_block_size(self) -> None:
        await self.daemon()
        total = 0
        for count in (0, 20, 1, 1, 500 - 22):  # 0, 20, 21, 22, 500 entries
            add_calls(self.pbx, count, start=1_700_000_000 + total * 60)
            total += count
            entries = await self.call_log()
            self.assertEqual(len(entries), total)
            ids = [entry["recordId"] for entry in entries]
            self.assertEqual(ids, sorted(ids))
        self.assertEqual(self.pbx.logins["alice"], 1)

    async def test_fields_of_an_entry(self) -> None:
        await self.daemon()
        add_calls(self.pbx, 1)
        [entry] = await self.call_log()
        self.assertEqual(entry["direction"], "incoming")
        self.assertEqual(entry["callingPartyNo"], "+15550000000")
        self.assertEqual(entry["disconnect"], 1_700_000_000)
        self.assertNotIn("missed", entry)

    async def test_timestamp_in_both_formats(self) -> None:
        await self.daemon()
        add_calls(self.pbx, 10, start=1_700_000_000)  # one per minute
        since = 1_700_000_000 + 5 * 60
        unix = await self.call_log(f"?timestamp={since}")
        rfc = await self.call_log("?timestamp=2023-11-14T22:18:20Z")
        self.assertEqual(len(unix), 5)
        self.assertEqual(unix, rfc)
        offset = await self.call_log("?timestamp=2023-11-14T23:18:20%2B01:00")
        self.assertEqual(offset, unix)

    async def test_client_leaving_mid_log_does_not_leak_into_the_next_request(self) -> None:
        """The MX's call-log blocks carry no request id: blocks still owed to a request whose
        client went away would answer the user's next request. That session is logged out."""
        clock = Clock()
        await self.daemon(company(clock=clock))
        add_calls(self.pbx, 10, start=1_700_000_000)
        self.assertEqual(len(await self.call_log()), 10)
        self.pbx.faults.reply_delay = 1.0  # the blocks wait for the clock
        asked, logout = self.pbx.wait_for("iq:calllog"), self.pbx.wait_for("logout")
        client = await _raw_get(self.d.base + "/calllog", ALICE)
        await asked
        client.transport.abortConnection()
        await client.closed
        self.pbx.faults.reply_delay = 0.0
        asked = self.pbx.wait_for("iq:calllog")
        later = Deferred.fromCoroutine(self.call_log("?timestamp=1700000300"))
        await asked
        clock.advance(1.0)  # the abandoned request's blocks go out
        self.assertEqual(len(await later), 5)
        self.assertTrue(logout.called)
        self.assertEqual(self.pbx.logins["alice"], 2)

    async def test_bad_timestamps(self) -> None:
        await self.daemon()
        for bad in ("yesterday", "2023-11-14T22:18:20", "-5", "1e9", "%C2%B2",
                    "20231114T221820Z", "2023-11-14"):
            self.assertError(await self.get(f"/calllog?timestamp={bad}"), 400, "timestamp")


class CallTests(APITestCase):
    async def test_json_call_sets_remote_mode_then_calls(self) -> None:
        await self.daemon()
        response, body = await self.send("POST", "/call", {"from": "+15555550100", "to": "3002",
                                                           "ringDelay": 2, "vmDelay": 28})
        self.assertEqual(response.code, 200, body)
        result = loads(body)
        self.assertEqual((result["called"], result["deviceId"]), ("3002", "3001"))
        self.assertIsInstance(result["callId"], int)
        [mode] = [c.element for c in self.pbx.received if c.name == "iq:mode"]
        self.assertEqual((mode.get("mode"), mode.get("ringdelay"), mode.get("vmdelay")),
                         ("remote", "2", "28"))
        self.assertEqual(mode.findtext("address"), "+15555550100")

    async def test_form_call_with_defaults(self) -> None:
        await self.daemon()
        response, body = await self.send("POST", "/call", raw=b"from=%2B15555550100&to=3002",
                                         content_type="application/x-www-form-urlencoded")
        self.assertEqual(response.code, 200, body)
        [mode] = [c.element for c in self.pbx.received if c.name == "iq:mode"]
        self.assertEqual((mode.get("ringdelay"), mode.get("vmdelay")), ("1", "30"))

    async def test_invalid_fields(self) -> None:
        await self.daemon()
        for fields, text in (({"to": "3002"}, '"from"'), ({"from": "1"}, '"to"'),
                             ({"from": "1", "to": "2", "ringDelay": -1}, "ringDelay"),
                             ({"from": "1", "to": "2", "vmDelay": 301}, "vmDelay"),
                             ({"from": "1", "to": "2", "vmDelay": True}, "vmDelay"),
                             ({"from": "1", "to": "2", "ringDelay": "\u00b2"}, "ringDelay"),
                             ({"from": 5, "to": "2"}, '"from"')):
            self.assertError(await self.send("POST", "/call", fields), 400, text)
        self.assertEqual(self.pbx.logins["alice"], 0, "rejected before touching the MX")

    async def test_mx_refusal_is_400_with_its_text(self) -> None:
        await self.daemon()
        self.assertError(await self.send("POST", "/call", {"from": "1", "to": "nowhere"}), 400,
                         "refused the command")


class VoicemailTests(APITestCase):
    async def test_list(self) -> None:
        await self.daemon()
        mail = self.pbx.add_voicemail("alice", b"RIFF", from_number="3044", from_name="Other",
                                      duration=7, received=1_502_210_275)
        response, body = await self.get("/voicemail")
        self.assertEqual(response.code, 200)
        self.assertEqual(loads(body)["voicemails"], [{
            "id": str(mail.mail_id), "from": "3044", "fromName": "Other", "to": "3001",
            "ownerType": "user", "received": 1_502_210_275, "duration": 7, "read": False}])

    async def download(self, content: bytes, file_format: str = "wav") -> Any:
        mail = self.pbx.add_voicemail("alice", content, file_format=file_format)
        response, body = await self.get(f"/voicemail/{mail.mail_id}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, content)
        return response

    async def test_download_sizes(self) -> None:
        await self.daemon(company(chunk_size=1000))
        for size in (0, 999, 1000, 100 * 1000):  # 0 bytes, one chunk, 100 chunks
            response = await self.download(os.urandom(size))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"audio/wave"])
        [disposition] = response.headers.getRawHeaders(b"content-disposition")
        self.assertRegex(disposition.decode(), r'^attachment; filename="m\d{4}\.wav"$')
        requests = [c for c in self.pbx.received if c.name == "MailReceiveIncoming"]
        self.assertEqual(len(requests), 1 + 1 + 1 + 100)
        self.assertEqual(self.pbx.logins["alice"], 1)
        self.assertEqual(len([c for c in self.pbx.received if c.name == "MonitorStart"]), 1)

    async def test_head_of_a_voicemail_answers_headers_without_the_download(self) -> None:
        await self.daemon(company(chunk_size=1000))

        def sent(name: str) -> int:
            return len([c for c in self.pbx.received if c.name == name])

        for size, cancels in ((100_000, 1), (500, 0)):  # 100 pieces; one, the whole file
            mail = self.pbx.add_voicemail("alice", os.urandom(size))
            asked, cancelled = sent("MailReceiveIncoming"), sent("MailCancelReceive")
            response, body = await self.d.request("HEAD", f"/voicemail/{mail.mail_id}", ALICE)
            self.assertEqual((response.code, body), (200, b""))
            self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"audio/wave"])
            self.assertEqual(response.headers.getRawHeaders(b"content-disposition"),
                             [f'attachment; filename="m{mail.mail_id:04d}.wav"'.encode()])
            self.assertEqual(sent("MailReceiveIncoming"), asked + 1, "only the first piece")
            self.assertEqual(sent("MailCancelReceive"), cancelled + cancels)
            response, body = await self.get(f"/voicemail/{mail.mail_id}")
            self.assertEqual((response.code, body), (200, mail.content))
        self.assertEqual(self.pbx.logins["alice"], 1, "the session stayed usable")

    async def test_unknown_format_is_octet_stream(self) -> None:
        await self.daemon()
        response = await self.download(b"data", file_format="xyz")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/octet-stream"])

    async def test_unknown_id_is_404(self) -> None:
        await self.daemon()
        self.assertError(await self.get("/voicemail/4242"), 404, "no voicemail")

    async def test_client_leaving_cancels_and_the_session_stays_usable(self) -> None:
        clock = Clock()
        pbx = company(clock=clock, chunk_size=1000)
        await self.daemon(pbx)
        mail = pbx.add_voicemail("alice", os.urandom(50_000))
        first = pbx.wait_for("MailReceiveIncoming")
        client = await _raw_get(self.d.base + f"/voicemail/{mail.mail_id}", ALICE)
        await first
        pbx.faults.reply_delay = 1.0  # hold the second chunk while the client goes away
        second = pbx.wait_for("MailReceiveIncoming")
        await second
        await client.headers_received
        client.transport.abortConnection()
        await client.closed
        cancel = pbx.wait_for("MailCancelReceive")
        pbx.faults.reply_delay = 0.0
        clock.advance(1.0)
        await cancel
        while pbx.sessions_of("alice")[0].download is not None:
            await next_turn()
        response, body = await self.get("/voicemail")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(pbx.logins["alice"], 1, "the same session served the next request")
        self.assertEqual(len([c for c in pbx.received if c.name == "MailReceiveIncoming"]), 2)

    async def test_a_client_that_stops_reading_is_cut_and_frees_the_session(self) -> None:
        """Stalled for STALL_TIMEOUT, the download is cancelled on the MX and the user's other
        requests, which wait for the session, go on; before, they waited as long as the client
        kept its connection open."""
        clock = Clock()
        pbx = company()  # chunks of 32 KiB
        await self.daemon(pbx, clock=clock)
        mail = pbx.add_voicemail("alice", os.urandom(400 * pbx.chunk_size))  # 12.5 MiB
        client = await _reader_that_stops(self.d.http_port,
                                          f"/mx/dev/voicemail/{mail.mail_id}".encode())
        self.addCleanup(client.transport.abortConnection)
        listing = Deferred.fromCoroutine(self.get("/voicemail"))  # waits for the session
        while not [call for call in clock.getDelayedCalls()
                   if getattr(call.func, "__name__", "") == "_stalled"]:
            self.assertNoResult(listing)
            await next_turn()
        # Whenever the stall timer runs, the stream is paused with no chunk in flight (it only
        # pauses on its own write), so the clock moves no MX reply timeout.
        cancel = pbx.wait_for("MailCancelReceive")
        clock.advance(STALL_TIMEOUT)
        await cancel
        response, body = await listing
        self.assertEqual(response.code, 200, body)
        self.assertEqual(pbx.logins["alice"], 1)
        client.transport.resumeProducing()  # reading again, it finds its connection cut
        await client.closed
        self.assertLess(len(client.received), len(mail.content))

    test_a_client_that_stops_reading_is_cut_and_frees_the_session.timeout = 30  # type: ignore

    async def test_patch_note_and_read(self) -> None:
        await self.daemon()
        mail = self.pbx.add_voicemail("alice", b"x")
        response, _ = await self.send("PATCH", f"/voicemail/{mail.mail_id}",
                                      {"note": "call back", "readed": True})
        self.assertEqual(response.code, 204)
        self.assertEqual((mail.note, mail.read), ("call back", True))
        response, _ = await self.send("PATCH", f"/voicemail/{mail.mail_id}", {"read": False})
        self.assertEqual(response.code, 204)
        self.assertFalse(mail.read)
        self.assertError(await self.send("PATCH", f"/voicemail/{mail.mail_id}", {}), 400)
        self.assertError(await self.send("PATCH", f"/voicemail/{mail.mail_id}",
                                         {"readed": "yes"}), 400)
        self.assertError(await self.send("PATCH", "/voicemail/4242", {"note": "x"}), 404)

    async def test_delete_even_unknown(self) -> None:
        await self.daemon()
        mail = self.pbx.add_voicemail("alice", b"x")
        for mail_id in (mail.mail_id, 4242):
            response, _ = await self.send("DELETE", f"/voicemail/{mail_id}", raw=b"")
            self.assertEqual(response.code, 204)
        self.assertEqual(self.pbx.user("alice").voicemails, {})


class SessionTests(APITestCase):
    async def test_idle_session_logs_out_and_the_next_request_logs_in(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock, idle_timeout=60)
        await self.get("/voicemail")
        self.assertEqual(len(self.d.pool), 1)
        logout = self.pbx.wait_for("logout")
        clock.advance(59)
        self.assertEqual(len(self.d.pool), 1)
        clock.advance(1)
        await logout
        self.assertEqual(len(self.d.pool), 0)
        response, _ = await self.get("/voicemail")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.pbx.logins["alice"], 2)

    async def test_concurrent_first_requests_share_one_login(self) -> None:
        await self.daemon()
        results = await DeferredList([Deferred.fromCoroutine(self.get("/voicemail"))
                                      for _ in range(5)])
        self.assertEqual([response.code for _, (response, _body) in results], [200] * 5)
        self.assertEqual(self.pbx.logins["alice"], 1)

    async def test_stopping_logs_sessions_out(self) -> None:
        await self.daemon()
        await self.get("/voicemail")
        logout = self.pbx.wait_for("logout")
        self.d.pool.startService()
        self.d.pool.stopService()
        await logout
        self.assertEqual(len(self.d.pool), 0)

    async def test_dropped_session_is_replaced_transparently(self) -> None:
        await self.daemon()
        await self.get("/voicemail")
        [session] = self.pbx.sessions_of("alice")
        closed = self.d.pool.logged_in(*ALICE).protocol.when_closed()
        session.drop()
        await closed
        response, body = await self.get("/voicemail")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.pbx.logins["alice"], 2)


class HostileInputTests(APITestCase):
    """Each input of the hardening list gets a 4xx in JSON with the API's headers, reaches no
    MX when it cannot make a command, and logs nothing above info (no traceback)."""

    async def daemon(self, pbx: PBX | None = None, **kwargs: Any) -> Daemon:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return await super().daemon(pbx, **kwargs)

    def assertQuietLog(self) -> None:
        alarming = [event for event in self.events if event.get("log_failure") is not None
                    or event.get("log_level") in (LogLevel.warn, LogLevel.error,
                                                  LogLevel.critical)]
        self.assertEqual(alarming, [])

    async def raw(self, request: bytes) -> RawResponse:
        return await exchange(self.d.http_port, request)

    async def raw_get(self, target: bytes, method: bytes = b"GET",
                      headers: bytes = b"Host: x\r\n") -> RawResponse:
        return await self.raw(method + b" " + target + b" HTTP/1.1\r\n" + headers + ALICE_HEADER
                              + b"Connection: close\r\n\r\n")

    def assertRawError(self, response: RawResponse, status: int, text: str = "") -> None:
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(response.header(b"server"), SERVER)
        self.assertIn(text, loads(response.body)["error"])

    async def test_unprintable_from_to_and_note_are_400_naming_the_field(self) -> None:
        await self.daemon()
        mail = self.pbx.add_voicemail("alice", b"x")
        for body, name in ((b'{"from": "1\\u0000", "to": "2"}', "from"),
                           (b'{"from": "1", "to": "2\\u007f"}', "to"),
                           (b'{"from": "1\\u0085", "to": "2"}', "from"),
                           (b'{"from": "1", "to": "\\ud800"}', "to"),
                           (b'{"from": "\\udfff1", "to": "2"}', "from"),
                           (b'{"from": "1", "to": "2\\t3"}', "to")):
            self.assertError(await self.send("POST", "/call", raw=body), 400, f'"{name}"')
        self.assertError(await self.send("POST", "/call", raw=b"from=1%00&to=2",
                                         content_type="application/x-www-form-urlencoded"),
                         400, '"from"')
        for note in (b'"a\\u0001b"', b'"\\ud800"', b'"\\u007f"', b'"\\uffff"'):
            self.assertError(await self.send("PATCH", f"/voicemail/{mail.mail_id}",
                                             raw=b'{"note": ' + note + b"}"), 400, '"note"')
        self.assertEqual(self.pbx.logins["alice"], 0, "refused before touching the MX")
        response, _ = await self.send("PATCH", f"/voicemail/{mail.mail_id}",
                                      {"note": "call back\r\nafter\t5"})
        self.assertEqual(response.code, 204)
        self.assertEqual(mail.note, "call back\r\nafter\t5")
        self.assertQuietLog()

    async def test_voicemail_ids_no_mx_has_are_404_without_a_word_to_the_mx(self) -> None:
        await self.daemon()
        for mail_id in ("%00", "abc", "1%0A", "-1", "1" * 21, "%C3%A9", "1.5", "%20"):
            for method in ("GET", "HEAD", "DELETE"):
                response, body = await self.d.request(method, f"/voicemail/{mail_id}", ALICE)
                self.assertEqual(response.code, 404, (method, mail_id, body))
                if method != "HEAD":
                    self.assertIn("no voicemail", loads(body)["error"])
            self.assertError(await self.send("PATCH", f"/voicemail/{mail_id}", {"note": "x"}),
                             404, "no voicemail")
        self.assertEqual(self.pbx.logins["alice"], 0)
        self.assertQuietLog()

    async def test_huge_digit_strings_are_400(self) -> None:
        await self.daemon()
        for fields, name in (({"from": "1", "to": "2", "ringDelay": "9" * 5000}, "ringDelay"),
                             ({"from": "1", "to": "2", "vmDelay": "0" * 5000}, "vmDelay"),
                             ({"from": "1", "to": "2", "ringDelay": "0" * 9 + "5"},
                              "ringDelay")):
            self.assertError(await self.send("POST", "/call", fields), 400, name)
        self.assertError(await self.send("POST", "/call",
                                         raw=b'{"from": "1", "ringDelay": ' + b"9" * 5000 + b"}"),
                         400, "malformed JSON")
        self.assertError(await self.get("/calllog?timestamp=" + "9" * 5000), 400, "timestamp")
        self.assertEqual(self.pbx.logins["alice"], 0)
        self.assertQuietLog()

    async def test_deeply_nested_json_is_400(self) -> None:
        await self.daemon()
        for body in (b"[" * 32_000, b'{"from": ' + b"[" * 32_000, b'{"a": ' + b"{" * 32_000):
            self.assertError(await self.send("POST", "/call", raw=body), 400, "malformed JSON")
        self.assertQuietLog()

    async def test_empty_segments_and_encoded_slashes_are_a_json_404(self) -> None:
        await self.daemon()
        for target in (b"/mx/dev//addressbook", b"//mx/dev/addressbook", b"/mx/dev/addressbook/",
                       b"/mx//dev/calllog", b"/mx/dev/voicemail//1", b"/mx%2F/dev/calllog",
                       b"/%2Fmx/dev/calllog", b"/mx/dev%2Fcalllog"):
            self.assertRawError(await self.raw_get(target), 404, "not found")
        self.assertQuietLog()

    async def test_a_url_or_host_that_is_not_utf8_is_400(self) -> None:
        await self.daemon()
        for target, host in ((b"/mx/dev/voicemail/%FF", b"x"), (b"/mx/%C3/addressbook", b"x"),
                             (b"/mx/dev/calllog", b"\xff")):
            self.assertRawError(await self.raw_get(target, headers=b"Host: " + host + b"\r\n"),
                                400, "not UTF-8")
        self.assertQuietLog()

    async def test_options_asterisk(self) -> None:
        await self.daemon()
        response = await self.raw_get(b"*", b"OPTIONS")
        self.assertEqual((response.status, response.body), (204, b""))
        self.assertEqual(response.header(b"allow"), b"DELETE, GET, HEAD, PATCH, POST")
        self.assertEqual(response.header(b"server"), SERVER)
        response = await self.raw_get(b"*", b"GET")
        self.assertRawError(response, 405, "OPTIONS")
        self.assertEqual(response.header(b"allow"), b"OPTIONS")
        self.assertQuietLog()

    async def test_absolute_form_target_is_served_as_its_path(self) -> None:
        await self.daemon()
        add_calls(self.pbx, 3)
        response = await self.raw_get(b"http://mxproxy.example/mx/dev/addressbook")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(len(loads(response.body)["addressbook"]), 3)
        response = await self.raw_get(b"HTTPS://user@mxproxy.example:8443/mx/dev/calllog?"
                                      b"timestamp=1700000060")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(len(loads(response.body)["callog"]), 2)
        for target in (b"ftp://mxproxy.example/mx/dev/addressbook", b"http:///mx/dev/calllog",
                       b"http://[::1/mx/dev/addressbook", b"mx/dev/addressbook"):
            self.assertRawError(await self.raw_get(target), 404, "not found")
        self.assertQuietLog()

    async def test_requests_the_channel_refuses_are_answered_in_json(self) -> None:
        await self.daemon()
        head = b"Host: x\r\n" + ALICE_HEADER
        for request, status in (
                (b"GET /mx/dev/addressbook HTTP/1.1 x\r\n\r\n", 400),
                (b"GET /mx/dev/addressbook HTTP/2.0\r\n\r\n", 400),
                (b"GET /mx/dev/addressbook HTTP/1.1\r\nno colon\r\n\r\n", 400),
                (b"POST /mx/dev/call HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
                (b"POST /mx/dev/call HTTP/1.1\r\n" + head
                 + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
                (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", 414),
                (b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", 431),
                (b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 501 + b"\r\n", 431),
                (b"GET / HTTP/1.1\r\n" + (b"X-Big: " + b"b" * 1000 + b"\r\n") * 17
                 + b"\r\n", 431)):
            response = await self.raw(request)
            self.assertRawError(response, status)
            self.assertEqual(response.header(b"connection"), b"close")
        self.assertQuietLog()

async def _closed_port() -> int:
    port = reactor.listenTCP(0, ClientFactory(), interface="127.0.0.1")
    number: int = port.getHost().port
    await port.stopListening()
    return number


class _RawClient(Protocol):
    """Sends one GET and reports when the response headers arrived and the socket closed."""

    def __init__(self, request: bytes) -> None:
        from twisted.internet.defer import Deferred

        self._request = request
        self.received = b""
        self.headers_received: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.headers_received.called:
            self.headers_received.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)


async def _reader_that_stops(port: int, path: bytes) -> _RawClient:
    """A GET with ALICE's credentials from a client that reads nothing of the answer, with a
    small receive buffer so that the proxy's writes back up after a few megabytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))  # loopback: completes at once, before any accept
    client = _RawClient(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + ALICE_HEADER + b"\r\n")
    factory = Factory.forProtocol(lambda: client)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
    sock.close()  # the reactor has its own descriptor
    assert client.transport is not None
    client.transport.pauseProducing()  # never read
    return client


async def _raw_get(url: str, auth: tuple[str, str]) -> _RawClient:
    import base64
    from urllib.parse import urlsplit

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    parts = urlsplit(url)
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    request = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Authorization: Basic {token}\r\n\r\n").encode()
    client = _RawClient(request)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname or "", parts.port or 80)
    await connectProtocol(endpoint, client)
    return client


class DescriptorTests(APITestCase):
    """Every failure while a user session opens closes its MX connection (issue 10, point 3):
    before, each login with a control character left one open, and ~750 requests used up
    1,024 descriptors. The test process holds both ends of every MX connection."""

    async def test_refused_credentials_open_no_mx_connection(self) -> None:
        await self.daemon()
        before = open_descriptors()
        for n in range(200):
            auth = (("a\x00b", "x"), ("alice", "pw\x01"), ("bob ", "bob-secret"),
                    ("a" * 300, "x"))[n % 4]
            response, _ = await self.get("/calllog", auth=auth)
            self.assertEqual(response.code, 401)
        self.assertEqual(await settled_descriptors(before), before)
        self.assertEqual(len(self.pbx.sessions), 1, "only the server link")

    async def test_refused_logins_close_their_connections(self) -> None:
        await self.daemon()
        before = open_descriptors()
        for n in range(40):  # distinct logins: under the client address's throttle budget
            self.assertError(await self.get("/calllog", auth=(f"guess{n}", "x")), 403)
        self.assertEqual(await settled_descriptors(before), before)

    async def test_a_login_left_unanswered_closes_its_connection(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        self.pbx.faults.no_reply = frozenset({"loginRequest"})
        before = open_descriptors()
        for _ in range(20):
            pending = Deferred.fromCoroutine(self.get("/calllog"))
            await self.pbx.wait_for("loginRequest")
            clock.advance(7)
            self.assertError(await pending, 504)
        self.assertEqual(await settled_descriptors(before), before)

    async def test_a_link_dropped_mid_login_is_closed(self) -> None:
        await self.daemon()
        self.pbx.faults.no_reply = frozenset({"loginRequest"})
        before = open_descriptors()
        for _ in range(20):
            pending = Deferred.fromCoroutine(self.get("/calllog"))
            (await self.pbx.wait_for("loginRequest")).session.drop()
            self.assertError(await pending, 503)
        self.assertEqual(await settled_descriptors(before), before)



class CredentialTests(APITestCase):
    """Credentials no MX user can have are refused before any MX connection (issue 10,
    point 3): they used to reach lxml (500, and a leaked link) or to make new logins."""

    async def test_unusable_credentials_are_401_without_an_mx_connection(self) -> None:
        await self.daemon()
        cases = [
            (("a\x00b", "x"), "the login contains a control character"),
            (("alice", "pw\x01"), "the password contains a control character"),
            (("alice\t", "alice-secret"), "the login contains a control character"),
            (("alice", "alice-secret\r\n"), "the password contains a control character"),
            (("al\x7fice", "x"), "the login contains a control character"),
            (("al\x85ice", "x"), "the login contains a control character"),
            (("alice", "x\uffff"), "the password contains a control character"),
            (("bob ", "bob-secret"), "the login starts or ends with white space"),
            ((" bob", "bob-secret"), "the login starts or ends with white space"),
            (("bob\u00a0", "bob-secret"), "the login starts or ends with white space"),
            (("a" * 257, "x"), "the login is longer than 256 characters"),
            (("alice", "x" * 1025), "the password is longer than 1024 characters"),
        ]
        for auth, text in cases:
            response, body = await self.get("/calllog", auth=auth)
            self.assertError((response, body), 401, text)
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Basic realm="mxproxy"'])
            self.assertNotIn(auth[1].encode(), body)
        self.assertEqual(len(self.pbx.sessions), 1, "only the server link")
        self.assertEqual(self.d.pool.logins, 0)

    async def test_credentials_that_are_not_utf8(self) -> None:
        await self.daemon()
        for raw in (b"al\xffice:x", b"alice:\xed\xa0\x80"):  # the second: a lone surrogate
            header = "Basic " + base64.b64encode(raw).decode()
            self.assertError(await self.get("/calllog", auth=None,
                                            headers={"Authorization": header}),
                             401, "not UTF-8")
        self.assertEqual(len(self.pbx.sessions), 1)

    async def test_a_password_may_have_spaces_anywhere(self) -> None:
        pbx = company()
        pbx.add_user("dave", " two words ", "3004")
        await self.daemon(pbx)
        response, body = await self.get("/calllog", auth=("dave", " two words "))
        self.assertEqual(response.code, 200, body)

    async def test_refusals_spend_no_throttle_budget(self) -> None:
        """The answer does not depend on the password, so it tells a guesser nothing; and
        refusing is cheap, so a flood of them leaves no records behind."""
        await self.daemon()
        for n in range(60):  # more than the client address's budget
            self.assertError(await self.get("/calllog", auth=(f"guess{n}\x00", "x")), 401)
        self.assertError(await self.get("/calllog", auth=("bob ", "x")), 401)
        response, body = await self.get("/calllog", auth=("bob", "bob-secret"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(self.d.api.auth.throttle._records, {})

    async def test_refusals_are_logged_once_a_minute(self) -> None:
        clock = Clock()
        await self.daemon(clock=clock)
        lines = capture_logs(self, "mxproxy.api.auth")
        for _ in range(10):
            await self.get("/calllog", auth=("a\x00b", "secret\x00"))
        self.assertEqual(lines, ["refused credentials no MX user can have: the login contains "
                                 "a control character"])
        clock.advance(60)
        await self.get("/calllog", auth=("bob ", "x"))
        self.assertEqual(lines[1:], ["refused unusable credentials: 9 more suppressed in 60 s",
                                     "refused credentials no MX user can have: the login "
                                     "starts or ends with white space"])
        self.assertNotIn("secret", "".join(lines))


class AddressThrottleTests(APITestCase):
    """One client's failures do not lock out other logins (issue 10, point 4)."""

    async def guess(self, count: int, headers: dict[str, str] | None = None) -> None:
        for n in range(count):
            self.assertError(await self.get("/calllog", auth=(f"guess{n}", "x"),
                                            headers=headers), 403)

    async def test_one_address_failing_at_one_login_keeps_its_other_logins(self) -> None:
        await self.daemon()
        for _ in range(5):
            self.assertError(await self.get("/calllog", auth=("alice", "nope")), 403)
        self.assertError(await self.get("/calllog"), 429)
        response, body = await self.get("/calllog", auth=("bob", "bob-secret"))
        self.assertEqual(response.code, 200, body)

    async def test_a_cached_password_passes_an_address_block(self) -> None:
        await self.daemon()
        self.assertEqual((await self.get("/calllog"))[0].code, 200)
        await self.guess(50)
        self.assertError(await self.get("/calllog", auth=("bob", "bob-secret")), 429)
        for path in ("/addressbook", "/calllog", "/voicemail"):
            response, body = await self.get(path)
            self.assertEqual(response.code, 200, (path, body))

    async def test_wrong_passwords_during_an_address_block_spend_the_login_budget(self) -> None:
        """Else the blocked address could test passwords against the cache without limit:
        429 for a wrong one, 200 for the right one."""
        await self.daemon()
        self.assertEqual((await self.get("/calllog"))[0].code, 200)
        await self.guess(50)
        for _ in range(5):
            self.assertError(await self.get("/calllog", auth=("alice", "nope")), 429)
        self.assertEqual(self.pbx.failed_logins["alice"], 0, "the MX was not asked")
        self.assertError(await self.get("/addressbook"), 429)
        self.assertError(await self.get("/calllog"), 429)

    async def test_behind_a_trusted_proxy_each_client_has_its_own_budget(self) -> None:
        await self.daemon()
        self.trust("127.0.0.1")
        await self.guess(50, {"X-Forwarded-For": "203.0.113.7"})
        bob = ("bob", "bob-secret")
        self.assertError(await self.get("/calllog", auth=bob,
                                        headers={"X-Forwarded-For": "203.0.113.7"}), 429)
        response, body = await self.get("/calllog", auth=bob,
                                        headers={"X-Forwarded-For": "203.0.113.8"})
        self.assertEqual(response.code, 200, body)

    async def test_a_client_cannot_choose_its_address_behind_a_trusted_proxy(self) -> None:
        await self.daemon()
        self.trust("127.0.0.1")
        for n in range(50):  # what the proxy appends is the truth; the left part is the client's
            self.assertError(await self.get("/calllog", auth=(f"guess{n}", "x"), headers={
                "X-Forwarded-For": f"198.51.100.{n}, 203.0.113.7"}), 403)
        self.assertError(await self.get("/calllog", auth=("bob", "bob-secret"),
                                        headers={"X-Forwarded-For": "203.0.113.7"}), 429)

    async def test_the_header_of_an_untrusted_peer_is_ignored(self) -> None:
        await self.daemon()
        self.trust("192.0.2.1")
        for n in range(50):
            self.assertError(await self.get("/calllog", auth=(f"guess{n}", "x"), headers={
                "X-Forwarded-For": f"198.51.100.{n}"}), 403)
        self.assertError(await self.get("/calllog", auth=("bob", "bob-secret"),
                                        headers={"X-Forwarded-For": "198.51.100.200"}), 429)

    def trust(self, *networks: str) -> None:
        self.d.api.auth.clients = ClientAddresses(
            reactor, [trusted_proxy(network) for network in networks])


class ClientAddressTests(SynchronousTestCase):
    """X-Forwarded-For, read from the right as far as trusted proxies wrote it."""

    def setUp(self) -> None:
        self.clients = self.trusting("10.0.0.0/8")

    def trusting(self, *trusted: str) -> ClientAddresses:
        return ClientAddresses(Clock(), [trusted_proxy(value) for value in trusted])

    def address(self, peer: IAddress, *forwarded: str,
                clients: ClientAddresses | None = None) -> str:
        self.request = DummyRequest([b""])
        self.request.client = peer
        if forwarded:
            self.request.requestHeaders.setRawHeaders(b"X-Forwarded-For",
                                                      [f.encode() for f in forwarded])
        return (clients or self.clients).address(self.request)

    def test_an_untrusted_peer_is_the_client(self) -> None:
        self.assertEqual(self.address(PEER_OUTSIDE, "203.0.113.7"), "192.0.2.1")

    def test_a_trusted_peer_without_the_header_is_the_client(self) -> None:
        self.assertEqual(self.address(PEER_PROXY), "10.0.0.3")

    def test_the_rightmost_address_no_trusted_proxy_wrote(self) -> None:
        self.assertEqual(self.address(PEER_PROXY, "203.0.113.7"), "203.0.113.7")
        self.assertEqual(self.address(PEER_PROXY, "198.51.100.1, 203.0.113.7, 10.0.0.2"),
                         "203.0.113.7")
        self.assertEqual(self.address(PEER_PROXY, "198.51.100.1", "203.0.113.7 ,10.0.0.2"),
                         "203.0.113.7")  # two header lines are one list

    def test_all_hops_trusted_the_leftmost_is_the_client(self) -> None:
        self.assertEqual(self.address(PEER_PROXY, "10.1.1.1, 10.0.0.2"), "10.1.1.1")

    def test_a_malformed_part_written_by_a_trusted_proxy_means_the_peer(self) -> None:
        lines = capture_logs(self, "mxproxy.api.clients")
        for forwarded in ("203.0.113.7, bogus", "203.0.113.7:443", "", "203.0.113.7,,",
                          "[2001:db8::7]"):
            self.assertEqual(self.address(PEER_PROXY, forwarded), "10.0.0.3", forwarded)
        self.assertEqual(len(lines), 1)
        self.assertIn("10.0.0.3", lines[0])

    def test_what_the_client_wrote_is_never_parsed(self) -> None:
        self.assertEqual(self.address(PEER_PROXY, "bogus, 203.0.113.7"), "203.0.113.7")

    def test_ipv6(self) -> None:
        peer = IPv6Address("TCP", "::1", 4321)
        self.assertEqual(self.address(peer, "2001:db8::7", clients=self.trusting("::1")),
                         "2001:db8::7")
        self.assertEqual(self.address(peer, "2001:db8::7"), "::1")
        self.assertEqual(self.address(IPv6Address("TCP", "::ffff:10.0.0.3", 4321),
                                      "2001:db8::7"), "2001:db8::7")

    def test_unix_socket_peers(self) -> None:
        peer = UNIXAddress(b"/run/mxproxy/api.sock")
        self.assertEqual(self.address(peer, "203.0.113.7"), "unknown")
        self.assertEqual(self.address(peer, "203.0.113.7", clients=self.trusting("unix")),
                         "203.0.113.7")
        self.assertEqual(self.address(peer, clients=self.trusting("unix")), "unknown")

    def test_the_access_log_names_the_client(self) -> None:
        for peer, client in ((PEER_PROXY, "203.0.113.7"), (PEER_OUTSIDE, "192.0.2.1")):
            self.address(peer, "198.51.100.1, 203.0.113.7")
            self.request.uri, self.request.code, self.request.sentLength = b"/mx/dev/x", 200, 2
            self.assertEqual(self.clients.access_log("[date]", self.request),
                             f'"{client}" - - [date] "GET /mx/dev/x HTTP/1.0" 200 2 "-" "-"')


PEER_PROXY = IPv4Address("TCP", "10.0.0.3", 4321)
PEER_OUTSIDE = IPv4Address("TCP", "192.0.2.1", 4321)
