"""The ownership state machine on a Clock, against locks kept in memory as PostgreSQL keeps them:
a session's locks last as long as its connection; and answers told through the database, from a
standby to the owner."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from mxproxy.ownership import ANSWER_WAIT, HEARTBEAT, LEASE, POLL, Ownership, lock_key
from mxproxy.store import token_digest
from tests.store_behaviour import logged


class Database:
    """Advisory locks by key, each held by one session; ``up`` False refuses every query;
    notifications on ``mxproxy_answering`` reach every listening session."""

    def __init__(self) -> None:
        self.holders: dict[int, FakeLocks] = {}
        self.up = True
        self.listeners: list[FakeLocks] = []

    def tell_answering(self, payload: str) -> None:
        for session in self.listeners:
            session.answering(payload)

    def drop(self, session: FakeLocks) -> None:
        for key in [key for key, holder in self.holders.items() if holder is session]:
            del self.holders[key]


class FakeLocks:
    """A :class:`mxproxy.ownership.LockSession`: answers at once, or (``hang``) never until
    :meth:`release_hung` fires them."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.hang = False
        self.hung: list[tuple[Deferred[Any], Callable[[], Any]]] = []
        self.resets = 0
        self.closed = False
        self.notify: Callable[[str], None] = lambda _: None
        self.answering: Callable[[str], None] = lambda _: None
        self.lost: Callable[[str], None] = lambda _: None

    def listen(self, on_tokens: Callable[[str], None], on_answering: Callable[[str], None],
               on_lost: Callable[[str], None]) -> None:
        self.notify, self.answering, self.lost = on_tokens, on_answering, on_lost
        self.database.listeners.append(self)

    def tell_answering(self, payload: str) -> Deferred[None]:
        return self._answer(lambda: self.database.tell_answering(payload))

    def _answer(self, query: Callable[[], Any]) -> Deferred[Any]:
        if self.hang:
            waiting: Deferred[Any] = Deferred()
            self.hung.append((waiting, query))
            return waiting
        if not self.database.up:
            return fail(ConnectionError("connection refused"))
        return succeed(query())

    def release_hung(self) -> None:
        hung, self.hung = self.hung, []
        for waiting, query in hung:
            waiting.callback(query())

    def try_lock(self, key: int) -> Deferred[bool]:
        return self._answer(lambda: self.database.holders.setdefault(key, self) is self)

    def unlock(self, key: int) -> Deferred[None]:
        return self._answer(lambda: self.database.holders.pop(key, None) and None)

    def beat(self) -> Deferred[None]:
        return self._answer(lambda: None)

    def reset(self) -> None:
        self.resets += 1
        self.database.drop(self)

    def close(self) -> Deferred[None]:
        self.closed = True
        self.database.drop(self)
        self.database.listeners.remove(self)
        return succeed(None)


class FakeServer:
    """What :meth:`Ownership.role` reads of an MXServer: its name, ``sn`` and link-ups."""

    def __init__(self, name: str = "main") -> None:
        self.config = SimpleNamespace(name=name)
        self.sn: str | None = None
        self._up: list[Callable[[Any], None]] = []
        self._down: list[Callable[[Any], None]] = []

    def on_link_up(self, observer: Callable[[Any], None]) -> None:
        self._up.append(observer)

    def on_link_down(self, observer: Callable[[Any], None]) -> None:
        self._down.append(observer)

    def link_up(self, sn: str) -> None:
        self.sn = sn
        for observer in self._up:
            observer(object())

    def link_down(self) -> None:
        for observer in self._down:
            observer(ConnectionError("the MX went away"))


class Instance:
    """One daemon's ownership, its MX role, and every change the role went through."""

    def __init__(self, test: TestCase, database: Database, clock: Clock,
                 sn: str | None = "SN001") -> None:
        self.locks = FakeLocks(database)
        self.ownership = Ownership(self.locks, clock)
        self.server = FakeServer()
        self.role = self.ownership.role(self.server)  # type: ignore[arg-type]
        self.changes: list[tuple[float, bool]] = []
        self.tokens: list[str] = []
        self.answers: list[tuple[str, int, str]] = []
        self.role.on_change(lambda owner: self.changes.append((clock.seconds(), owner)))
        self.role.on_tokens(self.tokens.append)
        self.role.on_answering(lambda *answer: self.answers.append(answer))
        self.ownership.startService()
        test.addCleanup(self.stop)
        if sn is not None:
            self.server.link_up(sn)

    def stop(self) -> None:
        if self.ownership.running:
            self.ownership.stopService()


class OwnershipTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.database = Database()

    def instance(self, sn: str | None = "SN001") -> Instance:
        return Instance(self, self.database, self.clock, sn)

    def test_without_a_database_every_mx_is_owned(self) -> None:
        ownership = Ownership(None, self.clock)
        role = ownership.role(FakeServer())  # type: ignore[arg-type]
        ownership.startService()
        self.assertEqual((role.owner, role.role, ownership.database), (True, "owner", None))
        self.assertIsNone(self.successResultOf(ownership.stopService()))

    def test_the_first_to_know_the_serial_owns_and_the_other_stands_by(self) -> None:
        first = self.instance()
        second = self.instance()
        self.assertEqual((first.role.role, second.role.role), ("owner", "standby"))
        self.assertEqual(first.changes, [(0.0, True)])
        self.assertEqual(self.database.holders, {lock_key("SN001"): first.locks})
        self.clock.advance(60)
        self.assertEqual((first.role.owner, second.role.owner), (True, False))
        self.assertTrue(first.ownership.database.up)  # type: ignore[union-attr]
        self.assertTrue(second.ownership.database.up)  # type: ignore[union-attr]

    def test_no_serial_no_contention(self) -> None:
        instance = self.instance(sn=None)
        self.clock.advance(10)
        self.assertEqual((instance.role.owner, self.database.holders), (False, {}))

    def test_standby_takes_over_within_one_poll_of_the_owners_death(self) -> None:
        first = self.instance()
        second = self.instance()
        self.clock.advance(0.5)
        self.database.drop(first.locks)  # kill -9: the server ends the session with its socket
        first.locks.hang = True  # and the dead process answers nothing
        self.clock.advance(POLL - 0.5)
        self.assertEqual(second.changes, [(POLL, True)])

    def test_an_owner_that_loses_its_mx_link_lets_an_instance_that_reaches_it_own(
            self) -> None:
        first = self.instance()
        second = self.instance()
        self.clock.advance(1.0)
        first.server.link_down()
        self.assertEqual((first.changes, self.database.holders), ([(0.0, True), (1.0, False)],
                                                                  {}))
        self.clock.advance(POLL - 1.0)
        self.assertEqual(second.changes, [(POLL, True)])
        self.assertEqual(self.database.holders, {lock_key("SN001"): second.locks})
        first.server.link_up("SN001")  # back: it stands by
        self.clock.advance(10 * POLL)
        self.assertEqual((first.role.owner, second.role.owner), (False, True))
        self.assertEqual(first.locks.resets, 0, "no database trouble: the connection stays")
        self.assertTrue(first.ownership.database.up)  # type: ignore[union-attr]

    def test_a_standby_without_its_mx_link_does_not_take_over(self) -> None:
        first = self.instance()
        second = self.instance()
        second.server.link_down()
        self.database.drop(first.locks)
        first.locks.hang = True
        self.clock.advance(3 * POLL)
        self.assertEqual((second.changes, self.database.holders), ([], {}))
        second.server.link_up("SN001")  # at once, not at the next poll
        self.assertEqual(second.changes, [(3 * POLL, True)])

    def test_an_owner_whose_heartbeat_hangs_stops_when_its_lease_ends(self) -> None:
        owner = self.instance()
        self.clock.advance(HEARTBEAT)  # beat sent at 2.0, answered: owner until 6.0
        owner.locks.hang = True
        self.clock.advance(HEARTBEAT)  # beat sent at 4.0 hangs
        self.clock.advance(LEASE - HEARTBEAT - 0.5)
        self.assertTrue(owner.role.owner)
        self.clock.advance(0.5)
        self.assertEqual(owner.changes, [(0.0, True), (HEARTBEAT + LEASE, False)])
        self.assertEqual(owner.locks.resets, 1)
        self.assertEqual(self.database.holders, {})
        database = owner.ownership.database
        assert database is not None
        self.assertEqual((database.up, database.since), (False, HEARTBEAT + LEASE))
        self.assertIn(f"{LEASE:g} s", database.last_error or "")

    def test_an_owner_never_outlives_its_last_answered_query_by_the_lease(self) -> None:
        """Whatever the order of answers, the owner stops by LEASE after sending the last
        query that was answered, before the server could give its lock away."""
        owner = self.instance()  # owner until 4.0 by its lock's answer at 0.0
        owner.locks.hang = True
        self.clock.advance(2.0)
        self.clock.advance(1.0)
        owner.locks.release_hung()  # the beat sent at 2.0 is answered late, at 3.0
        self.assertTrue(owner.role.owner)
        self.clock.advance(2.5)  # the beat sent at 4.0 hangs
        self.assertTrue(owner.role.owner)
        self.clock.advance(0.5)
        self.assertEqual(owner.changes, [(0.0, True), (2.0 + LEASE, False)])

    def test_a_failed_heartbeat_steps_down_at_once_and_the_lock_comes_back_with_the_db(
            self) -> None:
        owner = self.instance()
        other = self.instance()
        self.database.up = False
        self.clock.advance(HEARTBEAT)
        self.assertEqual(owner.changes, [(0.0, True), (HEARTBEAT, False)])
        self.assertEqual(self.database.holders, {})
        for instance in (owner, other):
            database = instance.ownership.database
            assert database is not None
            self.assertEqual((database.up, database.last_error), (False, "connection refused"))
        self.clock.advance(30)
        self.assertFalse(owner.role.owner or other.role.owner)
        self.database.up = True
        self.clock.advance(POLL)
        self.assertEqual(sum(instance.role.owner for instance in (owner, other)), 1)
        self.assertTrue(owner.ownership.database.up)  # type: ignore[union-attr]

    def test_a_lost_connection_steps_down_at_once(self) -> None:
        owner = self.instance()
        self.clock.advance(0.5)
        owner.locks.lost("server closed the connection unexpectedly")
        self.assertEqual(owner.changes, [(0.0, True), (0.5, False)])
        self.assertEqual(owner.locks.resets, 1)

    def test_a_lock_granted_after_the_lease_would_have_ended_is_let_go(self) -> None:
        instance = self.instance(sn=None)
        instance.locks.hang = True
        instance.server.link_up("SN001")
        self.clock.advance(LEASE)
        instance.locks.hang = False
        instance.locks.release_hung()
        self.assertEqual((instance.role.owner, instance.changes), (False, []))
        self.assertEqual(self.database.holders, {})

    def test_a_lock_granted_for_a_serial_gone_meanwhile_is_unlocked(self) -> None:
        instance = self.instance(sn=None)
        instance.locks.hang = True
        instance.server.link_up("SN001")
        instance.server.link_up("SN002")  # before the first try was answered
        instance.locks.hang = False
        instance.locks.release_hung()  # SN001 granted, then SN002
        self.assertEqual((instance.role.owner, instance.role.sn), (True, "SN002"))
        self.assertEqual(self.database.holders, {lock_key("SN002"): instance.locks})
        self.assertEqual(instance.locks.resets, 0)

    def test_token_changes_reach_the_owner_of_that_serial_only(self) -> None:
        owner = self.instance()
        standby = self.instance()
        for instance in (owner, standby):
            instance.locks.notify("SN001:alice@example")
            instance.locks.notify("OTHER:bob@example")
        self.assertEqual((owner.tokens, standby.tokens), (["SN001:alice@example"], []))

    def test_another_serial_at_the_same_address_gives_up_the_old_lock(self) -> None:
        instance = self.instance()
        instance.server.link_up("SN002")
        self.assertEqual(instance.changes, [(0.0, True), (0.0, False), (0.0, True)])
        self.assertEqual(self.database.holders, {lock_key("SN002"): instance.locks})

    def test_stopping_steps_down_then_closes_the_connection(self) -> None:
        owner = self.instance()
        standby = self.instance()
        owner.stop()
        self.assertEqual((owner.changes[-1], owner.locks.closed), ((0.0, False), True))
        self.clock.advance(POLL)
        self.assertTrue(standby.role.owner)

    def test_lock_keys_are_stable_and_differ_by_serial(self) -> None:
        self.assertEqual(lock_key("SN001"), lock_key("SN001"))
        self.assertNotEqual(lock_key("SN001"), lock_key("SN002"))
        self.assertTrue(-2**63 <= lock_key("SN001") < 2**63)


