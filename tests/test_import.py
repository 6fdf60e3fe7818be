"""``mxproxy import-tokens``: an SQLite token store copied into a real PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import psycopg
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxproxy.cli import main
from mxproxy.store.pgsql import ORIGIN
from mxproxy.store.postgres import CHANNEL, PostgresStore
from mxproxy.store.sqlite import SQLiteStore
from tests import pgserver

RELEASE_FILE = os.path.join(os.path.dirname(__file__), "data", "tokens-e13238f.db")
"""A token store made by mxproxy e13238f (schema v2): 4 devices of 3 users, one with delivery
notes."""
USERS = ["ABC12:43884850000000001", "ABC12:43884850000000002", "XYZ99:43884850000000007"]


def release_file(test: TestCase) -> str:
    """A copy of :data:`RELEASE_FILE` to use (opening it may write)."""
    path = test.mktemp()
    shutil.copy(RELEASE_FILE, path)
    return path


class ImportTests(TestCase):
    def setUp(self) -> None:
        server = pgserver.shared()
        self.url = server.url(server.create_database(), password="s3cret")
        self.path = release_file(self)

    def run_import(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["import-tokens", *argv])
        return status, out.getvalue(), err.getvalue()

    async def devices(self, store: SQLiteStore | PostgresStore) -> list[object]:
        found = []
        for user in USERS:
            found.extend(await store.devices(user))
        return found

    async def test_every_device_is_copied_once_however_often_it_runs(self) -> None:
        shown = self.url.replace("s3cret", "***")
        with psycopg.connect(self.url, autocommit=True) as listener:
            listener.execute(f"LISTEN {CHANNEL}")
            self.assertEqual(self.run_import(self.path, self.url), (
                0, f"{self.path} -> {shown}: 4 devices of 3 users read; 4 added, 0 updated,"
                   " 0 unchanged\n", ""))
            heard = [note.payload for note in listener.notifies(timeout=0.5, stop_after=3)]
        self.assertEqual(heard, [f"{user} {ORIGIN}" for user in USERS])
        self.assertEqual(self.run_import(self.path, self.url), (
            0, f"{self.path} -> {shown}: 4 devices of 3 users read; 0 added, 0 updated,"
               " 4 unchanged\n", ""))
        source = SQLiteStore.open(self.path, clock=Clock())
        self.addCleanup(source.close)
        target = PostgresStore.open(self.url, clock=Clock())
        self.addCleanup(target.close)
        self.assertEqual(await target.count(), 4)
        self.assertEqual(await self.devices(target), await self.devices(source))

    async def test_a_device_registered_later_in_postgresql_is_kept(self) -> None:
        clock = Clock()
        target = PostgresStore.open(self.url, clock=clock)
        self.addCleanup(target.close)
        source = SQLiteStore.open(self.path, clock=Clock())
        self.addCleanup(source.close)
        [moved, *_] = await source.devices(USERS[0])
        clock.advance(2_000_000_000)  # after the file's registrations
        await target.register(USERS[2], moved.provider, moved.bundle, moved.sandbox, moved.token)
        await source.close()
        status, out, _ = self.run_import(self.path, self.url)
        self.assertIn("3 added, 0 updated, 1 unchanged", out)
        self.assertEqual([d.user for d in await target.devices(USERS[2]) if d.token == moved.token],
                         [USERS[2]])

    def test_problems_are_one_line_and_status_1(self) -> None:
        missing = os.path.join(self.mktemp(), "none.db")
        self.assertEqual(self.run_import(missing, self.url),
                         (1, "", f"mxproxy: token store {missing}: no such file\n"))
        self.assertFalse(os.path.exists(missing))
        self.assertEqual(self.run_import(self.path, "tokens.db"),
                         (1, "", "mxproxy: tokens.db: not a postgresql:// URL\n"))
        port = pgserver.free_port()
        status, out, err = self.run_import(self.path, f"postgresql://mx:s3cret@127.0.0.1:{port}/x")
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"mxproxy: token store postgresql://mx:***@127.0.0.1:{port}/x: ", err)
        self.assertNotIn("s3cret", err)
