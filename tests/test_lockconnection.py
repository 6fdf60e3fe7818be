"""The lock connection against a real PostgreSQL (tests/pgserver.py): locks exclusive between
sessions and freed with the session, notifications as they come on each channel, a stopped
server noticed."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mxproxy import lockconnection
from mxproxy.lockconnection import ANSWERING_CHANNEL, CHANNEL, DatabaseUnavailable, PostgresLocks
from mxproxy.ownership import lock_key
from mxproxy.store.pgsql import ORIGIN
from tests import pgserver

KEY = lock_key("LOCKS1")


class Session:
    """One :class:`PostgresLocks` with what it heard, closed at cleanup."""

    def __init__(self, test: TestCase, conninfo: str) -> None:
        self.locks = PostgresLocks(conninfo, reactor)
        self.notified: list[tuple[str, str]] = []
        """(channel, payload) of each notification heard."""
        self.lost: list[str] = []
        self._waiters: list[Deferred[None]] = []
        self.locks.listen(lambda payload: self._notify(CHANNEL, payload),
                          lambda payload: self._notify(ANSWERING_CHANNEL, payload), self._lose)
        test.addCleanup(self.locks.close)

    def _notify(self, channel: str, payload: str) -> None:
        self.notified.append((channel, payload))
        self._wake()

    def _lose(self, reason: str) -> None:
        self.lost.append(reason)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def heard(self) -> None:
        """Until the next notification or loss."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        await waiter


async def granted(session: Session, deadline: float = 10.0) -> bool:
    """Whether ``session`` gets the lock within ``deadline`` seconds: the server frees a lock
    once it has seen the holder's connection close, a moment after the client closed it."""
    give_up = reactor.seconds() + deadline
    while not await session.locks.try_lock(KEY):
        if reactor.seconds() > give_up:
            return False
        await deferLater(reactor, 0.05, lambda: None)
    return True


def notify(conninfo: str, payload: str) -> None:
    psycopg: Any = pgserver._psycopg()
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"SELECT pg_notify('{CHANNEL}', %s)", (payload,))


class PostgresLocksTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.conninfo = pgserver.database()

    async def test_a_lock_is_one_sessions_until_it_resets(self) -> None:
        first, second = Session(self, self.conninfo), Session(self, self.conninfo)
        self.assertTrue(await first.locks.try_lock(KEY))
        self.assertFalse(await second.locks.try_lock(KEY))
        await first.locks.beat()
        first.locks.reset()
        self.assertTrue(await granted(second))
        self.assertFalse(await first.locks.try_lock(KEY))  # connected again, as a stranger

    async def test_unlock_frees_the_lock_for_another_session(self) -> None:
        first, second = Session(self, self.conninfo), Session(self, self.conninfo)
        self.assertTrue(await first.locks.try_lock(KEY))
        await first.locks.unlock(KEY)
        self.assertTrue(await second.locks.try_lock(KEY))  # at once: unlocked, not closed

    async def test_a_closed_session_frees_its_locks(self) -> None:
        first, second = Session(self, self.conninfo), Session(self, self.conninfo)
        self.assertTrue(await first.locks.try_lock(KEY))
        await first.locks.close()
        self.assertTrue(await granted(second))

    async def test_after_close_queries_fail_at_once(self) -> None:
        session = Session(self, self.conninfo)
        await session.locks.close()
        await self.assertFailure(session.locks.beat(), DatabaseUnavailable)
        session.locks.reset()  # a late step-down: nothing to do, nothing written anywhere

    async def test_a_close_seen_by_the_thread_before_its_wake_up_byte(self) -> None:
        """The worst interleaving of close(): the thread finds the stop in its queue and ends
        before close() has written the byte that wakes it (it woke for something else)."""
        self.patch(lockconnection, "IDLE_WAKE", 0.01)  # it wakes by itself, soon
        session = Session(self, self.conninfo)
        locks = session.locks
        wake = locks._wake

        def late_wake() -> None:
            assert locks._thread is not None
            locks._thread.join(10)  # the thread has seen the stop and ended
            wake()

        self.patch(locks, "_wake", late_wake)
        await locks.close()

    async def test_token_notifications_arrive_while_idle(self) -> None:
        session = Session(self, self.conninfo)
        await session.locks.beat()  # connected, and listening
        heard = Deferred.fromCoroutine(session.heard())
        notify(self.conninfo, "SN1:alice@example")
        await heard
        self.assertEqual(session.notified, [(CHANNEL, "SN1:alice@example")])

    async def test_this_processs_own_token_changes_are_not_heard(self) -> None:
        """They are applied as they are made; another process's are the listener's news."""
        session = Session(self, self.conninfo)
        await session.locks.beat()
        heard = Deferred.fromCoroutine(session.heard())
        notify(self.conninfo, f"SN1:alice@example {ORIGIN}")
        notify(self.conninfo, "SN1:bob@example 0badf00d")
        await heard
        self.assertEqual(session.notified, [(CHANNEL, "SN1:bob@example")])

    async def test_an_answer_told_by_one_session_is_heard_by_the_others(self) -> None:
        owner, standby = Session(self, self.conninfo), Session(self, self.conninfo)
        await owner.locks.beat()  # connected, and listening
        heard = Deferred.fromCoroutine(owner.heard())
        payload = f"SN1:alice@example 21 {'ab' * 32}"
        await standby.locks.tell_answering(payload)
        await heard
        self.assertEqual(owner.notified, [(ANSWERING_CHANNEL, payload)])


class StoppedServerTests(TestCase):
    """On a server of its own, which the test stops and starts."""

    timeout = 120

    def setUp(self) -> None:
        self.server = pgserver.PostgresServer()
        self.addCleanup(self.server.remove)
        self.server.start()

    async def test_a_stopped_server_is_noticed_at_once_and_queries_fail_until_it_is_back(
            self) -> None:
        session = Session(self, self.server.conninfo())
        self.assertTrue(await session.locks.try_lock(KEY))
        lost = Deferred.fromCoroutine(session.heard())
        self.server.stop()
        await lost
        self.assertEqual(len(session.lost), 1)
        await self.assertFailure(session.locks.beat(), DatabaseUnavailable)
        self.server.start()
        await session.locks.beat()
        self.assertTrue(await session.locks.try_lock(KEY))  # the old session's lock is gone

