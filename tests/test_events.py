"""The event hub on a task.Clock: ids, the replay buffer and resume, following users, the
keepalive, and bounded subscriber queues."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.events import (
    CALL,
    COMMENT,
    CONTACT,
    DISPLACED,
    KEEPALIVE,
    OVERFLOW,
    REPLAY_EVENTS,
    REPLAY_SECONDS,
    STOPPED,
    STREAMS_PER_USER,
    VOICEMAIL,
    EventHub,
    Subscriber,
)

ALICE, BOB = "1001", "1002"
EPOCH = "0a0b0c0d"


def frames(data: bytes) -> list[tuple[str, str, Any]]:
    """(event, id, data) of each event in a text/event-stream; comments left out."""
    parsed = []
    for block in data.split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n")
                      if line and not line.startswith(b":"))
        if fields:
            parsed.append((fields[b"event"].decode(), fields[b"id"].decode(),
                           json.loads(fields[b"data"])))
    return parsed


class Client:
    """What a stream would have written, and why the hub cut it."""

    def __init__(self, hub: EventHub, jid: str, last_event_id: str | None = None) -> None:
        self.written = b""
        self.cuts: list[str] = []
        self.subscriber: Subscriber = hub.subscribe(jid, self.write, self.cuts.append,
                                                    last_event_id)

    def write(self, data: bytes) -> None:
        self.written += data

    def events(self) -> list[tuple[str, str, Any]]:
        return frames(self.written)

    def numbers(self) -> list[int]:
        """The ``n`` of each event's data."""
        return [data["n"] for _, _, data in self.events()]


class HubTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.hub = EventHub(self.clock, epoch=EPOCH)
        self.follows: list[tuple[str, bool]] = []
        self.hub.on_follow(lambda jid, followed: self.follows.append((jid, followed)))
        self.addCleanup(self.hub.stopService)

    def publish(self, jid: str, *numbers: int) -> list[str]:
        """Events numbered ``numbers`` for ``jid``; their ids."""
        ids = []
        for n in numbers:
            event = self.hub.publish(jid, CALL, {"n": n})
            assert event is not None
            ids.append(event.id)
        return ids


