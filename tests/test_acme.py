"""ACME: the renewal schedule, backoff and stored state on a fake clock with an in-memory CA,
then the real thing end to end against Debian's pebble on loopback."""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import os
import shutil
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any, cast

import attrs
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, race
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory
from twisted.internet.task import Clock, deferLater
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from mxproxy.acme import (
    ACCOUNT_FILE,
    ACCOUNT_KEY_FILE,
    CHAIN_FILE,
    KEY_FILE,
    ACMEService,
    PendingOrder,
    RenewalFailed,
    StateDirectory,
)
from mxproxy.testing import certs
from mxproxy.testing.mxsim import PBX
from mxproxy.tls import RedirectToHTTPS, ServingCertificate, https_factory
from tests.support import serve
from tests.test_json_logs import start_twistd
from tests.test_tls import capture_logs, handshake, listen, trusting, trusting_agent

reactor: Any = _reactor
NAME = "mxproxy.test"
DIRECTORY = "https://ca.test/dir"
START = datetime.datetime(2027, 1, 4, 12, 0, tzinfo=datetime.UTC)
DAY = 24 * 3600.0
UNIT_CA = certs.certificate_authority("acme unit test CA")


class ThreadlessReactor(Clock):
    """A Clock that is also a "thread pool" running work at once, so that ACME calls complete
    synchronously."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(START.timestamp())

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None],
                                 function: Callable[..., Any], *args: Any) -> None:
        try:
            result = function(*args)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.seconds(), datetime.UTC)


class FakeCA:
    """An in-memory Issuer: signs each CSR for ``lifetime`` from the clock's now, after
    checking that port 80's dict publishes the challenge while the CA validates."""

    def __init__(self, clock: ThreadlessReactor, challenges: dict[str, bytes]) -> None:
        self.clock = clock
        self.challenges = challenges
        self.lifetime = datetime.timedelta(days=90)
        self.failures: list[Exception] = []
        self.suggestion: datetime.datetime | None = None
        self.ari_error: Exception | None = None
        self.orders: list[datetime.datetime] = []
        self.ari_queries = 0

    def order(self, csr_pem: bytes) -> PendingOrder:
        self.orders.append(self.clock.now())
        if self.failures:
            raise self.failures.pop(0)
        token = f"token-{len(self.orders)}"
        answer = f"{token}.thumbprint".encode()
        return PendingOrder({token: answer}, functools.partial(self.finish, csr_pem, token,
                                                               answer))

    def finish(self, csr_pem: bytes, token: str, answer: bytes) -> bytes:
        assert self.challenges == {token: answer}, self.challenges
        csr = x509.load_pem_x509_csr(csr_pem)
        ca_key = serialization.load_pem_private_key(UNIT_CA.key_pem, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
            .issuer_name(x509.load_pem_x509_certificate(UNIT_CA.cert_pem).subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.clock.now())
            .not_valid_after(self.clock.now() + self.lifetime)
            .add_extension(csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return leaf.public_bytes(serialization.Encoding.PEM) + UNIT_CA.cert_pem

    def renewal_time(self, chain_pem: bytes) -> datetime.datetime | None:
        self.ari_queries += 1
        if self.ari_error is not None:
            raise self.ari_error
        return self.suggestion


def stored_serial(state_dir: str) -> int:
    chain = StateDirectory(state_dir).read(CHAIN_FILE)
    assert chain is not None
    return x509.load_pem_x509_certificate(chain).serial_number


class ScheduleTests(TestCase):
    def setUp(self) -> None:
        self.clock = ThreadlessReactor()
        self.challenges: dict[str, bytes] = {}
        self.ca = FakeCA(self.clock, self.challenges)
        self.state_dir = os.path.join(self.mktemp(), "acme")
        self.logs = capture_logs(self, "mxproxy.acme")

    def start(self, name: str = NAME, ca: FakeCA | None = None) -> tuple[ACMEService,
                                                                          ServingCertificate]:
        certificate = ServingCertificate(name, clock=self.clock)
        service = ACMEService(name, DIRECTORY, self.state_dir, certificate, self.challenges,
                              self.clock, issuer=ca or self.ca, threads=self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.clock.advance(0)
        return service, certificate

    def advance_days(self, days: float, step: float = 600.0) -> None:
        """Let ``days`` pass in steps, as a real clock would (Clock.advance jumps at once)."""
        self.clock.pump([step] * round(days * DAY / step))

    def test_a_first_start_obtains_serves_and_stores_the_certificate(self) -> None:
        certificate = ServingCertificate(NAME, clock=self.clock)
        service = ACMEService(NAME, DIRECTORY, self.state_dir, certificate, self.challenges,
                              self.clock, issuer=self.ca, threads=self.clock)
        serving = service.when_serving()
        service.startService()
        self.addCleanup(service.stopService)
        self.assertNoResult(serving)
        self.assertIsNone(service.not_after)
        self.clock.advance(0)
        self.successResultOf(serving)
        self.assertEqual(self.ca.orders, [START])
        self.assertEqual(self.challenges, {})  # published during validation only (FakeCA)
        self.assertEqual(service.not_after, START + datetime.timedelta(days=90))
        self.assertEqual(certificate.not_after, service.not_after)
        self.assertEqual(self.logs[0], f"acme: no certificate for {NAME} yet: https refuses TLS "
                                       f"until {DIRECTORY} issues one; requesting it now")
        self.assertEqual(self.logs[1], f"acme: new certificate for {NAME}, valid until "
                                       f"{service.not_after}; serving it to new connections")
        self.assertEqual(stat.S_IMODE(os.stat(self.state_dir).st_mode), 0o700)
        self.assertEqual(sorted(os.listdir(self.state_dir)), [CHAIN_FILE, KEY_FILE])
        for name in (CHAIN_FILE, KEY_FILE):
            mode = os.stat(os.path.join(self.state_dir, name)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600, name)
        self.successResultOf(service.when_serving())

    def test_a_start_with_a_valid_stored_certificate_does_not_contact_the_ca(self) -> None:
        first, _ = self.start()
        first.stopService()
        self.advance_days(59)
        ca = FakeCA(self.clock, self.challenges)
        service, certificate = self.start(ca=ca)
        self.assertEqual((ca.orders, ca.ari_queries), ([], 0))
        self.assertEqual(certificate.not_after, START + datetime.timedelta(days=90))
        self.assertIn(f"acme: serving the stored certificate for {NAME}, valid until "
                      f"{certificate.not_after}", self.logs)
        self.successResultOf(service.when_serving())

    def test_a_stored_certificate_due_for_renewal_is_served_while_renewed(self) -> None:
        first, _ = self.start()
        first.stopService()
        self.advance_days(61)
        service, certificate = self.start()
        self.assertEqual(len(self.ca.orders), 2)
        self.assertIn(f"acme: the stored certificate for {NAME} (valid until "
                      f"{START + datetime.timedelta(days=90)}) is due for renewal", self.logs)
        self.assertEqual(certificate.not_after, self.ca.orders[1] + datetime.timedelta(days=90))

    def test_a_stored_certificate_for_another_name_is_ignored(self) -> None:
        first, _ = self.start()
        first.stopService()
        self.start(name="other.test")
        self.assertIn(f"acme: ignoring the stored certificate for other.test: it is for {NAME},"
                      " not other.test", self.logs)
        self.assertEqual(len(self.ca.orders), 2)

    def test_renews_when_a_third_of_the_lifetime_remains(self) -> None:
        self.start()
        self.advance_days(59.9)
        self.assertEqual(len(self.ca.orders), 1)
        self.assertEqual(self.ca.ari_queries, 59)  # checked daily
        self.advance_days(0.1)
        self.assertEqual(self.ca.orders, [START, START + datetime.timedelta(days=60)])

    def test_renews_at_the_ca_suggestion(self) -> None:
        service, _ = self.start()
        self.ca.suggestion = START + datetime.timedelta(days=10, hours=12)
        self.advance_days(10.4)
        self.assertEqual(len(self.ca.orders), 1)
        self.advance_days(0.1)
        self.assertEqual(self.ca.orders[1], self.ca.suggestion)
        self.assertEqual(service.not_after, self.ca.suggestion + datetime.timedelta(days=90))

    def test_an_ari_failure_is_logged_and_the_lifetime_rule_applies(self) -> None:
        self.start()
        self.ca.ari_error = ConnectionError("connection refused")
        self.advance_days(1)
        self.assertIn(f"acme: no renewal information (ARI) for {NAME}: connection refused; "
                      "going by the certificate's lifetime", self.logs)
        self.advance_days(59)
        self.assertEqual(len(self.ca.orders), 2)

    def test_failures_are_retried_with_doubling_delays_each_logged_once(self) -> None:
        error = messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="slow down")
        self.ca.failures = [error] * 8
        service, _ = self.start()
        self.advance_days(1, step=60)
        delays = [(later - earlier).total_seconds()
                  for earlier, later in itertools.pairwise(self.ca.orders)]
        self.assertEqual(delays, [300, 600, 1200, 2400, 4800, 9600, 14400, 14400])
        failures = [line for line in self.logs if "could not obtain" in line]
        self.assertEqual(len(failures), 8)
        self.assertEqual(failures[0], f"acme: could not obtain a certificate for {NAME}: {error}"
                                      "; retrying in 5 min")
        self.assertTrue(failures[-1].endswith("retrying in 240 min"))
        # A success resets the backoff: the next failure is retried after 5 minutes again.
        self.ca.failures = [error]
        failure = self.failureResultOf(service.renew_now(), RenewalFailed)
        self.assertEqual(str(failure.value), str(error))
        self.clock.advance(299)
        self.assertEqual(len(self.ca.orders), 10)
        self.clock.advance(1)
        self.assertEqual(len(self.ca.orders), 11)

    def test_renew_now_serves_a_new_certificate_or_fails_with_the_reason(self) -> None:
        service, certificate = self.start()
        before = stored_serial(self.state_dir)
        self.successResultOf(service.renew_now())
        self.assertNotEqual(stored_serial(self.state_dir), before)
        self.ca.failures = [ConnectionError("no route to host")]
        failure = self.failureResultOf(service.renew_now(), RenewalFailed)
        self.assertEqual(str(failure.value), "no route to host")
        self.assertEqual(self.challenges, {})

    def test_stop_cancels_the_schedule(self) -> None:
        service, _ = self.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StateDirectoryTests(TestCase):
    def test_writes_whole_files_for_the_owner_or_nothing(self) -> None:
        files = StateDirectory(os.path.join(self.mktemp(), "acme"))
        files.create()
        files.write("key.pem", b"old")
        self.assertRaises(TypeError, files.write, "key.pem", cast(bytes, "not bytes"))
        self.assertEqual(files.read("key.pem"), b"old")
        self.assertEqual(os.listdir(files.path), ["key.pem"])
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(files.path, "key.pem")).st_mode),
                         0o600)
        self.assertIsNone(files.read("missing.pem"))


