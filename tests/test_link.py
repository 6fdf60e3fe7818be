"""The client side of the MX link against the simulator, over real loopback TCP and TLS."""

from __future__ import annotations

import os
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from mxproxy.csta import commands
from mxproxy.csta.client import (
    CSTAFactory,
    MXAddress,
    connect,
    hash_password,
    open_session,
)
from mxproxy.csta.errors import CSTAError, LoginError, MXTimeout, MXUnavailable
from mxproxy.csta.messages import MakeCallResult
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.testing import certs
from mxproxy.testing.mxsim import PBX, listen
from tests.support import close_on_cleanup, serve


def company() -> PBX:
    pbx = PBX(sn="TEST1")
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "alice-secret", "3001", first_name="Alice")
    pbx.add_user("ldap", "ldap-secret", "3009", clear_text_only=True)
    return pbx


class LoginTests(TestCase):
    async def login(self, address: MXAddress, user: str, password: str,
                    **kwargs: object) -> CSTAProtocol:
        protocol, info = await open_session(reactor, address, CSTAFactory(reactor), user,
                                            password, **kwargs)
        close_on_cleanup(self, protocol)
        self.info = info
        return protocol

    async def test_server_login(self) -> None:
        pbx = company()
        await self.login(serve(self, pbx), "server", "server-secret", kind="Server")
        self.assertEqual((self.info.sn, self.info.ext, self.info.user_id), ("TEST1", "", "0"))
        [request] = [c for c in pbx.received if c.name == "loginRequest"]
        self.assertEqual(request.element.get("type"), "Server")

    async def test_user_login_sends_the_hashed_password(self) -> None:
        pbx = company()
        await self.login(serve(self, pbx), "alice", "alice-secret")
        self.assertEqual(self.info.ext, "3001")
        self.assertEqual(self.info.user_id, pbx.user("alice").jid)
        [request] = [c for c in pbx.received if c.name == "loginRequest"]
        pwd = request.element.findtext("pwd")
        self.assertEqual(pwd, hash_password("alice-secret"))
        self.assertNotIn("alice-secret", pwd)

    async def test_wrong_password_is_a_login_error_and_closes_the_link(self) -> None:
        pbx = company()
        with self.assertRaises(LoginError) as raised:
            await self.login(serve(self, pbx), "alice", "wrong")
        self.assertEqual(raised.exception.code, 1)
        self.assertEqual(pbx.failed_logins["alice"], 1)

    async def test_clear_text_retry_is_off_by_default(self) -> None:
        pbx = company()
        with self.assertRaises(LoginError) as raised:
            await self.login(serve(self, pbx), "ldap", "ldap-secret")
        self.assertEqual(raised.exception.code, 4)
        pwds = [c.element.findtext("pwd") for c in pbx.received if c.name == "loginRequest"]
        self.assertEqual(pwds, [hash_password("ldap-secret")], "the clear password never left")

    async def test_clear_text_retry_when_enabled(self) -> None:
        pbx = company()
        await self.login(serve(self, pbx), "ldap", "ldap-secret", clear_text_retry=True)
        self.assertEqual(self.info.ext, "3009")
        pwds = [c.element.findtext("pwd") for c in pbx.received if c.name == "loginRequest"]
        self.assertEqual(pwds, [hash_password("ldap-secret"), "ldap-secret"])

    async def test_clear_text_retry_does_not_help_a_wrong_password(self) -> None:
        pbx = company()
        with self.assertRaises(LoginError):
            await self.login(serve(self, pbx), "alice", "wrong", clear_text_retry=True)
        self.assertEqual(len([c for c in pbx.received if c.name == "loginRequest"]), 1)

    async def test_refused_logins(self) -> None:
        pbx = company()
        pbx.faults.refuse_logins = True
        with self.assertRaises(LoginError):
            await self.login(serve(self, pbx), "server", "server-secret", kind="Server")

    async def test_nobody_listening_is_unavailable(self) -> None:
        port = listen(company(), port=0, reactor=reactor)
        closed = MXAddress("127.0.0.1", port.getHost().port, tls=False)
        await port.stopListening()
        with self.assertRaises(MXUnavailable):
            await self.login(closed, "alice", "alice-secret")

    def test_cancelled_connect_is_a_cancellation(self) -> None:
        """A caller that gives up (an HTTP client gone) is not an MX failure to report."""
        memory = MemoryReactorClock()
        attempt = Deferred.fromCoroutine(connect(
            memory, MXAddress("127.0.0.1", 7778, tls=False), CSTAFactory(memory)))
        self.assertEqual(len(memory.tcpClients), 1)
        attempt.cancel()
        self.failureResultOf(attempt, CancelledError)


