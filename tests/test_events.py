"""The event hub on a Clock: ids, the replay buffer's bounds in count and age, reset, and the
users it forgets."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.events import KEEP, EventHub


class Sink:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def ids(self) -> list[str]:
        return [frame.split(b"\n")[1].decode()[4:] for frame in self.frames]

    def kinds(self) -> list[str]:
        return [frame.split(b"\n")[0].decode()[7:] for frame in self.frames]


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = EventHub(self.clock, epoch="e1")

    def test_only_followed_users_are_kept(self) -> None:
        self.hub.publish("a", "call", {"n": 1})
        sink = Sink()
        self.hub.subscribe("a", sink, "e1-0")
        self.assertEqual(sink.frames, [])
        self.hub.publish("a", "call", {"n": 2})
        self.assertEqual(sink.frames, [b'event: call\nid: e1-1\ndata: {"n":2}\n\n'])

    def test_replay_within_count_and_age(self) -> None:
        sink = Sink()
        stop = self.hub.subscribe("a", sink, None)
        for n in range(KEEP + 10):
            self.hub.publish("a", "call", {"n": n})
        stop()
        resumed = Sink()
        self.hub.subscribe("a", resumed, f"e1-{KEEP + 5}")
        self.assertEqual(resumed.ids(), [f"e1-{n}" for n in range(KEEP + 6, KEEP + 11)])
        too_old = Sink()
        self.hub.subscribe("a", too_old, "e1-5")
        self.assertEqual(too_old.kinds(), ["reset"])
        self.clock.advance(601)
        aged = Sink()
        self.hub.subscribe("a", aged, f"e1-{KEEP + 5}")
        self.assertEqual(aged.kinds(), ["reset"])

    def test_ids_of_another_process_or_the_future_reset(self) -> None:
        self.hub.subscribe("a", Sink(), None)
        self.hub.publish("a", "call", {})
        for last in ("e0-1", "e1-99", "garbage", ""):
            sink = Sink()
            self.hub.subscribe("a", sink, last)
            self.assertEqual(sink.kinds(), ["reset"], last)

    def test_idle_users_are_forgotten(self) -> None:
        stop = self.hub.subscribe("a", Sink(), None)
        self.hub.publish("a", "call", {})
        stop()
        self.clock.advance(661)
        self.hub.subscribe("b", Sink(), None)  # a look at who is idle
        self.hub.publish("a", "call", {})
        sink = Sink()
        self.hub.subscribe("a", sink, "e1-1")
        self.assertEqual(sink.kinds(), ["reset"])

    def test_publish_all_reaches_every_followed_user(self) -> None:
        a, b = Sink(), Sink()
        self.hub.subscribe("a", a, None)
        self.hub.subscribe("b", b, None)
        self.hub.publish_all("link", {"state": "down"})
        self.assertEqual((a.kinds(), b.kinds()), (["link"], ["link"]))
        self.assertEqual(len(self.hub), 2)
