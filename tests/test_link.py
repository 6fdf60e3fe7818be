"""The client side of the MX link against the simulator, over real loopback TCP and TLS."""

from __future__ import annotations

import os
import tempfile
from typing import cast

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from mxproxy.csta import commands
from mxproxy.csta.client import (
    CSTAFactory,
    MXAddress,
    connect,
    hash_password,
    open_session,
)
from mxproxy.csta.errors import (
    CertificateRefused,
    CSTAError,
    LoginError,
    MXTimeout,
    MXUnavailable,
    Unreachable,
    WrongTransport,
)
from mxproxy.csta.messages import MakeCallResult
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.testing import certs
from mxproxy.testing.hostilemx import Script
from mxproxy.testing.mxsim import PBX, listen
from tests.support import close_on_cleanup, next_turn, serve
from tests.test_hostile_mx import listen as listen_hostile
from tests.test_hostile_mx import open_links


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
        with self.assertRaises(CertificateRefused) as raised:
            await self.connect(pinned)
        self.assertIn('check "fingerprint" or "ca"', raised.exception.hint)
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
        with self.assertRaises(CertificateRefused):
            await self.connect(trusted)
        self.assertEqual(pbx.logins["alice"], 0)
        self.flushLoggedErrors()


class Silent(Protocol):
    """A port that accepts and never says a word (a plain-TCP MX waiting for a whole frame)."""


class PlainGreeting(Protocol):
    """A plain-TCP peer that answers whatever arrives with a frame."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"\0\0\0\x0c9999<a/>")


class LinkFailureTests(TestCase):
    """What a link that cannot work as configured fails with: the address, what happened, and
    what an operator checks first."""

    async def open(self, address: MXAddress, factory: CSTAFactory | None = None) -> None:
        protocol, _ = await open_session(reactor, address, factory or CSTAFactory(reactor),
                                         "alice", "alice-secret")
        close_on_cleanup(self, protocol)

    def listen(self, protocol: type[Protocol]) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def assertWrongTransport(self, address: MXAddress, what: str, hint: str,
                                   factory: CSTAFactory | None = None) -> None:
        with self.assertRaises(WrongTransport) as raised:
            await self.open(address, factory)
        self.assertTrue(str(raised.exception).startswith(f"127.0.0.1:{address.port} {what} ("),
                        raised.exception)
        self.assertEqual(raised.exception.hint, hint)

    async def test_tls_to_a_plain_tcp_mx(self) -> None:
        plain = serve(self, company())  # the simulator closes on a ClientHello
        await self.assertWrongTransport(
            MXAddress(plain.host, plain.port, tls=True), "did not complete a TLS handshake",
            'if it is a plain-TCP port set "tls": false (a plain-TCP MX listens on 7777), else '
            "check the port")

    async def test_tls_to_a_plain_port_that_answers_in_plain(self) -> None:
        with self.assertRaises(WrongTransport) as raised:
            await self.open(MXAddress("127.0.0.1", self.listen(PlainGreeting), tls=True))
        self.assertIn("did not complete a TLS handshake", str(raised.exception))
        self.assertIn("wrong version number", str(raised.exception))

    async def test_tls_to_a_plain_port_that_stays_silent(self) -> None:
        clock = Clock()
        address = MXAddress("127.0.0.1", self.listen(Silent), tls=True)
        opening = Deferred.fromCoroutine(self.assertWrongTransport(
            address, "did not complete a TLS handshake",
            'if it is a plain-TCP port set "tls": false (a plain-TCP MX listens on 7777), else '
            "check the port", CSTAFactory(clock)))
        while not clock.getDelayedCalls():  # the login waits for its answer
            await next_turn()
        clock.advance(7)
        await opening

    async def test_plain_tcp_to_a_tls_mx(self) -> None:
        secure = serve(self, company(), tls=True)  # OpenSSL closes on a frame, without a word
        await self.assertWrongTransport(
            MXAddress(secure.host, secure.port, tls=False),
            "closed the connection without answering the login",
            'if it is the MX\'s TLS port (7778) set "tls": true, else check the port')

    async def test_a_hung_mx_that_never_answers_the_login_is_cut(self) -> None:
        """Over TLS a polite close waits for the peer's goodbye, which an MX that stopped
        reading never sends: the descriptor would stay for good."""
        clock = Clock()
        hostile, address = listen_hostile(self, Script(hold_logins=True), tls=True)
        asked = hostile.wait_for("loginRequest")
        opening = Deferred.fromCoroutine(self.open(address, CSTAFactory(clock)))
        await asked
        for session in hostile.sessions:
            cast(IPushProducer, session.transport).pauseProducing()  # deaf from now on
        clock.advance(7)
        with self.assertRaises(MXTimeout):
            await opening
        for _ in range(20):
            if not open_links(address.port):
                return
            await next_turn()
        self.fail("the link to the hung MX was left open")

    async def test_connection_refused(self) -> None:
        port = listen(company(), port=0, reactor=reactor)
        closed = port.getHost().port
        await port.stopListening()
        with self.assertRaises(Unreachable) as raised:
            await self.open(MXAddress("127.0.0.1", closed, tls=False))
        self.assertEqual(str(raised.exception),
                         f"cannot connect to 127.0.0.1:{closed}: connection refused")
        self.assertEqual(raised.exception.hint, "check that the MX is up and the port is right")

    async def test_a_name_that_does_not_resolve(self) -> None:
        with self.assertRaises(Unreachable) as raised:
            await self.open(MXAddress("mx.invalid", 7778))
        self.assertEqual(str(raised.exception),
                         "cannot connect to mx.invalid:7778: the name does not resolve")
        self.assertEqual(raised.exception.hint, "check the host name and the DNS")

    def test_no_answer_to_the_connection(self) -> None:
        memory = MemoryReactorClock()
        attempt = Deferred.fromCoroutine(connect(
            memory, MXAddress("127.0.0.1", 7778, tls=False), CSTAFactory(memory)))
        [(_, _, factory, timeout, _)] = memory.tcpClients
        self.assertEqual(timeout, 20)
        factory.clientConnectionFailed(None, Failure(TimeoutError()))
        memory.advance(1)  # HostnameEndpoint looks for more addresses every 0.3 s
        error = self.failureResultOf(attempt, Unreachable).value
        self.assertEqual(str(error), "cannot connect to 127.0.0.1:7778: no answer within 20 s")
        self.assertIn("firewall", error.hint)


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
