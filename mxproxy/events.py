"""The live events of one MX's users, for the event streams (``GET /mx/<mx>/events``): typed
events with increasing ids, a short per-user memory to resume from, and subscribers whose queues
are bounded.

An event is for one user: a kind (:data:`KINDS`; :data:`RESET` goes to one stream alone), an
id, and a JSON object. Ids read ``<epoch>-<n>``: the epoch is drawn once per process and ``n``
counts the hub's events, so a user's ids increase and are never reused, not even after the hub
forgot the user, and an id from before a restart is known to be foreign: a stream resuming from
it gets ``reset``, never a replay that skips or repeats. (``n`` counts the events of all the
MX's users: it tells a user how busy the MX is, nothing more.)

The hub follows a user while a stream of theirs is open and for :data:`REPLAY_SECONDS` after
the last one closed (``on_follow`` observers start and stop what feeds it: the user's call
monitor), and keeps their last :data:`REPLAY_EVENTS` events of at most that age. A stream
opened with ``Last-Event-ID`` gets the events after that id, exactly, or ``reset`` first when
some may be gone: an id older than what is kept, or not one of this hub's. Events for a user
who is not followed are dropped: no stream could resume from them, and a user nobody follows
costs nothing.

The hub speaks ``text/event-stream``: a subscriber gets each event as its frame, and a comment
every :data:`KEEPALIVE` seconds (proxies close connections that stay silent). What a subscriber
cannot write yet (its stream is paused: the client reads slowly) waits in its queue; past
:data:`QUEUE_LIMIT` bytes the subscriber is cut, so a client that stops reading costs a bounded
amount of memory and delays nobody else.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from mxproxy.logs import Logger

KINDS = CALL, VOICEMAIL, CONTACT, LINK = ("call", "voicemail", "contact", "link")
RESET = "reset"
"""The event that tells one stream its resume point is lost: refetch, then follow live."""
REPLAY_EVENTS = 256
REPLAY_SECONDS = 600.0
"""What a user's record keeps: their last 256 events, none older than 10 minutes; and how long
a user stays followed after their last stream closed."""
KEEPALIVE = 15.0
"""Seconds between two comments on every stream."""
QUEUE_LIMIT = 1 << 20
"""Bytes a subscriber may have waiting for a paused stream before it is cut."""
STREAMS_PER_USER = 8
"""Open streams of one user; a new one beyond them displaces the oldest, which is most likely
a connection that died without a word (a phone that changed networks), not a client reading."""
EPOCH = os.urandom(4).hex()
"""This process's epoch, the first part of every event id."""
COMMENT = b":\n\n"

OVERFLOW, DISPLACED, STOPPED = "overflow", "displaced", "stopped"
"""Why the hub cut a subscriber: too much waited for it; a newer stream of the user took its
place; the daemon stops."""

_ID = re.compile(r"([0-9a-f]{1,16})-([0-9]{1,18})")

Write = Callable[[bytes], None]
Cut = Callable[[str], None]
FollowObserver = Callable[[str, bool], None]
"""Receives (JID, followed): True when the hub starts following a user, False when it stops."""

log = Logger(__name__)


@attrs.frozen
class Event:
    """One event of one user; ``encoded`` is ``data`` as one JSON line (shared by the users an
    event goes to), ``at`` when it happened (clock seconds)."""

    seq: int
    id: str
    kind: str
    data: Mapping[str, Any]
    encoded: bytes = attrs.field(repr=False)
    at: float

    def frame(self) -> bytes:
        """The event as ``text/event-stream`` puts it."""
        return b"event: %s\nid: %s\ndata: %s\n\n" % (self.kind.encode(), self.id.encode(),
                                                      self.encoded)


