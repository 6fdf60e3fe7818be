"""Crash test of the whole daemon: kill -9 under 1,000 registrations over HTTP, then restart.

The daemon runs in a child process (``tests/crash_daemon.py``: ``makeService`` from a real
configuration file, with fake APNs and FCM in the child). The simulated MX runs here, in the
test's reactor, so that it outlives the daemon as a real MX would. The acceptance point: every
registration answered 204 before the kill is in the database after it, and the daemon restarts
cleanly on the files the killed process left.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mxproxy.store.sqlite import SQLiteStore
from mxproxy.testing.mxsim import PBX
from tests.crash_daemon import BUNDLE, DB, MX_LOGIN, MX_NAME, MX_PASSWORD
from tests.support import serve
from tests.test_json_logs import start_twistd

REPO = FilePath(__file__).parent().parent()
SCRIPT = REPO.child("tests").child("crash_daemon.py").path
SN = "CRASHD"
COUNT = 1000
USERS = 10
CONNECTIONS = 50
KILL_AFTER = 300
STDERR_KEPT = 16 * 1024

Row = tuple[str, str, str, str]
"""(user as stored: ``<sn>:<jid>``, provider, bundle, token)."""


def token(index: int) -> str:
    return f"{index:064x}"


def registration(index: int) -> tuple[str, str, str]:
    """The login, provider and token of the index-th registration (FCM for every third)."""
    return f"user{index % USERS}", "gfcm" if index % 3 == 0 else "apns", token(index)


class DaemonProcess(ProcessProtocol):
    """One run of the child: its ``READY`` port, the tail of its stderr, and its end."""

    def __init__(self) -> None:
        self.ready: Deferred[int] = Deferred()
        self.ended: Deferred[BaseException] = Deferred()
        self.errors = b""
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.startswith(b"READY ") and not self.ready.called:
                self.ready.callback(json.loads(line[6:])["port"])

    def errReceived(self, data: bytes) -> None:
        self.errors = (self.errors + data)[-STDERR_KEPT:]

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                f"the daemon ended before READY ({reason.value}):\n{self.stderr}"))
        self.ended.callback(reason.value)

    @property
    def running(self) -> bool:
        return not self.ended.called

    @property
    def stderr(self) -> str:
        return self.errors.decode("utf-8", "replace")

    def signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)


class Flood:
    """``COUNT`` registrations over ``CONNECTIONS`` persistent connections, each connection
    sending its next request once the previous one is answered; SIGKILLs the daemon when the
    ``KILL_AFTER``-th 204 arrives. After the kill, failures are the expected end of a request
    the dead daemon never answered; before it, any failure or non-204 answer fails the test."""

    def __init__(self, daemon: DaemonProcess, agent: Agent, base: str,
                 passwords: dict[str, str]) -> None:
        self.daemon = daemon
        self.agent = agent
        self.base = base
        self.passwords = passwords
        self.acked: list[tuple[str, str, str]] = []
        self.acked_at_kill: int | None = None
        self.sent = 0
        self.cut = 0  # requests that failed because the daemon was gone

    async def run(self) -> None:
        indices = iter(range(COUNT))
        await gatherResults([Deferred.fromCoroutine(self._worker(indices))
                             for _ in range(CONNECTIONS)], consumeErrors=True)

    @property
    def killed(self) -> bool:
        return self.acked_at_kill is not None

    async def _worker(self, indices: Iterator[int]) -> None:
        for index in indices:
            if self.killed:
                return
            login, provider, device = registration(index)
            self.sent += 1
            try:
                response = await self.agent.request(
                    b"POST", f"{self.base}/token/{provider}/{BUNDLE}".encode(),
                    Headers({b"Authorization": [basic(login, self.passwords[login])],
                             b"Content-Type": [b"application/json"]}),
                    FileBodyProducer(io.BytesIO(json.dumps({"token": device}).encode())))
            except Exception:
                if self.killed:
                    self.cut += 1
                    return
                raise
            if response.code != 204:
                body = await readBody(response)
                raise AssertionError(f"registration {index}: HTTP {response.code} {body!r}")
            self.acked.append((login, provider, device))
            if len(self.acked) == KILL_AFTER:
                self.acked_at_kill = len(self.acked)
                self.daemon.signal("KILL")
            try:
                await readBody(response)
            except Exception:
                if not self.killed:
                    raise


def basic(login: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{login}:{password}".encode())


def stored_rows(path: str) -> set[Row]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT user, provider, bundle, token FROM devices").fetchall()
    finally:
        connection.close()
    return {(str(user), str(provider), str(bundle), str(device))
            for user, provider, bundle, device in rows}


def integrity(path: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()


class DaemonCrashTests(TestCase):
    log = Logger()
    timeout = 120

    def setUp(self) -> None:
        self.pbx = PBX(SN, clock=reactor)
        self.pbx.add_server_login(MX_LOGIN, MX_PASSWORD)
        self.passwords = {}
        for number in range(USERS):
            login = f"user{number}"
            self.passwords[login] = f"secret-{number}"
            self.pbx.add_user(login, self.passwords[login], str(200 + number))
        address = serve(self, self.pbx)
        self.mx = f"{address.host}:{address.port}"
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.db = os.path.join(self.directory, DB)
        self.http = HTTPConnectionPool(reactor, persistent=True)
        self.http.maxPersistentPerHost = CONNECTIONS
        self.http.retryAutomatically = False  # a request the kill cut must fail, not be resent
        self.addCleanup(self.http.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.http)

    def start_daemon(self) -> DaemonProcess:
        daemon = DaemonProcess()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [REPO.path, os.environ.get("PYTHONPATH")])))
        reactor.spawnProcess(daemon, sys.executable, [sys.executable, SCRIPT, self.directory,
                                                      self.mx], env=env, path=REPO.path)

        async def stop() -> None:
            if daemon.running:
                daemon.signal("KILL")
            await daemon.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        return daemon

    def user(self, login: str) -> str:
        return f"{SN}:{self.pbx.user(login).jid}"

    def rows(self, registrations: list[tuple[str, str, str]]) -> set[Row]:
        return {(self.user(login), provider, BUNDLE, device)
                for login, provider, device in registrations}

    async def mx_sessions_closed(self) -> None:
        """The simulated MX has seen every connection of the killed daemon drop."""
        await DeferredList([session.when_closed() for session in self.pbx.sessions])

    async def monitoring(self, users: set[str]) -> None:
        """Until the MX has a call monitor running for every one of these stored users."""
        extensions = {login.extension for login in self.pbx.users.values()
                      if f"{SN}:{login.jid}" in users}
        while not all(self.pbx.monitors_of(extension) for extension in extensions):
            await self.pbx.wait_for("MonitorStart")

    async def test_acknowledged_registrations_survive_kill_9_of_the_daemon(self) -> None:
        daemon = self.start_daemon()
        port = await daemon.ready
        flood = Flood(daemon, self.agent, f"http://127.0.0.1:{port}/mx/{MX_NAME}",
                      self.passwords)
        await flood.run()
        ended = await daemon.ended
        self.assertIsInstance(ended, ProcessTerminated, daemon.stderr)
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual(ended.signal, 9, daemon.stderr)
        self.assertEqual(flood.acked_at_kill, KILL_AFTER)
        self.assertLess(len(flood.acked), COUNT, "killed too late to prove anything")
        self.assertLess(flood.sent, COUNT, "every registration was sent before the kill")
        await self.mx_sessions_closed()

        # What the killed daemon left (the database and its write-ahead log), checked on a
        # copy so that the restart below meets these very files, unrecovered.
        self.assertTrue(os.path.exists(self.db + "-wal"), "the killed daemon left no WAL")
        copy = self.mktemp()
        os.mkdir(copy)
        for suffix in ("", "-wal"):
            shutil.copyfile(self.db + suffix, os.path.join(copy, DB + suffix))
        snapshot = os.path.join(copy, DB)
        store = SQLiteStore.open(snapshot)
        self.addCleanup(store.close)
        found: set[Row] = set()
        for user in await store.users(SN):
            found.update((device.user, device.provider, device.bundle, device.token)
                         for device in await store.devices(user))
        await store.close()
        acknowledged = self.rows(flood.acked)
        self.assertEqual(acknowledged - found, set(), "acknowledged, then lost")
        self.assertLessEqual(found, self.rows([registration(i) for i in range(COUNT)]))
        self.assertLess(len(found), COUNT)
        self.assertEqual(integrity(snapshot), [("ok",)])

        # The daemon starts again on the killed one's files, monitors every stored user's calls
        # and registers devices; SIGTERM then stops it cleanly.
        restarted = self.start_daemon()
        port = await restarted.ready
        await self.monitoring({user for user, *_ in found})
        late = ("user0", "apns", token(COUNT))
        response = await self.agent.request(
            b"POST", f"http://127.0.0.1:{port}/mx/{MX_NAME}/token/apns/{BUNDLE}".encode(),
            Headers({b"Authorization": [basic("user0", self.passwords["user0"])]}),
            FileBodyProducer(io.BytesIO(json.dumps({"token": late[2]}).encode())))
        self.assertEqual((response.code, await readBody(response)), (204, b""))
        await self.http.closeCachedConnections()
        restarted.signal("TERM")
        ended = await restarted.ended
        self.assertIsInstance(ended, ProcessDone, restarted.stderr)
        self.assertEqual(stored_rows(self.db), found | self.rows([late]))
        self.assertEqual(integrity(self.db), [("ok",)])
        self.assertFalse(os.path.exists(self.db + "-wal"), "the stopped daemon left its WAL")
        self.log.info(
            "daemon crash test: {sent} registrations sent over {connections} connections, "
            "{at_kill} acknowledged when SIGKILL was sent, {acked} acknowledged in all, "
            "{cut} cut by the kill, {rows} rows found after it; restart monitored {users} users",
            sent=flood.sent, connections=CONNECTIONS, at_kill=flood.acked_at_kill,
            acked=len(flood.acked), cut=flood.cut, rows=len(found),
            users=len({user for user, *_ in found}))


class RefusedDatabaseTests(TestCase):
    timeout = 60

    async def test_twistd_exits_1_with_one_line_on_an_empty_database(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
        FilePath(os.path.join(directory, "apns-key.p8")).setContent(key)
        config = os.path.join(directory, "mxproxy.json")
        FilePath(config).setContent(json.dumps({
            "mx": {MX_NAME: {"addr": "127.0.0.1:7777", "login": MX_LOGIN,
                             "password": MX_PASSWORD, "tls": False}},
            "apns": {"apns-key.p8": {"keyId": "KEYID00001", "teamId": "TEAMID0001",
                                     "topics": [BUNDLE]}}}).encode())
        db = os.path.join(directory, "mxproxy.db")  # start_twistd's --db
        FilePath(db).touch()  # what a botched restore or a full disk left
        daemon = start_twistd(self, directory, config, "--host", "localhost:0",
                              "--admin-listen", "none")
        daemon.linked.addErrback(lambda _: None)  # it never links: the point of the test
        ended = await daemon.ended
        stderr = daemon.errors.decode("utf-8", "replace")
        self.assertIsInstance(ended, ProcessTerminated, stderr)
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual(ended.exitCode, 1, stderr)
        self.assertEqual(stderr.splitlines(), [
            f"mxproxy: token store {db} is an empty file, not an mxproxy token store: remove it"
            " or give --db a path that does not exist to start a new store"])
        self.assertEqual(os.path.getsize(db), 0)
