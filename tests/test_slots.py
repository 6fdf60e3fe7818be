"""A provider's in-flight slots on a Clock: turns round the waiting fan-outs, the room a flood
gives up, deadlines."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.push.slots import FanOut, Slots


class SlotsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[str, bool]] = []

    def slots(self, limit: int, queue: int) -> Slots:
        slots = Slots(self.clock, limit, queue)
        self.assertTrue(self.successResultOf(slots.acquire(FanOut(30.0))))  # holds the slot
        return slots

    def acquire(self, slots: Slots, fan_out: FanOut, name: str) -> Deferred[bool]:
        """Acquire, noting ``name`` and the outcome in :attr:`fired` when it comes."""
        turn = slots.acquire(fan_out)
        turn.addCallback(lambda granted: self.fired.append((name, granted)))
        return turn

    def test_a_freed_slot_goes_to_the_waiting_fan_outs_in_turn(self) -> None:
        slots = self.slots(limit=1, queue=10)
        flood, call, late = FanOut(30.0), FanOut(30.0), FanOut(30.0)
        for n in range(4):
            self.acquire(slots, flood, f"flood{n}")
        self.acquire(slots, call, "call")
        self.acquire(slots, late, "late")
        self.assertEqual((slots.busy, slots.waiting, self.fired), (1, 6, []))
        for _ in range(6):
            slots.release()
        self.assertEqual([name for name, _ in self.fired],
                         ["flood0", "call", "late", "flood1", "flood2", "flood3"])
        slots.release()
        self.assertEqual((slots.busy, slots.waiting), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # every deadline timer cancelled

    def test_a_full_queue_drops_the_newest_push_of_the_largest_share(self) -> None:
        slots = self.slots(limit=1, queue=3)
        flood, call, other, fourth = FanOut(30.0), FanOut(30.0), FanOut(30.0), FanOut(30.0)
        for n in range(3):
            self.acquire(slots, flood, f"flood{n}")
        self.acquire(slots, call, "call")  # the flood gives up its newest
        self.assertEqual(self.fired, [("flood2", False)])
        self.acquire(slots, other, "other")  # the flood still has the most
        self.assertEqual(self.fired[1:], [("flood1", False)])
        # Every fan-out has one waiting: a newcomer, or one more of theirs, is the one refused.
        self.acquire(slots, fourth, "fourth")
        self.acquire(slots, call, "call again")
        self.assertEqual(self.fired[2:], [("fourth", False), ("call again", False)])
        self.assertEqual(slots.waiting, 3)
        for _ in range(3):
            slots.release()
        self.assertEqual(self.fired[4:], [("flood0", True), ("call", True), ("other", True)])

    def test_the_pushes_of_a_fan_out_wait_until_its_deadline(self) -> None:
        slots = self.slots(limit=1, queue=10)
        early, later = FanOut(30.0), FanOut(40.0)
        self.acquire(slots, early, "early0")
        self.acquire(slots, later, "later")
        self.acquire(slots, early, "early1")
        self.clock.advance(30.0)
        self.assertEqual(self.fired, [("early0", False), ("early1", False)])
        self.assertEqual(slots.waiting, 1)
        slots.release()
        self.assertEqual(self.fired[2:], [("later", True)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_room_is_made_only_from_a_share_larger_than_the_newcomers(self) -> None:
        slots = self.slots(limit=1, queue=4)
        first, second = FanOut(30.0), FanOut(30.0)
        for n in range(2):
            self.acquire(slots, first, f"first{n}")
            self.acquire(slots, second, f"second{n}")
        self.acquire(slots, first, "first2")  # 2 against 2: it would only swap who has more
        self.assertEqual(self.fired, [("first2", False)])
        self.acquire(slots, FanOut(30.0), "third")  # 0 against 2: room is made
        self.assertEqual(self.fired[1:], [("first1", False)])
        self.assertEqual(slots.waiting, 4)

    def test_no_queue_refuses_at_once(self) -> None:
        slots = self.slots(limit=1, queue=0)
        self.assertFalse(self.successResultOf(slots.acquire(FanOut(30.0))))
        slots.release()
        self.assertTrue(self.successResultOf(slots.acquire(FanOut(30.0))))