class TLSTests(TestCase):
    async def connect(self, address: MXAddress) -> CSTAProtocol:
        protocol, _ = await open_session(reactor, address, CSTAFactory(reactor), "alice",
                                         "alice-secret")
        close_on_cleanup(self, protocol)
        return protocol

    async def test_tls_without_verification_by_default(self) -> None:
        address = serve(self, company(), tls=True)
        protocol = await self.connect(address)
        self.assertTrue(protocol.up)

    async def test_pinned_fingerprint_accepted(self) -> None:
        address = serve(self, company(), tls=True)
        pinned = MXAddress(address.host, address.port, fingerprint=certs.self_signed().fingerprint)
        self.assertTrue((await self.connect(pinned)).up)

    async def test_wrong_fingerprint_refused(self) -> None:
        pbx = company()
        address = serve(self, pbx, tls=True)
        pinned = MXAddress(address.host, address.port, fingerprint=b"\x01" * 32)
        with self.assertRaises(MXUnavailable):
            await self.connect(pinned)
        self.assertEqual(pbx.logins["alice"], 0, "nothing was sent to the impostor")
        self.flushLoggedErrors()

    def ca_file(self, authority: certs.CertificateAuthority) -> str:
        fd, path = tempfile.mkstemp(suffix=".pem")
        os.write(fd, authority.cert_pem)
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    async def test_ca_file_accepts_a_certificate_it_issued(self) -> None:
        authority = certs.certificate_authority("mx CA")
        leaf = authority.issue(["127.0.0.1"])
        address = serve(self, company(), tls=leaf.server_options())
        trusted = MXAddress(address.host, address.port, ca=self.ca_file(authority))
        self.assertTrue((await self.connect(trusted)).up)

    async def test_ca_file_refuses_another_issuer(self) -> None:
        pbx = company()
        address = serve(self, pbx, tls=True)  # self-signed, not from this CA
        trusted = MXAddress(address.host, address.port,
                            ca=self.ca_file(certs.certificate_authority("other CA")))
        with self.assertRaises(MXUnavailable):
            await self.connect(trusted)
        self.assertEqual(pbx.logins["alice"], 0)
        self.flushLoggedErrors()


class RequestTests(TestCase):
    async def session(self, pbx: PBX, clock: object = None) -> CSTAProtocol:
        factory = CSTAFactory(reactor if clock is None else clock)  # type: ignore[arg-type]
        protocol, _ = await open_session(reactor, serve(self, pbx), factory, "alice",
                                         "alice-secret")
        close_on_cleanup(self, protocol)
        return protocol

    async def test_make_call(self) -> None:
        pbx = company()
        protocol = await self.session(pbx)
        reply = await protocol.request(commands.make_call("3001", "+15555550100"))
        result = MakeCallResult.from_xml(reply.element)
        self.assertEqual((result.device_id, result.called), ("3001", "+15555550100"))
        self.assertIn(result.call_id, pbx.calls)

    async def test_csta_error_code_carries_the_mx_text(self) -> None:
        protocol = await self.session(company())
        with self.assertRaises(CSTAError) as raised:
            await protocol.request(commands.make_call("3001", "nowhere"))
        self.assertTrue(raised.exception.text)
        self.assertTrue(protocol.up, "a CSTA error does not end the session")

    async def test_reply_timeout_on_the_injected_clock(self) -> None:
        pbx = company()
        clock = Clock()
        protocol = await self.session(pbx, clock)
        pbx.faults.no_reply = {"MakeCall"}
        seen = pbx.wait_for("MakeCall")
        pending = protocol.request(commands.make_call("3001", "3001"))
        await seen
        clock.advance(protocol.reply_timeout)
        with self.assertRaises(MXTimeout):
            await pending
        self.assertTrue(protocol.up)

    async def test_keepalive_after_sixty_idle_seconds(self) -> None:
        pbx = company()
        clock = Clock()
        await self.session(pbx, clock)
        keepalive = pbx.wait_for("keepalive")
        clock.advance(59)
        self.assertEqual(pbx.keepalives, 0)
        clock.advance(1)
        command = await keepalive
        self.assertEqual(command.invoke_id, 0)
        self.assertEqual(pbx.keepalives, 1)

    async def test_logout_event_ends_the_session_with_its_mode(self) -> None:
        pbx = company()
        protocol = await self.session(pbx)
        closed = protocol.when_closed()
        self.assertEqual(pbx.logout("alice", mode="forced"), 1)
        reason = await closed
        self.assertIn("forced", str(reason))
        self.assertEqual(getattr(reason, "mode", None), "forced")
