"""A full run's log, with ``--debug --csta``, holds no password, no full device token, no audio.

The real daemon runs as a ``twistd mxproxy`` child with a real configuration file; the MX
simulator (the demo company plus a user with distinctive secrets) and a fake APNs (real TLS and
HTTP/2) run in the test's reactor. Over real HTTP the test does everything that handles a
secret: a failed login, a device registration, an incoming call pushed to that device, a
voicemail list and download, a click-to-call, ``GET user`` (the SIP password) and an answer on
the softphone. After SIGTERM the child's whole output (stdout
and stderr) is searched for every form each secret could leak in; it must also show that the
CSTA trace and the debug log were really on, so an empty log cannot pass.

The passwords, the token and the base64 and hex forms need no JSON escapes, so one byte search
covers the text log and ``--json-logs`` alike; for the repr of audio bytes (backslashes), the
JSON records are searched unescaped too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import signal

from twisted.internet import reactor
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mxproxy.csta.client import hash_password
from mxproxy.store import mask_token
from mxproxy.testing.mxsim import demo_pbx
from tests.crash_daemon import write
from tests.support import serve
from tests.test_apns import BUNDLE, KEY_ID, TEAM, p8, signing_key
from tests.test_crash import basic
from tests.test_json_logs import TwistdProcess, start_twistd
from tests.test_push import VOIP, Providers

MX = "secrets"
LINK_LOGIN, LINK_PASSWORD = "cti-link", "Link-Pa55-5d1e0c8a7b6f4e3d"
LOGIN, PASSWORD, EXTENSION = "dora", "Dora-Pa55-8c41f7e2a9b05d36", "3004"
WRONG_PASSWORD = "Wrong-Pa55-3b9e6a0d2c7f8145"
SOFT_PHONE_PASSWORD = "Sip-Pa55-e7a2c9b4f1d06358"  # in the MX's loginResponce
DEVICE = hashlib.sha256(b"mxproxy log-secrets device").hexdigest()
CALLER = "+15555550123"
CHUNK = 6000  # a multiple of 3, so each chunk's base64 is a piece of the whole file's too
AUDIO = random.Random("mxproxy log-secrets audio").randbytes(3 * CHUNK - 1000)  # 3 chunks
RUN = slice(100, 132)  # a 32-byte run of each chunk, and 40 characters of its base64:
RUN64 = slice(100, 140)  # a leak of part of the audio shows even if nothing logs it whole
SERVING = re.compile(rb"serving HTTP on 127\.0\.0\.1:(\d+)")


def secrets() -> dict[str, bytes]:
    """Each secret of the run, in every form it could leak in, by a name for the failure."""
    found = {
        "user password": PASSWORD, "wrong password": WRONG_PASSWORD,
        "link password": LINK_PASSWORD, "soft phone password": SOFT_PHONE_PASSWORD,
        "device token": DEVICE, "device token, upper case": DEVICE.upper(),
        "device token without its masked ends": DEVICE[6:-4],
    }
    for name, password in (("user", PASSWORD), ("wrong", WRONG_PASSWORD),
                           ("link", LINK_PASSWORD)):
        found[f"{name} password as hashed for the MX"] = hash_password(password).strip()
    for name, password in (("user", PASSWORD), ("wrong", WRONG_PASSWORD)):
        found[f"{name} password's Authorization header"] = basic(LOGIN, password)[6:].decode()
    forms = {name: value.encode() for name, value in found.items()}
    for number, start in enumerate(range(0, len(AUDIO), CHUNK), 1):
        chunk = AUDIO[start:start + CHUNK]
        encoded = base64.b64encode(chunk)
        forms[f"audio chunk {number}, base64"] = encoded
        forms[f"audio chunk {number}, part of its base64"] = encoded[RUN64]
        forms[f"audio chunk {number}, raw run"] = chunk[RUN]
        forms[f"audio chunk {number}, run as hex"] = chunk[RUN].hex().encode()
        forms[f"audio chunk {number}, run as repr"] = repr(chunk[RUN])[2:-1].encode()
    return forms


async def request(agent: Agent, method: str, url: str, password: str,
                  fields: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request as ``LOGIN`` with ``password``, ``fields`` as a JSON body."""
    headers = Headers({b"Authorization": [basic(LOGIN, password)]})
    body = None
    if fields is not None:
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
        body = FileBodyProducer(io.BytesIO(json.dumps(fields).encode()))
    response = await agent.request(method.encode(), url.encode(), headers, body)
    return response.code, await readBody(response)


class LogSecretsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.pbx = demo_pbx(clock=reactor, chunk_size=CHUNK)
        self.pbx.add_server_login(LINK_LOGIN, LINK_PASSWORD)
        self.pbx.add_user(LOGIN, PASSWORD, EXTENSION, first_name="Dora",
                          soft_phone_pwd=SOFT_PHONE_PASSWORD)
        self.mail = self.pbx.add_voicemail(LOGIN, AUDIO, from_number="3002", from_name="Bob")
        clock = Clock()  # the fake APNs checks the provider JWT's age against it
        clock.advance(reactor.seconds())
        self.providers = Providers(self, clock)
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    def configure(self) -> str:
        """A real configuration file: the simulator as MX, the fake APNs with a token key."""
        mx = serve(self, self.pbx)
        write(self.directory, "AuthKey.p8", p8(signing_key()))
        write(self.directory, "push-ca.pem", self.providers.authority.cert_pem)
        config = {
            "mx": {MX: {"addr": f"{mx.host}:{mx.port}", "login": LINK_LOGIN,
                        "password": LINK_PASSWORD, "tls": False}},
            "apns": {"AuthKey.p8": {"keyId": KEY_ID, "teamId": TEAM, "topics": [BUNDLE, VOIP]}},
            "push": {"apnsHost": f"127.0.0.1:{self.providers.apns_port}",
                     "apnsSandboxHost": f"127.0.0.1:{self.providers.sandbox_port}",
                     "ca": "push-ca.pem"},
        }
        return write(self.directory, "mxproxy.json", json.dumps(config).encode())

    def start(self, *flags: str) -> TwistdProcess:
        """``twistd mxproxy --debug --csta`` on a free loopback port; killed at cleanup."""
        return start_twistd(self, self.directory, self.configure(),
                            "--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "none",
                            "--debug", "--csta", *flags)

    async def monitoring(self) -> None:
        """Until the MX runs a call monitor on the user's extension."""
        while not self.pbx.monitors_of(EXTENSION):
            await self.pbx.wait_for("MonitorStart")

    async def exercise(self, base: str) -> None:
        """Every request that handles a secret, each checked to have really happened."""
        code, body = await request(self.agent, "GET", f"{base}/addressbook", WRONG_PASSWORD)
        self.assertEqual(code, 403, body)

        code, body = await request(self.agent, "POST", f"{base}/token/apns/{VOIP}", PASSWORD,
                                   {"token": DEVICE})
        self.assertEqual((code, body), (204, b""))
        await self.monitoring()
        call = self.pbx.place_call(CALLER, EXTENSION, calling_name="Log Secrets")
        await self.providers.apns.wait_for(
            lambda fake: any(push.token == DEVICE for push in fake.received))
        self.pbx.hang_up(call)

        code, body = await request(self.agent, "GET", f"{base}/voicemail", PASSWORD)
        self.assertEqual(code, 200, body)
        self.assertIn(str(self.mail.mail_id),
                      [mail["id"] for mail in json.loads(body)["voicemails"]])
        code, body = await request(self.agent, "GET", f"{base}/voicemail/{self.mail.mail_id}",
                                   PASSWORD)
        self.assertEqual(code, 200, body[:500])
        self.assertTrue(body == AUDIO, f"downloaded {len(body)} bytes, not the audio")

        code, body = await request(self.agent, "POST", f"{base}/call", PASSWORD,
                                   {"from": CALLER, "to": "3002"})
        self.assertEqual((code, json.loads(body)["deviceId"]), (200, EXTENSION), body)

        code, body = await request(self.agent, "GET", f"{base}/user", PASSWORD)
        self.assertEqual((code, json.loads(body)["softPhonePwd"]), (200, SOFT_PHONE_PASSWORD))
        call = self.pbx.place_call(CALLER, EXTENSION)
        code, body = await request(self.agent, "POST", f"{base}/calls/{call.call_id}/answer",
                                   PASSWORD, {"device": f"{LOGIN}-softphone", "token": DEVICE})
        self.assertEqual(code, 200, body)
        code, body = await request(self.agent, "DELETE", f"{base}/calls/{call.call_id}",
                                   PASSWORD)
        self.assertEqual(code, 200, body)

    async def run_daemon(self, *flags: str) -> bytes:
        """A whole run: start, exercise, SIGTERM; everything the child wrote."""
        daemon = self.start(*flags)
        await daemon.linked
        found = SERVING.search(b"\n".join(daemon.lines))
        assert found is not None, b"\n".join(daemon.lines).decode("utf-8", "replace")
        await self.exercise(f"http://127.0.0.1:{int(found[1])}/mx/{MX}")
        daemon.signal("TERM")
        ended = await daemon.ended
        output = b"\n".join([*daemon.lines, daemon.unfinished, daemon.errors])
        # twistd re-raises the SIGTERM it handled once the daemon has stopped cleanly.
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(getattr(ended, "signal", None), signal.SIGTERM,
                         output.decode("utf-8", "replace")[-4000:])
        return output

    def assert_no_secrets(self, output: bytes, debug_marker: bytes) -> None:
        """The log says enough to have leaked (trace, debug, masked token), yet leaks nothing."""
        text = output.decode("utf-8", "replace")
        leaks = [name for name, form in secrets().items() if form in output]
        self.assertEqual(leaks, [], text)
        for evidence in (b"loginRequest", b"<pwd>***</", b"MailReceiveIncomingResponse",
                         b"bytes of base64]", b"MakeCall", b"AnswerCall", b"AssignDevice",
                         debug_marker,
                         mask_token(DEVICE).encode()):
            self.assertIn(evidence, output, f"the log lacks {evidence!r}:\n{text}")

    async def test_text_log(self) -> None:
        self.assert_no_secrets(await self.run_daemon(), b"#debug]")

    async def test_json_logs(self) -> None:
        output = await self.run_daemon("--json-logs")
        records = [json.loads(line) for line in output.splitlines() if line.startswith(b"{")]
        self.assertGreater(len(records), 20)
        unescaped = "\n".join(str(value) for record in records for value in record.values())
        self.assert_no_secrets(output + b"\n" + unescaped.encode("utf-8", "surrogateescape"),
                               b'"level": "debug"')
