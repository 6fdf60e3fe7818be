"""The token store on a real PostgreSQL server (tests/pgserver.py): the behaviour every back end
shares, and what only a database server shared by several instances has — the server going
away, two instances migrating at once, NOTIFY of device changes, the password kept out of
messages."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.store import StoreUnavailable, TokenStoreError, WriteFailure
from mxproxy.store import pgsql as statements
from mxproxy.store.location import check, masked, open_store
from mxproxy.store.postgres import CHANNEL, PostgresStore
from tests import pgserver
from tests.store_behaviour import ALICE, BOB, BUNDLE, TOKEN, StoreBehaviour, logged, token


class PostgresCase(TestCase):
    def setUp(self) -> None:
        self.conninfo = pgserver.database()
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.open()

    def open(self, conninfo: str | None = None, **options: Any) -> PostgresStore:
        store = PostgresStore.open(conninfo or self.conninfo, clock=self.clock, **options)
        self.addCleanup(store.close)
        return store

    def sql(self, query: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            cursor = connection.execute(query)  # type: ignore[arg-type]
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []


class PostgresStoreTests(PostgresCase, StoreBehaviour):
    check_violation = 'violates check constraint "mxproxy_devices_provider_check"'
    devices_table = "mxproxy_devices"

    def fresh(self, **options: Any) -> PostgresStore:
        return self.open(pgserver.database(), **options)

    def reopen(self) -> PostgresStore:
        return self.open()

    async def test_the_server_going_away_fails_writes_until_it_is_back(self) -> None:
        self.store = self.open(timeout=0.5)
        lines = logged(self)
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        server = pgserver.shared()
        server.stop()
        self.addCleanup(server.start)
        self.clock.advance(5)
        error = await self.assertFailure(
            self.store.register(BOB, "apns", BUNDLE, False, token(1)), StoreUnavailable)
        self.assertIn(f"token store {self.store.name}: ", str(error))
        self.assertEqual(self.store.write_failure, WriteFailure(1005.0, str(error)))
        await self.assertFailure(self.store.count(), StoreUnavailable)
        server.start()
        # the pool tries to connect again after a back-off (1 s, doubling): a call fails
        # until its next attempt, so give it a few, on the real clock (a server restarts)
        deadline = reactor.seconds() + 30
        while True:
            try:
                self.assertIsNone(await self.store.register(BOB, "apns", BUNDLE, False,
                                                            token(1)))
                break
            except StoreUnavailable:
                if reactor.seconds() > deadline:
                    raise
                await deferLater(reactor, 0.2, lambda: None)
        self.assertIsNone(self.store.write_failure)
        self.assertEqual(await self.store.count(), 2)
        self.assertEqual(len(lines), 2, lines)  # once each way
        self.assertIn("device registrations answer 503", lines[0])
        self.assertIn("writing again", lines[1])

    async def test_a_register_notifies_a_listener_with_the_user_never_the_token(self) -> None:
        with psycopg.connect(self.store.conninfo, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
            await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)  # a refresh: no news
            await self.store.register(BOB, "apns", BUNDLE, False, TOKEN)  # moves: both hear
            await self.store.remove("apns", BUNDLE, False, TOKEN, user=ALICE)  # not hers: none
            await self.store.register(ALICE, "gfcm", "phone", False, token(2))
            [device] = await self.store.devices(ALICE)
            await self.store.prune(device)
            await self.store.remove("apns", BUNDLE, False, TOKEN)
            await self.store.record_success(device, 1.0)  # bookkeeping: no news
            heard = [(note.channel, note.payload) for note in
                     listener.notifies(timeout=0.5, stop_after=7)]
        self.assertEqual(heard, [(CHANNEL, f"{user} {statements.ORIGIN}") for user in
                                 (ALICE, ALICE, BOB, ALICE, ALICE, BOB)])


class PostgresSchemaTests(PostgresCase):
    def test_the_schema_version_is_recorded(self) -> None:
        self.assertEqual(self.sql("SELECT version FROM mxproxy_schema_version"),
                         [(statements.SCHEMA_VERSION,)])

    async def test_reopening_keeps_the_devices_and_migrates_nothing(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, True, TOKEN)
        await self.store.close()
        lines = logged(self)
        reopened = self.open()
        self.assertEqual(len(await reopened.devices(ALICE)), 1)
        self.assertEqual(lines, [])

    async def test_a_newer_schema_is_refused(self) -> None:
        await self.store.close()
        self.sql("INSERT INTO mxproxy_schema_version (version) VALUES (99)")
        error = self.assertRaises(TokenStoreError, PostgresStore.open, self.conninfo)
        self.assertIn(f"schema version 99, newer than this mxproxy supports "
                      f"({statements.SCHEMA_VERSION})", str(error))

    def test_instances_starting_together_migrate_once(self) -> None:
        """Four instances open a new database at once: one migrates, the others wait on the
        advisory lock and find the schema current (without the lock, CREATE TABLE races)."""
        conninfo = pgserver.database()
        found: list[int | BaseException] = []

        def start() -> None:
            try:
                with psycopg.connect(conninfo, autocommit=True) as connection:
                    found.append(statements.migrate(connection, "test"))
            except BaseException as error:
                found.append(error)

        starts = [threading.Thread(target=start) for _ in range(4)]
        for thread in starts:
            thread.start()
        for thread in starts:
            thread.join()
        self.assertEqual(sorted(found, key=repr), [0, 1, 1, 1])

    async def test_concurrent_registrations_of_one_user_keep_the_cap(self) -> None:
        """Two instances (two stores) registering for one user at once: the per-user lock
        keeps the user at the cap."""
        other = self.open(max_devices_per_user=5)
        mine = self.open(max_devices_per_user=5)
        await gatherResults([store.register(ALICE, "gfcm", "phone", False, token(index))
                             for index in range(30) for store in (mine, other)])
        self.assertEqual(len(await mine.devices(ALICE)), 5)


class LocationTests(SynchronousTestCase):
    def test_the_password_is_masked(self) -> None:
        for url, shown in [
            ("postgresql://mx:s3cret@db.example:5432/tokens",
             "postgresql://mx:***@db.example:5432/tokens"),
            ("postgres://mx:s3cret@h1:5432,h2:5433/tokens?sslmode=require",
             "postgres://mx:***@h1:5432,h2:5433/tokens?sslmode=require"),
            ("postgresql://db/tokens?user=mx&password=s3cret",
             "postgresql://db/tokens?user=mx&password=***"),
            ("postgresql://", "postgresql://"),
            ("/var/lib/mxproxy/mxproxy.db", "/var/lib/mxproxy/mxproxy.db"),
        ]:
            self.assertEqual(masked(url), shown)

    def test_a_bad_url_is_a_clear_error_without_the_password(self) -> None:
        problem = check("postgresql://mx:s3cret@db/tokens?colour=blue")
        assert problem is not None
        self.assertIn("--db postgresql://mx:***@db/tokens?colour=blue: not a valid PostgreSQL"
                      ' URL: invalid URI query parameter: "colour"', problem)
        self.assertNotIn("s3cret", problem)
        self.assertIsNone(check("postgresql://"))
        self.assertIsNone(check("mxproxy.db"))

    def test_an_unreachable_server_is_refused_without_the_password(self) -> None:
        port = pgserver.free_port()
        url = f"postgresql://mx:s3cret@127.0.0.1:{port}/tokens"
        error = self.assertRaises(StoreUnavailable, open_store, url)
        self.assertIn(f"token store postgresql://mx:***@127.0.0.1:{port}/tokens: ", str(error))
        self.assertNotIn("s3cret", str(error))

    def test_a_refused_login_is_reported_without_the_password(self) -> None:
        url = f"postgresql://nobody:s3cret@127.0.0.1:{pgserver.shared().port}/postgres"
        error = self.assertRaises(TokenStoreError, open_store, url)
        self.assertIn('role "nobody" does not exist', str(error))
        self.assertNotIn("s3cret", str(error))

    def test_a_url_opens_postgresql(self) -> None:
        store = open_store(pgserver.shared().url(pgserver.shared().create_database(),
                                                 password="anything"), clock=Clock())
        self.addCleanup(store.close)
        self.assertIsInstance(store, PostgresStore)
        self.assertNotIn("anything", store.name)
