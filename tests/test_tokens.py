"""The token store on real SQLite files, its thread driven by trial's real reactor."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.store import (
    Device,
    StoreClosed,
    StoreUnavailable,
    TokenStoreError,
    WriteFailure,
    mask_token,
    token_digest,
)
from mxproxy.store import sqlitefile as tokenfile
from mxproxy.store.sqlite import SQLiteStore
from mxproxy.store.sqlitefile import BUSY_TIMEOUT_MS, SCHEMA_VERSION, statement_error
from tests.store_behaviour import (
    ALICE,
    BOB,
    BUNDLE,
    HEX,
    MIXED,
    TOKEN,
    StoreBehaviour,
    logged,
    store_threads,
    token,
)
from tests.test_import import release_file

REPO = FilePath(__file__).parent().parent()
def fill_up(store: SQLiteStore) -> Deferred[object]:
    """Let the store's file grow no more, exactly as on a full disk (SQLITE_FULL): a row larger
    than a page, :data:`BIG_TOKEN`, then needs a page it cannot have."""
    return store._run(lambda connection: connection.execute(
        "PRAGMA max_page_count = 1").fetchone())  # can only shrink to the pages in use


def make_room(store: SQLiteStore) -> Deferred[object]:
    return store._run(lambda connection: connection.execute(
        "PRAGMA max_page_count = 1073741823").fetchone())


BIG_TOKEN = "ab" * 2000
"""An APNs token as long as the API accepts, larger than an SQLite page."""


class DeviceTests(SynchronousTestCase):
    def test_repr_masks_the_token(self) -> None:
        device = Device("apns", BUNDLE, False, TOKEN, ALICE, 1.0, 2.0)
        self.assertIn("a1b2c3…wxyz", repr(device))
        self.assertNotIn(TOKEN, repr(device))
        self.assertNotIn(TOKEN, str(device))

    def test_short_tokens_are_hidden_entirely(self) -> None:
        self.assertEqual(mask_token("0123456789abcdef"), "…")

    def test_a_token_digest_names_one_device_in_either_case_and_hides_the_token(self) -> None:
        apns = "ABCDEF" + "0" * 58
        self.assertEqual(token_digest(apns), token_digest(apns.lower()))
        self.assertNotEqual(token_digest(apns), token_digest("abcdef" + "0" * 57 + "1"))
        # What every instance sends and compares: SHA-256, in hex, of the lower-case token.
        self.assertEqual(token_digest(apns), hashlib.sha256(apns.lower().encode()).hexdigest())


class StatementErrorTests(SynchronousTestCase):
    def test_storage_conditions_are_unavailable_statement_errors_are_not(self) -> None:
        cases = {sqlite3.SQLITE_FULL: StoreUnavailable,
                 sqlite3.SQLITE_IOERR | 3 << 8: StoreUnavailable,  # SQLITE_IOERR_WRITE
                 sqlite3.SQLITE_READONLY: StoreUnavailable,
                 sqlite3.SQLITE_BUSY: StoreUnavailable,
                 sqlite3.SQLITE_CONSTRAINT | 2 << 8: TokenStoreError,  # SQLITE_CONSTRAINT_CHECK
                 sqlite3.SQLITE_ERROR: TokenStoreError}
        for code, expected in cases.items():
            error = sqlite3.OperationalError("what SQLite said")
            error.sqlite_errorcode = code
            converted = statement_error("tokens.db", error)
            self.assertIs(type(converted), expected, code)
            self.assertEqual(str(converted), "token store tokens.db: what SQLite said")


class StoreCase(TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.open()

    def open(self, path: str | None = None, **options: Any) -> SQLiteStore:
        store = SQLiteStore.open(path or self.path, clock=self.clock, **options)
        self.addCleanup(store.close)
        return store

    def sql(self, query: str) -> list[tuple[object, ...]]:
        """Read the file with a connection of our own, as an operator's sqlite3 shell would."""
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            return connection.execute(query).fetchall()
        finally:
            connection.close()