ALICE = "SN001:alice@example"
DIGEST = token_digest("ab" * 32)


class AnswerRelayTests(TestCase):
    """A device answers through the standby: the owner hears it before the MX says so."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.database = Database()
        self.owner = Instance(self, self.database, self.clock)
        self.standby = Instance(self, self.database, self.clock)
        self.logged = logged(self, "mxproxy.ownership")

    def test_an_answer_on_the_standby_reaches_the_owners_observers_only(self) -> None:
        timers = len(self.clock.getDelayedCalls())
        told = self.standby.role.tell_owner(ALICE, 21, DIGEST)
        self.assertIsNone(self.successResultOf(told))
        self.assertEqual((self.owner.answers, self.standby.answers), ([(ALICE, 21, DIGEST)], []))
        self.assertEqual(len(self.clock.getDelayedCalls()), timers)  # no wait left behind

    def test_the_payload_names_the_user_the_call_and_the_digest_only(self) -> None:
        payloads: list[str] = []
        self.owner.locks.answering = payloads.append
        self.standby.role.tell_owner("SN001:alice smith@example", 21, DIGEST)
        self.assertEqual(payloads, [f"SN001:alice smith@example 21 {DIGEST}"])

    def test_answers_for_another_mx_or_not_in_mxproxys_form_are_ignored(self) -> None:
        for payload in (f"OTHER:bob@example 21 {DIGEST}", f"{ALICE} 21 {'ab' * 32}x",
                        f"{ALICE} call {DIGEST}", f"{ALICE} {'1' * 19} {DIGEST}", "", ALICE):
            self.owner.locks.answering(payload)
        self.assertEqual(self.owner.answers, [])
        self.owner.locks.answering(f"{ALICE} 21 {DIGEST}")
        self.assertEqual(self.owner.answers, [(ALICE, 21, DIGEST)])

    def test_a_standby_that_owns_no_longer_hears_answers(self) -> None:
        self.owner.server.link_down()
        self.standby.role.tell_owner(ALICE, 21, DIGEST)
        self.assertEqual(self.owner.answers, [])

    def test_a_database_that_does_not_answer_lets_the_answer_go_on_logged_once(self) -> None:
        self.standby.locks.hang = True
        told = self.standby.role.tell_owner(ALICE, 21, DIGEST)
        self.clock.advance(ANSWER_WAIT - 0.01)
        self.assertNoResult(told)
        self.clock.advance(0.01)
        self.assertIsNone(self.successResultOf(told))
        again = self.standby.role.tell_owner(ALICE, 22, DIGEST)
        self.clock.advance(ANSWER_WAIT)
        self.successResultOf(again)
        self.assertEqual(len([line for line in self.logged if "could not tell" in line]), 1)
        self.assertNotIn(DIGEST, "\n".join(self.logged))
        self.standby.locks.hang = False
        self.standby.locks.release_hung()  # late: heard, but the answer went on meanwhile
        self.successResultOf(self.standby.role.tell_owner(ALICE, 23, DIGEST))
        self.standby.locks.hang = True
        self.standby.role.tell_owner(ALICE, 24, DIGEST)
        self.clock.advance(ANSWER_WAIT)  # told once in time: a new failure is news
        self.assertEqual(len([line for line in self.logged if "could not tell" in line]), 2)

    def test_a_failed_word_to_the_owner_drops_the_lock_connection(self) -> None:
        """As any failed query: the thread dropped the connection, and its locks with it."""
        self.database.up = False
        told = self.standby.role.tell_owner(ALICE, 21, DIGEST)
        self.assertIsNone(self.successResultOf(told))
        assert self.standby.ownership.database is not None
        self.assertEqual((self.standby.locks.resets, self.standby.ownership.database.up),
                         (1, False))
        self.assertEqual(len([line for line in self.logged if "could not tell" in line]), 1)

    def test_with_one_instance_there_is_nobody_to_tell(self) -> None:
        ownership = Ownership(None, self.clock)
        role = ownership.role(FakeServer())  # type: ignore[arg-type]
        self.assertIsNone(self.successResultOf(role.tell_owner(ALICE, 21, DIGEST)))