class Silent(Protocol):
    """A server that accepts and never answers: a CA that hangs."""

    def __init__(self, asked: Deferred[None]) -> None:
        self.asked = asked

    def connectionMade(self) -> None:
        if not self.asked.called:
            self.asked.callback(None)


class StopTests(TestCase):
    timeout = 30  # below the acme library's 45 s network timeout, which a stop used to wait out

    async def test_a_stop_does_not_wait_for_a_hanging_ca(self) -> None:
        """twistd stops at once on SIGTERM while an ACME request hangs (systemd's stop timeout
        is 20 s; the reactor's own thread pool would have held the exit for the request)."""
        asked: Deferred[None] = Deferred()
        ca_port = listen(self, ServerFactory.forProtocol(lambda: Silent(asked)))
        pbx = PBX("ACMESTOP", clock=reactor)
        pbx.add_server_login("server", "server-secret")
        mx = serve(self, pbx)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        config = os.path.join(directory, "mxproxy.json")
        with open(config, "w") as file:
            json.dump({"mx": {"stop": {"addr": f"{mx.host}:{mx.port}", "login": "server",
                                       "password": "server-secret", "tls": False}}}, file)
        daemon = start_twistd(self, directory, config, "--host", NAME,
                              "--acme-directory", f"http://127.0.0.1:{ca_port}/dir",
                              "--https-listen", "tcp:0:interface=127.0.0.1",
                              "--http-listen", "tcp:0:interface=127.0.0.1",
                              "--admin-listen", "none")
        await daemon.linked
        await asked  # the daemon's ACME thread waits for the CA's directory
        daemon.signal("TERM")
        ended = await daemon.ended
        output = b"\n".join([*daemon.lines, daemon.unfinished, daemon.errors])
        self.assertEqual(getattr(ended, "signal", None), signal.SIGTERM,
                         output.decode("utf-8", "replace"))
        self.assertIn(b"acme: stopping in the middle of an exchange", output)