class SQLiteStoreTests(StoreCase, StoreBehaviour):
    check_violation = "CHECK constraint failed"
    devices_table = "devices"

    def fresh(self, **options: Any) -> SQLiteStore:
        return self.open(self.mktemp(), **options)

    def reopen(self) -> SQLiteStore:
        return self.open()

    async def test_a_full_disk_fails_writes_and_marks_the_store_until_one_succeeds(self) -> None:
        lines = logged(self)
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(ALICE)
        await fill_up(self.store)
        self.clock.advance(5)
        error = await self.assertFailure(
            self.store.register(BOB, "apns", BUNDLE, False, BIG_TOKEN), StoreUnavailable)
        reason = f"token store {self.path}: database or disk is full"
        self.assertEqual(str(error), reason)
        self.assertEqual(self.store.write_failure, WriteFailure(1005.0, reason))
        self.clock.advance(5)
        await self.assertFailure(self.store.register(BOB, "gfcm", BUNDLE, False, BIG_TOKEN),
                                 StoreUnavailable)
        self.assertEqual(self.store.write_failure, WriteFailure(1005.0, reason))  # the first
        self.assertEqual(await self.store.devices(BOB), [])  # nothing half written
        self.assertEqual(await self.store.count(), 1)  # reading still works
        self.assertTrue(await self.store.record_success(device, 1011.0))  # needs no new page
        self.assertIsNone(self.store.write_failure)
        await self.assertFailure(self.store.register(BOB, "apns", BUNDLE, False, BIG_TOKEN),
                                 StoreUnavailable)
        await make_room(self.store)
        self.assertIsNone(await self.store.register(BOB, "apns", BUNDLE, False, BIG_TOKEN))
        self.assertIsNone(self.store.write_failure)
        self.assertEqual(len(await self.store.devices(BOB)), 1)
        self.assertEqual(len(lines), 4, lines)  # once each way, not once per write
        for failed, recovered in (lines[0:2], lines[2:4]):
            self.assertIn(f"{reason}; device registrations answer 503", failed)
            self.assertIn(f"token store {self.path}: writing again", recovered)



Trigger = tuple[str, str, Callable[[], Deferred[None]]]


class ShutdownRecorder:
    """The real reactor for results from the store thread; system event triggers are kept to
    fire by hand."""

    def __init__(self) -> None:
        self.triggers: list[Trigger] = []
        self._reactor: Any = reactor

    def callFromThread(self, call: Callable[..., object], *args: object) -> None:
        self._reactor.callFromThread(call, *args)

    def addSystemEventTrigger(self, phase: str, event: str,
                              call: Callable[[], Deferred[None]]) -> Trigger:
        self.triggers.append((phase, event, call))
        return self.triggers[-1]

    def removeSystemEventTrigger(self, handle: Trigger) -> None:
        self.triggers.remove(handle)


class ShutdownTests(TestCase):
    async def test_reactor_shutdown_closes_the_store(self) -> None:
        recorder = ShutdownRecorder()
        store = SQLiteStore.open(self.mktemp(), clock=Clock(), reactor=recorder)
        self.addCleanup(store.close)
        registered = store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [(phase, event, trigger)] = recorder.triggers
        self.assertEqual((phase, event), ("before", "shutdown"))
        await trigger()
        self.assertIsNone(await registered)
        self.assertEqual(store_threads(), [])
        await self.assertFailure(store.has_devices(ALICE), StoreClosed)

    async def test_close_withdraws_the_shutdown_trigger(self) -> None:
        recorder = ShutdownRecorder()
        store = SQLiteStore.open(self.mktemp(), clock=Clock(), reactor=recorder)
        self.addCleanup(store.close)
        await store.close()
        self.assertEqual(recorder.triggers, [])
        self.assertEqual(store_threads(), [])


