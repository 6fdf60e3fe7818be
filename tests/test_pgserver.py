"""The throw-away PostgreSQL server the store tests run on (tests/pgserver.py)."""

from __future__ import annotations

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from tests import pgserver


class PostgresServerTests(SynchronousTestCase):
    def test_each_test_gets_a_fresh_database(self) -> None:
        first, second = pgserver.database(), pgserver.database()
        self.assertNotEqual(first, second)
        with psycopg.connect(first, autocommit=True) as connection:
            connection.execute("CREATE TABLE t (x int)")
        with psycopg.connect(second) as connection:
            (found,) = connection.execute(
                "SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() or (None,)
        self.assertEqual(found, 0)

    def test_a_restart_keeps_port_and_data(self) -> None:
        server = pgserver.shared()
        conninfo = server.conninfo(server.create_database())
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (x int)")
            connection.execute("INSERT INTO kept VALUES (7)")
        server.stop()
        self.assertRaises(psycopg.OperationalError, psycopg.connect, conninfo, connect_timeout=5)
        server.start()
        with psycopg.connect(conninfo) as connection:
            self.assertEqual(connection.execute("SELECT x FROM kept").fetchall(), [(7,)])

    def test_fsync_is_off_unless_asked_for(self) -> None:
        durable = pgserver.PostgresServer(fsync=True)
        self.addCleanup(durable.remove)
        for server, expected in ((pgserver.shared(), "off"), (durable, "on")):
            server.start()
            with psycopg.connect(server.conninfo()) as connection:
                self.assertEqual(connection.execute("SHOW fsync").fetchone(), (expected,))