def encode(data: Mapping[str, Any]) -> bytes:
    """``data`` as one line of compact JSON (JSON escapes every line break in strings)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class Subscriber:
    """One open stream of ``jid``. ``write`` hands bytes to its client while the stream is not
    paused; meanwhile they wait here. The hub calls ``on_cut(reason)`` when it gives the stream
    up (:data:`OVERFLOW`, :data:`DISPLACED`, :data:`STOPPED`); the stream calls :meth:`close`
    when it ends, whatever the cause."""

    __slots__ = ("jid", "closed", "_hub", "_write", "_on_cut", "_queue", "_unsent", "_paused")

    def __init__(self, hub: EventHub, jid: str, write: Write, on_cut: Cut) -> None:
        self.jid = jid
        self.closed = False
        self._hub = hub
        self._write = write
        self._on_cut = on_cut
        self._queue: deque[bytes] | None = None  # made when needed: most streams never wait
        self._unsent = 0
        self._paused = False

    @property
    def unsent(self) -> int:
        """Bytes waiting for the stream to resume."""
        return self._unsent

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._paused:
            self._write(data)
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(data)
        self._unsent += len(data)
        if self._unsent > self._hub.queue_limit:
            self._hub.cut(self, OVERFLOW)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        """Write what waited, until the stream pauses again."""
        self._paused = False
        queue = self._queue
        while queue and not self._paused and not self.closed:
            data = queue.popleft()
            self._unsent -= len(data)
            self._write(data)
        if not queue:
            self._queue = None

    def close(self) -> None:
        """The stream ended: forget it (the user stays followed a while, see the module)."""
        self._hub.leave(self)

    def cut(self, reason: str) -> None:
        """Called by the hub once it let go of this subscriber."""
        self.closed = True
        self._queue, self._unsent = None, 0
        self._on_cut(reason)


class _User:
    """What the hub keeps of a followed user. Every event of theirs with a ``seq`` above
    ``floor`` is in ``events``; below it, they may be gone."""

    __slots__ = ("events", "floor", "subscribers", "idle_since")

    def __init__(self, floor: int, now: float) -> None:
        self.events: deque[Event] = deque()
        self.floor = floor
        self.subscribers: list[Subscriber] = []
        self.idle_since = now
        """When the last stream closed (while none is open)."""


class EventHub(Service):
    """The users' events of one MX; a service, so that the daemon's stop closes the streams
    (their clients reconnect to whatever serves next)."""

    def __init__(self, clock: IReactorTime, epoch: str = EPOCH,
                 replay_events: int = REPLAY_EVENTS, replay_seconds: float = REPLAY_SECONDS,
                 keepalive: float = KEEPALIVE, queue_limit: int = QUEUE_LIMIT,
                 streams_per_user: int = STREAMS_PER_USER) -> None:
        self.epoch = epoch
        self.queue_limit = queue_limit
        self.streams_per_user = streams_per_user
        self._clock = clock
        self._replay_events = replay_events
        self._replay_seconds = replay_seconds
        self._keepalive = keepalive
        self._seq = 0
        self._users: dict[str, _User] = {}
        self._observers: list[FollowObserver] = []
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock

    def on_follow(self, observer: FollowObserver) -> None:
        """Call ``observer(jid, followed)`` when the hub starts and stops following a user."""
        self._observers.append(observer)

    def followed(self) -> list[str]:
        """The users whose events are kept."""
        return list(self._users)

    def streams(self) -> int:
        """The subscribers, all users together."""
        return sum(len(user.subscribers) for user in self._users.values())

    # -- producers ----------------------------------------------------------------------------

    def publish(self, jid: str, kind: str, data: Mapping[str, Any]) -> Event | None:
        """Give ``jid`` an event: to their open streams and their record. None (dropped) for a
        user the hub does not follow; its id is spent all the same, so that a stream resuming
        from before it gets ``reset``."""
        user = self._users.get(jid)
        if user is None:
            self._seq += 1
            return None
        return self._keep(jid, user, kind, data, encode(data))

    def publish_all(self, kind: str, data: Mapping[str, Any]) -> int:
        """Give every followed user the same event (each with an id of their own); how many.
        With nobody followed an id is spent all the same (see :meth:`publish`)."""
        encoded = encode(data)
        users = list(self._users.items())
        if not users:
            self._seq += 1
        for jid, user in users:
            self._keep(jid, user, kind, data, encoded)
        return len(users)

    def _keep(self, jid: str, user: _User, kind: str, data: Mapping[str, Any],
              encoded: bytes) -> Event:
        self._seq += 1
        event = Event(self._seq, f"{self.epoch}-{self._seq}", kind, data, encoded,
                      self._clock.seconds())
        user.events.append(event)
        if len(user.events) > self._replay_events:
            user.floor = user.events.popleft().seq
        if user.subscribers:
            self._send(user, event.frame())
        return event

    def _send(self, user: _User, data: bytes) -> None:
        for subscriber in tuple(user.subscribers):
            try:
                subscriber.send(data)
            except Exception:  # a broken stream must not cost the others their events
                log.failure("events: writing to a stream of {jid} failed", jid=subscriber.jid)
                self.cut(subscriber, STOPPED)

    # -- subscribers --------------------------------------------------------------------------

    def subscribe(self, jid: str, write: Write, on_cut: Cut,
                  last_event_id: str | None = None) -> Subscriber:
        """A new stream of ``jid``: it gets, through ``write``, what it missed since
        ``last_event_id`` (if given; or ``reset``), then each new event. The user's oldest
        stream is cut when they would have more than :data:`STREAMS_PER_USER`."""
        now = self._clock.seconds()
        user = self._users.get(jid)
        if user is None:
            user = self._users[jid] = _User(self._seq, now)
            if not self._ticker.running:
                self._ticker.start(self._keepalive, now=False)
            for observer in tuple(self._observers):
                observer(jid, True)
        self._expire(user, now - self._replay_seconds)
        while len(user.subscribers) >= self.streams_per_user:
            self.cut(user.subscribers[0], DISPLACED)
        subscriber = Subscriber(self, jid, write, on_cut)
        user.subscribers.append(subscriber)
        if last_event_id is not None:
            for frame in self._missed(user, last_event_id):
                subscriber.send(frame)
        return subscriber

    def _missed(self, user: _User, last_event_id: str) -> list[bytes]:
        """The frames a stream resuming after ``last_event_id`` is owed."""
        seq = self._seq_of(last_event_id)
        if seq is not None and seq >= user.floor:
            return [event.frame() for event in user.events if event.seq > seq]
        reason = "unknown" if seq is None else "expired"
        data = encode({"reason": reason})
        return [b"event: %s\nid: %s-%d\ndata: %s\n\n" % (RESET.encode(), self.epoch.encode(),
                                                        self._seq, data)]

    def _seq_of(self, event_id: str) -> int | None:
        """The hub's counter in an id it issued (or could have); None for any other."""
        match = _ID.fullmatch(event_id)
        if match is None or match[1] != self.epoch or int(match[2]) > self._seq:
            return None
        return int(match[2])

    def leave(self, subscriber: Subscriber) -> None:
        """``subscriber``'s stream ended."""
        if subscriber.closed:
            return
        subscriber.closed = True
        self._forget(subscriber)

    def cut(self, subscriber: Subscriber, reason: str) -> None:
        """Give ``subscriber`` up, and tell its stream why."""
        if subscriber.closed:
            return
        self._forget(subscriber)
        subscriber.cut(reason)

    def _forget(self, subscriber: Subscriber) -> None:
        user = self._users.get(subscriber.jid)
        if user is None or subscriber not in user.subscribers:
            return
        user.subscribers.remove(subscriber)
        if not user.subscribers:
            user.idle_since = self._clock.seconds()

    # -- time -------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Every :data:`KEEPALIVE` seconds: a comment to every stream, expired events out, and
        users no longer followed dropped."""
        horizon = self._clock.seconds() - self._replay_seconds
        for jid, user in list(self._users.items()):
            self._expire(user, horizon)
            if user.subscribers:
                self._send(user, COMMENT)
            elif user.idle_since <= horizon:
                self._drop(jid)
        if not self._users:
            self._ticker.stop()

    def _expire(self, user: _User, horizon: float) -> None:
        events = user.events
        while events and events[0].at <= horizon:
            user.floor = events.popleft().seq

    def _drop(self, jid: str) -> None:
        del self._users[jid]
        for observer in tuple(self._observers):
            observer(jid, False)

    def stopService(self) -> None:
        """Cut every stream; forget every user (their monitors go with the link)."""
        super().stopService()
        if self._ticker.running:
            self._ticker.stop()
        users, self._users = self._users, {}
        for user in users.values():
            for subscriber in tuple(user.subscribers):
                subscriber.cut(STOPPED)
