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
from mxproxy.sessions import AuthCache, Identity, LoginThrottle, SessionPool, password_hash
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

    def test_the_password_is_not_kept(self) -> None:
        entries = repr(self.cache.__dict__)
        self.assertNotIn("secret", entries)
        self.assertNotEqual(password_hash("alice", "secret"), password_hash("bob", "secret"))


class ThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock)

    def fail(self, times: int, *keys: object) -> None:
        for _ in range(times):
            self.throttle.failed(*keys)

    def test_five_failures_in_a_minute_block_for_sixty_seconds(self) -> None:
        self.fail(4, "k")
        self.assertIsNone(self.throttle.retry_after("k"))
        self.fail(1, "k")
        self.assertEqual(self.throttle.retry_after("k"), 60)
        self.clock.advance(59)
        self.assertEqual(self.throttle.retry_after("k"), 1)
        self.clock.advance(1)
        self.assertIsNone(self.throttle.retry_after("k"))

    def test_failures_spread_over_more_than_a_minute_do_not_block(self) -> None:
        for _ in range(10):
            self.fail(1, "k")
            self.clock.advance(15)
        self.assertIsNone(self.throttle.retry_after("k"))

    def test_blocks_double_up_to_an_hour(self) -> None:
        seen = []
        for _ in range(8):
            self.fail(5, "k")
            wait = self.throttle.retry_after("k")
            assert wait is not None
            seen.append(wait)
            self.clock.advance(wait)
        self.assertEqual(seen, [60, 120, 240, 480, 960, 1920, 3600, 3600])

    def test_success_clears_a_key(self) -> None:
        self.fail(5, "k")
        self.throttle.succeeded("k")
        self.assertIsNone(self.throttle.retry_after("k"))

    def test_the_most_blocked_key_decides(self) -> None:
        self.fail(5, "login")
        self.clock.advance(30)
        self.fail(5, "address")
        self.assertEqual(self.throttle.retry_after("login", "address"), 60)
        self.assertEqual(self.throttle.retry_after("login"), 30)


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