def free_port() -> int:
    """A loopback port free now, for a program that must be told its port up front."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return cast(int, probe.getsockname()[1])


class Program(ProcessProtocol):
    """A child process whose output is kept for failure messages; ``ready`` fires once the
    output shows ``marker``, and fails with the output if the program exits first."""

    def __init__(self, name: str, marker: bytes) -> None:
        self.name = name
        self.marker = marker
        self.output = b""
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and self.marker in self.output:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"{self.name} exited:\n{self.output.decode()}"))
        self.ended.callback(None)


async def run(test: TestCase, program: Program, args: list[str],
              env: dict[str, str] | None = None) -> Program:
    """Start a program, stop it (SIGTERM) at cleanup whatever the outcome, wait until ready."""
    executable = shutil.which(args[0])
    assert executable is not None
    process = reactor.spawnProcess(program, executable, args, env=env or {})

    def stop() -> Deferred[None]:
        if not program.ended.called:
            process.signalProcess("TERM")
        return program.ended

    test.addCleanup(stop)
    await program.ready
    return program


async def accepting(port: int) -> None:
    """Wait until a program that announced a port really accepts on it (Go logs it first)."""
    for _ in range(100):
        try:
            protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                             Protocol())
        except ConnectionRefusedError:
            await deferLater(reactor, 0.02, lambda: None)
        else:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return
    raise AssertionError(f"nothing accepts on 127.0.0.1:{port}")


@attrs.frozen
class Pebble:
    """A running pebble: its ACME directory, its management API, how to trust its HTTPS."""

    program: Program
    directory_url: str
    management_url: str
    ca_bundle: str
    """Path of the PEM CA behind pebble's own HTTPS certificate."""
    ca_pem: bytes