class PublishTests(HubTestCase):
    def test_events_reach_the_stream_in_order_as_frames(self) -> None:
        client = Client(self.hub, ALICE)
        self.hub.publish(ALICE, CALL, {"callId": 7, "state": "ringing", "peerName": "Zoë\n"})
        self.hub.publish(ALICE, VOICEMAIL, {"id": "12"})
        self.assertEqual(client.written,
                         b'event: call\nid: 0a0b0c0d-1\ndata: {"callId":7,"state":"ringing",'
                         b'"peerName":"Zo\xc3\xab\\n"}\n\n'
                         b'event: voicemail\nid: 0a0b0c0d-2\ndata: {"id":"12"}\n\n')

    def test_a_user_nobody_follows_gets_nothing_kept(self) -> None:
        self.assertIsNone(self.hub.publish(ALICE, CALL, {"n": 1}))
        self.assertEqual(self.hub.followed(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ids_increase_per_user_and_are_never_shared(self) -> None:
        Client(self.hub, ALICE), Client(self.hub, BOB)
        ids = self.publish(ALICE, 1) + self.publish(BOB, 2) + self.publish(ALICE, 3)
        self.assertEqual(ids, [f"{EPOCH}-1", f"{EPOCH}-2", f"{EPOCH}-3"])

    def test_publish_all_gives_each_followed_user_the_event_with_an_id_of_their_own(
            self) -> None:
        alice, bob = Client(self.hub, ALICE), Client(self.hub, BOB)
        self.assertEqual(self.hub.publish_all(CONTACT, {"jid": "9", "change": "removed"}), 2)
        self.assertEqual(alice.events(),
                         [("contact", f"{EPOCH}-1", {"jid": "9", "change": "removed"})])
        self.assertEqual(bob.events(),
                         [("contact", f"{EPOCH}-2", {"jid": "9", "change": "removed"})])

    def test_every_stream_of_a_user_gets_the_event_and_no_other_users(self) -> None:
        first, second, bob = Client(self.hub, ALICE), Client(self.hub, ALICE), Client(self.hub,
                                                                                     BOB)
        self.publish(ALICE, 1)
        self.assertEqual((first.numbers(), second.numbers(), bob.numbers()), ([1], [1], []))

    def test_a_stream_whose_write_fails_is_cut_and_the_others_get_the_event(self) -> None:
        def broken(data: bytes) -> None:
            raise RuntimeError("gone")

        cuts: list[str] = []
        self.hub.subscribe(ALICE, broken, cuts.append)
        working = Client(self.hub, ALICE)
        self.publish(ALICE, 1, 2)
        self.assertEqual(working.numbers(), [1, 2])
        self.assertEqual(cuts, [STOPPED])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ResumeTests(HubTestCase):
    def test_resume_replays_exactly_what_was_missed_then_goes_live(self) -> None:
        first = Client(self.hub, ALICE)
        ids = self.publish(ALICE, 1, 2, 3)
        first.subscriber.close()
        self.publish(ALICE, 4, 5)
        Client(self.hub, BOB)
        self.publish(BOB, 99)
        resumed = Client(self.hub, ALICE, last_event_id=ids[1])
        self.assertEqual(resumed.numbers(), [3, 4, 5])
        self.publish(ALICE, 6)
        self.assertEqual(resumed.numbers(), [3, 4, 5, 6])
        self.assertEqual(first.numbers(), [1, 2, 3])

    def test_resume_from_the_last_event_replays_nothing(self) -> None:
        client = Client(self.hub, ALICE)
        [last] = self.publish(ALICE, 1)
        client.subscriber.close()
        self.assertEqual(Client(self.hub, ALICE, last_event_id=last).written, b"")

    def test_an_id_older_than_the_last_events_kept_gets_reset(self) -> None:
        Client(self.hub, ALICE)
        ids = self.publish(ALICE, *range(1, REPLAY_EVENTS + 11))
        kept = Client(self.hub, ALICE, last_event_id=ids[9])
        self.assertEqual(kept.numbers(), list(range(11, REPLAY_EVENTS + 11)))
        lost = Client(self.hub, ALICE, last_event_id=ids[8])
        self.assertEqual(lost.events(), [("reset", f"{EPOCH}-{REPLAY_EVENTS + 10}",
                                          {"reason": "expired"})])

    def test_an_id_older_than_ten_minutes_gets_reset(self) -> None:
        Client(self.hub, ALICE)
        ids = self.publish(ALICE, 1, 2)
        self.clock.advance(REPLAY_SECONDS - 1)
        self.publish(ALICE, 3)
        self.assertEqual(Client(self.hub, ALICE, last_event_id=ids[0]).numbers(), [2, 3])
        self.clock.advance(1)
        self.assertEqual(Client(self.hub, ALICE, last_event_id=ids[0]).events(),
                         [("reset", f"{EPOCH}-3", {"reason": "expired"})])
        self.assertEqual(Client(self.hub, ALICE, last_event_id=ids[1]).numbers(), [3])

    def test_an_id_the_hub_did_not_issue_gets_reset(self) -> None:
        Client(self.hub, ALICE)
        self.publish(ALICE, 1)
        for foreign in ("ffffffff-1", f"{EPOCH}-2", f"{EPOCH}-x", "1", "", "é" * 40,
                        f"{EPOCH}-{'9' * 40}"):
            self.assertEqual(Client(self.hub, ALICE, last_event_id=foreign).events(),
                             [("reset", f"{EPOCH}-1", {"reason": "unknown"})], foreign)

    def test_resuming_from_a_reset_misses_nothing_after_it(self) -> None:
        Client(self.hub, ALICE)
        self.publish(ALICE, 1)
        [(_, reset_id, _)] = Client(self.hub, ALICE, last_event_id="ffffffff-1").events()
        self.publish(ALICE, 2)
        self.assertEqual(Client(self.hub, ALICE, last_event_id=reset_id).numbers(), [2])

    def forgotten(self) -> str:
        """Alice had a stream with one event, then none for longer than the hub remembers her;
        the id of her last event."""
        client = Client(self.hub, ALICE)
        [last] = self.publish(ALICE, 1)
        client.subscriber.close()
        self.clock.advance(REPLAY_SECONDS + KEEPALIVE)
        self.assertEqual(self.hub.followed(), [])
        return last

    def test_an_event_dropped_while_the_user_was_not_followed_means_reset(self) -> None:
        last = self.forgotten()
        self.assertIsNone(self.hub.publish(ALICE, VOICEMAIL, {"id": "3"}))
        self.assertEqual(Client(self.hub, ALICE, last_event_id=last).events(),
                         [("reset", f"{EPOCH}-2", {"reason": "expired"})])

    def test_a_change_for_all_while_nobody_was_followed_means_reset(self) -> None:
        last = self.forgotten()
        self.assertEqual(self.hub.publish_all(CONTACT, {"jid": "9", "change": "added"}), 0)
        self.assertEqual(Client(self.hub, ALICE, last_event_id=last).events(),
                         [("reset", f"{EPOCH}-2", {"reason": "expired"})])

    def test_a_user_followed_again_after_a_quiet_spell_resumes_without_reset(self) -> None:
        last = self.forgotten()
        self.assertEqual(Client(self.hub, ALICE, last_event_id=last).written, b"")


class FollowTests(HubTestCase):
    def test_followed_from_the_first_stream_until_ten_minutes_after_the_last(self) -> None:
        first, second = Client(self.hub, ALICE), Client(self.hub, ALICE)
        self.assertEqual(self.follows, [(ALICE, True)])
        first.subscriber.close()
        self.clock.advance(3600)  # an open stream keeps the user followed, events or not
        second.subscriber.close()
        self.clock.advance(REPLAY_SECONDS - KEEPALIVE)
        self.assertEqual((self.hub.followed(), self.follows), ([ALICE], [(ALICE, True)]))
        self.assertIsNotNone(self.hub.publish(ALICE, CALL, {"n": 1}))
        self.clock.advance(2 * KEEPALIVE)
        self.assertEqual(self.follows, [(ALICE, True), (ALICE, False)])
        self.assertEqual(self.hub.followed(), [])
        self.assertIsNone(self.hub.publish(ALICE, CALL, {"n": 2}))
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer once nobody is followed")

    def test_a_stream_within_the_window_keeps_the_user_followed_without_a_new_start(
            self) -> None:
        Client(self.hub, ALICE).subscriber.close()
        self.clock.advance(REPLAY_SECONDS - KEEPALIVE)
        Client(self.hub, ALICE)
        self.clock.advance(REPLAY_SECONDS * 3)
        self.assertEqual(self.follows, [(ALICE, True)])

    def test_events_older_than_ten_minutes_are_let_go_while_streams_stay_open(self) -> None:
        client = Client(self.hub, ALICE)
        self.publish(ALICE, 1)
        self.clock.advance(REPLAY_SECONDS + KEEPALIVE)
        self.publish(ALICE, 2)
        self.assertEqual([event.data for event in self.hub._users[ALICE].events], [{"n": 2}])
        self.assertEqual(client.numbers(), [1, 2])


class KeepaliveTests(HubTestCase):
    def test_a_comment_every_fifteen_seconds_on_every_stream(self) -> None:
        alice, bob = Client(self.hub, ALICE), Client(self.hub, BOB)
        self.clock.advance(KEEPALIVE - 1)
        self.assertEqual(alice.written, b"")
        self.clock.advance(1)
        self.assertEqual((alice.written, bob.written), (COMMENT, COMMENT))
        self.clock.advance(KEEPALIVE)
        self.assertEqual(alice.written, COMMENT * 2)

    def test_stop_cuts_every_stream_and_stops_the_timer(self) -> None:
        alice, bob = Client(self.hub, ALICE), Client(self.hub, BOB)
        self.hub.stopService()
        self.assertEqual((alice.cuts, bob.cuts), ([STOPPED], [STOPPED]))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class QueueTests(HubTestCase):
    def test_a_paused_stream_gets_what_waited_in_order_when_it_resumes(self) -> None:
        client = Client(self.hub, ALICE)
        self.publish(ALICE, 1)
        client.subscriber.pause()
        self.publish(ALICE, 2, 3)
        self.assertEqual(client.numbers(), [1])
        self.assertGreater(client.subscriber.unsent, 0)
        client.subscriber.resume()
        self.assertEqual((client.numbers(), client.subscriber.unsent), ([1, 2, 3], 0))

    def test_a_stream_paused_again_while_draining_keeps_the_rest(self) -> None:
        client = Client(self.hub, ALICE)
        client.subscriber.pause()
        self.publish(ALICE, 1, 2, 3)
        writes = []

        def write_once(data: bytes) -> None:
            writes.append(data)
            client.subscriber.pause()  # as a transport whose buffer filled up would

        client.subscriber._write = write_once
        client.subscriber.resume()
        self.assertEqual((len(writes), client.subscriber.unsent > 0), (1, True))
        client.subscriber._write = client.write
        client.subscriber.resume()
        self.assertEqual(client.numbers(), [2, 3])

    def test_a_stream_that_does_not_read_is_cut_past_the_limit_and_the_others_go_on(
            self) -> None:
        hub = EventHub(self.clock, epoch=EPOCH, queue_limit=4096)
        self.addCleanup(hub.stopService)
        slow, reading = Client(hub, ALICE), Client(hub, ALICE)
        slow.subscriber.pause()
        unsent = []
        for n in range(100):
            hub.publish(ALICE, CALL, {"n": n, "padding": "x" * 100})
            unsent.append(slow.subscriber.unsent)
        self.assertEqual(slow.cuts, [OVERFLOW])
        self.assertLessEqual(max(unsent), 4096 + 200)
        self.assertEqual(slow.written, b"")
        self.assertEqual(reading.numbers(), list(range(100)))
        self.assertEqual(hub.streams(), 1)

    def test_a_new_stream_beyond_the_cap_displaces_the_oldest(self) -> None:
        clients = [Client(self.hub, ALICE) for _ in range(STREAMS_PER_USER + 1)]
        self.assertEqual([client.cuts for client in clients],
                         [[DISPLACED]] + [[]] * STREAMS_PER_USER)
        self.publish(ALICE, 1)
        self.assertEqual([client.numbers() for client in clients],
                         [[]] + [[1]] * STREAMS_PER_USER)
        self.assertEqual(self.hub.streams(), STREAMS_PER_USER)
        clients[0].subscriber.close()  # its stream ending later changes nothing
        self.assertEqual(self.hub.streams(), STREAMS_PER_USER)
