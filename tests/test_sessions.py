"""The auth cache and the failed-login throttle, on a driven clock; opening user sessions
against the simulator."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.csta.client import CSTAFactory, open_session
from mxproxy.csta.errors import LoginError
from mxproxy.csta.frame import FrameTooLarge
from mxproxy.sessions import (
    Attempt,
    AuthCache,
    Identity,
    LoginThrottle,
    SessionPool,
    password_hash,
)
from mxproxy.testing.mxsim import PBX
from tests.support import open_descriptors, serve, settled_descriptors

ALICE = Identity("alice", "43884850000000001", "3001")


class AuthCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = AuthCache(self.clock, ttl=1800)
        self.cache.store("dev", "alice", "secret", ALICE)

    def test_hit_with_the_same_password(self) -> None:
        self.assertEqual(self.cache.check("dev", "alice", "secret"), ALICE)

    def test_other_password_login_or_mx_is_a_miss(self) -> None:
        self.assertIsNone(self.cache.check("dev", "alice", "Secret"))
        self.assertIsNone(self.cache.check("dev", "bob", "secret"))
        self.assertIsNone(self.cache.check("prod", "alice", "secret"))

    def test_expires_after_thirty_minutes(self) -> None:
        self.clock.advance(1799)
        self.assertEqual(self.cache.check("dev", "alice", "secret"), ALICE)
        self.clock.advance(1)
        self.assertIsNone(self.cache.check("dev", "alice", "secret"))

    def test_evict(self) -> None:
        self.cache.evict("dev", "alice")
        self.assertIsNone(self.cache.check("dev", "alice", "secret"))

    def test_when_the_entry_of_these_credentials_lapses(self) -> None:
        self.clock.advance(100)
        self.assertEqual(self.cache.expires("dev", "alice", "secret"), 1800)
        self.assertIsNone(self.cache.expires("dev", "alice", "Secret"))
        self.cache.store("dev", "alice", "secret", ALICE)
        self.assertEqual(self.cache.expires("dev", "alice", "secret"), 1900)
        self.clock.advance(1800)
        self.assertIsNone(self.cache.expires("dev", "alice", "secret"))

    def test_knows_a_login_until_it_expires(self) -> None:
        self.assertTrue(self.cache.knows("dev", "alice"))
        self.assertFalse(self.cache.knows("dev", "bob"))
        self.clock.advance(1800)
        self.assertFalse(self.cache.knows("dev", "alice"))

    def test_the_password_is_not_kept(self) -> None:
        entries = repr(self.cache.__dict__)
        self.assertNotIn("secret", entries)
        self.assertNotEqual(password_hash("alice", "secret"), password_hash("bob", "secret"))


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock)

    def fail(self, times: int, *attempts: Attempt) -> None:
        for _ in range(times):
            for attempt in attempts:
                self.throttle.failed(attempt)

    def test_five_failures_of_a_login_in_a_minute_block_it_for_sixty_seconds(self) -> None:
        self.fail(1, *(Attempt("dev", "alice", f"192.0.2.{n}") for n in range(4)))
        self.assertIsNone(self.throttle.account_wait("dev", "alice"))
        self.fail(1, Attempt("dev", "alice", "192.0.2.9"))
        self.assertEqual(self.throttle.account_wait("dev", "alice"), 60)
        self.assertIsNone(self.throttle.account_wait("dev", "bob"))
        self.assertIsNone(self.throttle.account_wait("prod", "alice"))
        self.clock.advance(59)
        self.assertEqual(self.throttle.account_wait("dev", "alice"), 1)
        self.clock.advance(1)
        self.assertIsNone(self.throttle.account_wait("dev", "alice"))

    def test_failures_spread_over_more_than_a_minute_do_not_block(self) -> None:
        for _ in range(10):
            self.fail(1, FROM_A)
            self.clock.advance(15)
        self.assertIsNone(self.throttle.account_wait("dev", "alice"))
        self.assertIsNone(self.throttle.address_wait(FROM_A))

    def test_blocks_double_up_to_an_hour(self) -> None:
        seen = []
        for _ in range(8):
            self.fail(5, FROM_A)
            wait = self.throttle.account_wait("dev", "alice")
            assert wait is not None
            seen.append(wait)
            self.clock.advance(wait)
        self.assertEqual(seen, [60, 120, 240, 480, 960, 1920, 3600, 3600])

    def test_one_address_failing_at_one_login_keeps_its_other_logins(self) -> None:
        self.fail(5, FROM_A)
        self.assertEqual(self.throttle.address_wait(FROM_A), 60)
        self.assertIsNone(self.throttle.address_wait(Attempt("dev", "bob", "192.0.2.1")))
        self.assertIsNone(self.throttle.account_wait("dev", "bob"))

    def test_an_address_failing_at_fifty_logins_is_blocked(self) -> None:
        self.fail(1, *(Attempt("dev", f"guess{n}", "192.0.2.1") for n in range(49)))
        self.assertIsNone(self.throttle.address_wait(Attempt("dev", "bob", "192.0.2.1")))
        self.fail(1, Attempt("dev", "guess49", "192.0.2.1"))
        self.assertEqual(self.throttle.address_wait(Attempt("dev", "bob", "192.0.2.1")), 60)
        self.assertIsNone(self.throttle.address_wait(Attempt("dev", "bob", "192.0.2.2")))
        self.assertIsNone(self.throttle.account_wait("dev", "bob"))

    def test_success_clears_the_account_not_the_address(self) -> None:
        self.fail(1, *(Attempt("dev", f"guess{n}", "192.0.2.1") for n in range(45)))
        self.fail(5, FROM_A)
        self.throttle.succeeded(FROM_A)
        self.assertIsNone(self.throttle.account_wait("dev", "alice"))
        self.assertEqual(self.throttle.address_wait(FROM_A), 60)  # 50 failures from there

    def test_a_success_elsewhere_leaves_this_addresss_budget_for_the_login(self) -> None:
        self.fail(4, FROM_A)
        self.throttle.succeeded(Attempt("dev", "alice", "198.51.100.7"))  # the real user
        self.fail(1, FROM_A)
        self.assertIsNone(self.throttle.account_wait("dev", "alice"))
        self.assertEqual(self.throttle.address_wait(FROM_A), 60)

    def test_the_most_blocked_budget_decides(self) -> None:
        self.fail(5, FROM_A)
        self.clock.advance(30)
        self.fail(1, *(Attempt("dev", f"guess{n}", "192.0.2.1") for n in range(50)))
        self.assertEqual(self.throttle.address_wait(FROM_A), 60)
        self.assertEqual(self.throttle.address_wait(Attempt("dev", "bob", "192.0.2.1")), 60)
        self.assertEqual(self.throttle.account_wait("dev", "alice"), 30)

    def test_stale_records_are_forgotten(self) -> None:
        """Memory stays bounded under a flood of failures: each makes three records."""
        self.clock.advance(1_700_000_000)
        self.fail(1, *(Attempt("dev", f"guess{n}", f"192.0.2.{n}") for n in range(100)))
        self.clock.advance(61)
        self.fail(1, FROM_A)
        self.assertEqual(len(self.throttle._records), 3)


FROM_A = Attempt("dev", "alice", "192.0.2.1")


class SessionOpeningTests(TestCase):
    """Whatever ends a login on a fresh link closes that link (issue 10, point 3): not only the
    MX's refusals but a login lxml cannot put in XML, one too large for a frame, and the
    caller cancelling. The test process holds both ends, so a leak shows in its descriptors."""

    async def setUp(self) -> None:
        self.pbx = PBX(sn="TEST1")
        self.pbx.add_user("alice", "alice-secret", "3001")
        self.address = serve(self, self.pbx)
        self.pool = SessionPool(reactor, self.address, CSTAFactory(reactor))
        self.addCleanup(self.pool.close_all)
        # A first link allocates what the reactor keeps for good (the resolver's wake-up pipe).
        protocol, _ = await open_session(reactor, self.address, CSTAFactory(reactor), "alice",
                                         "alice-secret")
        [session] = self.pbx.sessions
        protocol.close()
        await session.when_closed()

    async def assertClosesItsLink(self, login: str, password: str,
                                  error: type[Exception]) -> None:
        before = open_descriptors()
        for _ in range(20):
            with self.assertRaises(error):
                await self.pool.session(login, password)
        self.assertEqual(await settled_descriptors(before), before)
        self.assertEqual(self.pbx.sessions, [])
        self.assertEqual(len(self.pool), 0)

    async def test_control_character_in_the_login(self) -> None:
        await self.assertClosesItsLink("a\x00b", "x", ValueError)

    async def test_login_too_large_for_a_frame(self) -> None:
        await self.assertClosesItsLink("a" * 70_000, "x", FrameTooLarge)

    async def test_refused_login(self) -> None:
        await self.assertClosesItsLink("alice", "wrong", LoginError)

    async def test_cancelled_while_the_login_is_unanswered(self) -> None:
        self.pbx.faults.no_reply = frozenset({"loginRequest"})
        before = open_descriptors()
        for _ in range(20):
            opening = Deferred.fromCoroutine(open_session(
                reactor, self.address, CSTAFactory(reactor), "alice", "alice-secret"))
            await self.pbx.wait_for("loginRequest")
            opening.cancel()
            with self.assertRaises(CancelledError):
                await opening
        self.assertEqual(await settled_descriptors(before), before)
        self.assertEqual(self.pbx.sessions, [])