class PebbleTests(TestCase):
    """The real HTTP-01 flow against pebble, its DNS answered by pebble-challtestsrv."""

    def setUp(self) -> None:
        for program in ("pebble", "pebble-challtestsrv"):
            if shutil.which(program) is None:
                raise SkipTest(f"{program} not installed: apt-get install pebble")

    async def start_pebble(self, http_port: int) -> Pebble:
        """Pebble validating HTTP-01 on ``http_port``, every name resolving to 127.0.0.1."""
        directory = self.mktemp()
        os.makedirs(directory)
        ca = certs.certificate_authority("pebble https test CA")
        served = ca.issue()  # localhost, 127.0.0.1, ::1
        paths = {}
        for name, content in (("ca.pem", ca.cert_pem), ("cert.pem", served.cert_pem),
                              ("key.pem", served.key_pem)):
            paths[name] = os.path.join(directory, name)
            with open(paths[name], "wb") as file:
                file.write(content)
        dns, acme, management = free_port(), free_port(), free_port()
        await run(self, Program("pebble-challtestsrv", b"Starting challenge servers"), [
            "pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{free_port()}"])
        config = os.path.join(directory, "pebble.json")
        with open(config, "w") as file:
            json.dump({"pebble": {
                "listenAddress": f"127.0.0.1:{acme}",
                "managementListenAddress": f"127.0.0.1:{management}",
                "certificate": paths["cert.pem"], "privateKey": paths["key.pem"],
                "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
                "externalAccountBindingRequired": False}}, file)
        # No random validation delays, no rejected nonces, no reused authorizations: every
        # order goes through a real HTTP-01 validation, at once.
        program = await run(self, Program("pebble", b"ACME directory available"),
                            ["pebble", "-config", config, "-dnsserver", f"127.0.0.1:{dns}"],
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
                                 "PEBBLE_AUTHZREUSE": "0"})
        await accepting(acme)
        await accepting(management)
        return Pebble(program, f"https://127.0.0.1:{acme}/dir",
                      f"https://127.0.0.1:{management}", paths["ca.pem"], ca.cert_pem)

    async def test_obtains_serves_and_renews_without_restart(self) -> None:
        challenges: dict[str, bytes] = {}
        http_port = listen(self, Site(RedirectToHTTPS(NAME, challenges)))
        pebble = await self.start_pebble(http_port)
        try:
            await self.obtain_serve_renew(pebble, challenges)
        except Exception as error:
            raise self.failureException(
                f"{error!r}\n--- pebble output ---\n{pebble.program.output.decode()}"
            ) from error

    test_obtains_serves_and_renews_without_restart.timeout = 60  # type: ignore[attr-defined]

    def first_failure(self) -> Deferred[str]:
        """Fires with the first "could not obtain" line, so a failure need not wait for the
        retry 5 minutes later."""
        failed: Deferred[str] = Deferred()

        def observe(event: LogEvent) -> None:
            line = formatEvent(event)
            if "could not obtain" in line and not failed.called:
                failed.callback(line)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return failed

    async def obtain_serve_renew(self, pebble: Pebble, challenges: dict[str, bytes]) -> None:
        certificate = ServingCertificate(NAME)
        root = Resource()
        root.putChild(b"", Data(b"hello\n", "text/plain"))
        https_port = listen(self, https_factory(Site(root), certificate))
        state_dir = os.path.join(self.mktemp(), "acme")
        service = ACMEService(NAME, pebble.directory_url, state_dir, certificate, challenges,
                              reactor, email="ops@mxproxy.test", ca_bundle=pebble.ca_bundle)
        failed = self.first_failure()
        service.startService()
        self.addCleanup(service.stopService)
        index, reason = await race([service.when_serving().addCallback(lambda _: ""), failed])
        if index == 1:
            self.fail(reason)

        response = await trusting_agent(pebble.ca_pem, "127.0.0.1").request(
            b"GET", f"{pebble.management_url}/roots/0".encode())
        pebble_root = await readBody(response)
        first = await handshake(https_port, trusting(pebble_root))
        self.assertEqual(first[0].extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName), [NAME])
        self.assertEqual(len(first), 2)  # leaf and pebble's intermediate
        self.assertEqual(challenges, {})
        for name in (ACCOUNT_KEY_FILE, ACCOUNT_FILE, CHAIN_FILE, KEY_FILE):
            mode = os.stat(os.path.join(state_dir, name)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o600, name)

        await service.renew_now()
        second = await handshake(https_port, trusting(pebble_root))
        self.assertNotEqual(second[0].serial_number, first[0].serial_number)
        self.assertNotEqual(second[0].public_key().public_bytes(*SPKI),
                            first[0].public_key().public_bytes(*SPKI))


SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