class FileTests(StoreCase):
    async def test_wal_durability_and_schema_version(self) -> None:
        self.assertEqual(self.sql("PRAGMA journal_mode"), [("wal",)])
        self.assertEqual(self.sql("SELECT version FROM schema_version"), [(1,), (2,)])
        self.assertEqual(SCHEMA_VERSION, 2)
        pragmas = await self.store._run(lambda connection: [
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("synchronous", "foreign_keys", "busy_timeout")])
        self.assertEqual(pragmas, [2, 1, BUSY_TIMEOUT_MS])  # 2 = FULL

    async def test_reopening_keeps_the_devices(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, True, TOKEN)
        await self.store.close()
        self.clock.advance(1)
        reopened = self.open()
        self.assertEqual(await reopened.devices(ALICE),
                         [Device("apns", BUNDLE, True, TOKEN, ALICE, 1000.0, 1000.0)])
        self.assertEqual(self.sql("SELECT version FROM schema_version"), [(1,), (2,)])

    async def test_a_store_made_by_the_release_before_keeps_working(self) -> None:
        path = release_file(self)
        lines = logged(self)
        store = self.open(path)
        self.assertEqual(lines, [])  # nothing to migrate
        self.assertEqual(await store.count(), 4)
        self.assertEqual(await store.devices(BOB), [
            Device("apns", BUNDLE, True, "ff" * 32, BOB, 1700000060.0, 1700000060.0,
                   1700000100.5, 1700000110.25, "BadDeviceToken")])
        self.assertEqual(await store.register(ALICE, "apns", BUNDLE, True, "FF" * 32), BOB)
        self.assertEqual(await store.users("ABC12"), [ALICE])
        self.assertEqual(await store.users("XYZ99"), ["XYZ99:43884850000000007"])

    async def test_a_newer_schema_is_refused(self) -> None:
        await self.store.close()
        self.sql("INSERT INTO schema_version VALUES (3, 'later')")
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, self.path)
        self.assertIn("schema version 3, newer than this mxproxy supports (2)", str(error))
        self.assertEqual(store_threads(), [])

    def test_a_file_that_is_no_database_is_refused(self) -> None:
        path = self.mktemp()
        FilePath(path).setContent(b"{\"not\": \"sqlite\"}" * 100)
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, path)
        self.assertIn("not a database", str(error))
        self.assertEqual(len(store_threads()), 1)  # only setUp's store

    def test_another_programs_database_is_refused_untouched(self) -> None:
        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE mail (id INTEGER)")
        connection.close()
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, path)
        self.assertIn("not an mxproxy token store", str(error))
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone(), ("delete",))

    def test_an_empty_file_is_refused_untouched(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "tokens.db")
        FilePath(path).touch()
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, path)
        self.assertIn(f"token store {path} is an empty file, not an mxproxy token store",
                      str(error))
        self.assertEqual(os.listdir(directory), ["tokens.db"])  # no WAL, nothing created
        self.assertEqual(os.path.getsize(path), 0)
        self.assertEqual(len(store_threads()), 1)  # only setUp's store

    def test_an_sqlite_file_without_tables_is_refused(self) -> None:
        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA user_version = 7")  # a valid database with no table
        connection.close()
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, path)
        self.assertIn("not an mxproxy token store (it has no tables)", str(error))

    async def test_a_new_store_appears_whole_or_not_at_all(self) -> None:
        path = self.mktemp()
        FilePath(path + ".new").setContent(b"")  # left by a crash while creating

        def crash(connection: sqlite3.Connection, path: str) -> int:
            raise sqlite3.OperationalError("disk I/O error")

        patched = self.patch(tokenfile, "_migrate", crash)
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, path)
        self.assertIn(f"token store {path}: cannot create: disk I/O error", str(error))
        self.assertFalse(os.path.lexists(path))
        self.assertFalse(os.path.lexists(path + ".new"))
        patched.restore()
        store = self.open(path)
        await store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        self.assertEqual(len(await store.devices(ALICE)), 1)
        self.assertFalse(os.path.lexists(path + ".new"))

    def test_an_unusable_path_is_refused(self) -> None:
        missing = os.path.join(self.mktemp(), "tokens.db")
        self.assertIn(missing, str(self.assertRaises(TokenStoreError, SQLiteStore.open, missing)))
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertRaises(TokenStoreError, SQLiteStore.open, directory)

    async def test_a_corrupt_database_is_refused(self) -> None:
        await gatherResults([self.store.register(ALICE, "gfcm", "phone", False, token(index))
                             for index in range(300)])
        await self.store.close()  # the last connection checkpoints the WAL into the file
        with open(self.path, "r+b") as database:
            database.seek(4096 * 2)
            database.write(b"\xa5" * 4096)
        error = self.assertRaises(TokenStoreError, SQLiteStore.open, self.path)
        self.assertIn(self.path, str(error))


