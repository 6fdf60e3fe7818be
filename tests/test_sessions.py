"""The auth cache and the failed-login throttle, on a driven clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.sessions import AuthCache, Identity, LoginThrottle, password_hash

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
