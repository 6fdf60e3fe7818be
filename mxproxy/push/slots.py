"""A push provider's capacity, shared fairly between the calls waiting for it.

At most ``limit`` pushes are in flight to one provider; the others wait for a slot, none past
the end of its ring window. The waiting pushes are grouped by fan-out (one notification to one
user's devices), and a freed slot goes to the fan-outs in turn, one push each: a call that
rings thousands of devices delays another call's push by one turn, not by its thousands. At most
``queue`` pushes wait in all; when that is full, the fan-out with the most pushes waiting gives
up its newest one to a newcomer with fewer, so a flood loses its own pushes, not other calls'.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


class FanOut:
    """The pushes of one notification to one user's devices: they share a deadline (the end
    of the ring window) and one place in the turns at each provider."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline


@attrs.define
class _Waiting:
    """The pushes of one fan-out waiting for a slot, in order, and the timer of its deadline."""

    turns: deque[Deferred[bool]]
    timer: IDelayedCall


class Slots:
    """The in-flight slots of one provider and the pushes waiting for them."""

    def __init__(self, clock: IReactorTime, limit: int, queue: int) -> None:
        self._clock = clock
        self._limit = limit
        self._queue = queue
        self.busy = 0
        """Pushes holding a slot."""
        self.waiting = 0
        """Pushes waiting for one."""
        self._fan_outs: OrderedDict[FanOut, _Waiting] = OrderedDict()  # next turn first
        self._by_size: dict[int, dict[FanOut, None]] = {}  # fan-outs by pushes waiting
        self._most = 0  # the most pushes one fan-out has waiting

    def acquire(self, fan_out: FanOut) -> Deferred[bool]:
        """Fires True once a slot is ours (``release`` it), False when there is no room to
        wait, when a fan-out with fewer pushes waiting needs the room, or at the deadline."""
        if self.busy < self._limit:
            self.busy += 1
            return succeed(True)
        waiting = self._fan_outs.get(fan_out)
        size = len(waiting.turns) if waiting is not None else 0
        if self.waiting >= self._queue:
            if self._most <= size + 1:  # none would still have more than this one: drop it
                return succeed(False)
            # The largest share gives up its newest push (of the largest, the first that
            # grew to that size).
            largest = next(iter(self._by_size[self._most]))
            self._take(largest, self._fan_outs[largest], pop_newest=True).callback(False)
        if waiting is None:
            timer = self._clock.callLater(max(0.0, fan_out.deadline - self._clock.seconds()),
                                          self._expire, fan_out)
            waiting = self._fan_outs[fan_out] = _Waiting(deque(), timer)
        turn: Deferred[bool] = Deferred()
        waiting.turns.append(turn)
        self.waiting += 1
        self._resize(fan_out, size, size + 1)
        return turn

    def release(self) -> None:
        """The slot passes straight to the next fan-out's oldest push, or becomes free."""
        if not self._fan_outs:
            self.busy -= 1
            return
        fan_out, waiting = next(iter(self._fan_outs.items()))
        turn = self._take(fan_out, waiting, pop_newest=False)
        if fan_out in self._fan_outs:
            self._fan_outs.move_to_end(fan_out)  # its next push after the other fan-outs'
        turn.callback(True)

    def _take(self, fan_out: FanOut, waiting: _Waiting, pop_newest: bool) -> Deferred[bool]:
        """The oldest or the newest push of a fan-out out of the queue; a fan-out with none
        left goes."""
        size = len(waiting.turns)
        turn = waiting.turns.pop() if pop_newest else waiting.turns.popleft()
        self.waiting -= 1
        self._resize(fan_out, size, size - 1)
        if not waiting.turns:
            del self._fan_outs[fan_out]
            waiting.timer.cancel()
        return turn

    def _expire(self, fan_out: FanOut) -> None:
        waiting = self._fan_outs.pop(fan_out)
        self.waiting -= len(waiting.turns)
        self._resize(fan_out, len(waiting.turns), 0)
        for turn in waiting.turns:
            turn.callback(False)

    def _resize(self, fan_out: FanOut, old: int, new: int) -> None:
        """Keep the index by size, so that the largest share is found without a scan."""
        if old:
            members = self._by_size[old]
            del members[fan_out]
            if not members:
                del self._by_size[old]
        if new:
            self._by_size.setdefault(new, {})[fan_out] = None
        self._most = max(self._most, new)
        while self._most and self._most not in self._by_size:
            self._most -= 1