class MigrationTests(TestCase):
    def v1_file(self, rows: list[tuple[str, str, int, str, str, float, float]]) -> str:
        """A token store as mxproxy with schema v1 left it, holding ``rows`` (provider,
        bundle, sandbox, token, user, created, registered)."""
        path = self.mktemp()
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE schema_version"
                           " (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
        for statement in tokenfile.MIGRATIONS[0]:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version VALUES (1, '2026-01-01 00:00:00')")
        connection.executemany(
            "INSERT INTO devices (provider, bundle, sandbox, token, user, created, registered)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        connection.close()
        return path

    async def test_v2_lower_cases_apns_tokens_keeping_the_last_registered_row(self) -> None:
        carol = "ABC12:43884850000000003"
        other = token(7).upper()[:60] + "ABCD"
        path = self.v1_file([
            ("apns", BUNDLE, 0, HEX.upper(), ALICE, 100.0, 300.0),  # last registered: stays
            ("apns", BUNDLE, 0, HEX, BOB, 100.0, 200.0),
            ("apns", BUNDLE, 0, MIXED, carol, 50.0, 100.0),
            ("apns", BUNDLE, 1, MIXED, BOB, 100.0, 100.0),  # sandbox: another device
            ("apns", "other", 0, HEX.upper(), carol, 100.0, 100.0),  # another app
            ("apns", "voip", 0, other, ALICE, 100.0, 500.0),
            ("apns", "voip", 0, other.lower(), BOB, 200.0, 500.0),  # created later: stays
            ("gfcm", "phone", 0, "Fcm-Token:APA91b" + "x" * 30, ALICE, 100.0, 100.0),
            ("gfcm", "phone", 0, "fcm-token:apa91b" + "x" * 30, BOB, 100.0, 50.0),
        ])
        lines = logged(self)
        store = SQLiteStore.open(path, clock=Clock())
        self.addCleanup(store.close)
        self.assertEqual(lines, [f"token store {path}: schema v1 migrated to v2"])
        stored = set()
        for user in (ALICE, BOB, carol):
            stored.update((device.provider, device.bundle, device.sandbox, device.token,
                           device.user, device.registered) for device in await store.devices(user))
        self.assertEqual(stored, {
            ("apns", BUNDLE, False, HEX, ALICE, 300.0),
            ("apns", BUNDLE, True, HEX, BOB, 100.0),
            ("apns", "other", False, HEX, carol, 100.0),
            ("apns", "voip", False, other.lower(), BOB, 500.0),
            ("gfcm", "phone", False, "Fcm-Token:APA91b" + "x" * 30, ALICE, 100.0),
            ("gfcm", "phone", False, "fcm-token:apa91b" + "x" * 30, BOB, 50.0),
        })
        self.assertTrue(await store.remove("apns", BUNDLE, False, MIXED, user=ALICE))


class Registrar(ProcessProtocol):
    """Reads the child's ``ACK <token>`` lines and kills it after ``kill_after`` of them."""

    def __init__(self, kill_after: int) -> None:
        self.kill_after = kill_after
        self.acked: list[str] = []
        self.acked_at_kill: int | None = None
        self.done = False
        self.errors = b""
        self.ended: Deferred[BaseException] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line.startswith(b"ACK "):
                self.acked.append(line[4:].decode())
            self.done = self.done or line == b"DONE"
        if self.acked_at_kill is None and len(self.acked) >= self.kill_after:
            self.acked_at_kill = len(self.acked)
            assert self.transport is not None
            self.transport.signalProcess("KILL")

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


class CrashTests(TestCase):
    log = Logger()
    timeout = 60

    async def test_acknowledged_registrations_survive_kill_9(self) -> None:
        path = os.path.abspath(self.mktemp())
        registrar = Registrar(kill_after=300)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [REPO.path, os.environ.get("PYTHONPATH")])))
        script = REPO.child("tests").child("crash_registrar.py").path
        reactor.spawnProcess(registrar, sys.executable, [sys.executable, script, path],
                             env=env, path=REPO.path)
        ended = await registrar.ended
        self.assertIsInstance(ended, ProcessTerminated, registrar.errors.decode())
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual(ended.signal, 9, registrar.errors.decode())
        self.assertFalse(registrar.done)
        self.assertIsNotNone(registrar.acked_at_kill)
        self.assertLess(len(registrar.acked), 1000, "killed too late to prove anything")

        store = SQLiteStore.open(path)
        self.addCleanup(store.close)
        stored: set[str] = set()
        for user in await store.users("CRASH1"):
            stored.update(device.token for device in await store.devices(user))
        self.assertEqual(set(registrar.acked) - stored, set())
        self.assertLess(len(stored), 1000)  # registrations were still queued at the kill
        await store.close()
        connection = sqlite3.connect(path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
        self.log.info("crash test: {at_kill} ACKed when the kill was sent, {acked} ACKed in all,"
                      " {rows} rows found", at_kill=registrar.acked_at_kill,
                      acked=len(registrar.acked), rows=len(stored))
