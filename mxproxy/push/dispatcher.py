"""From a call event to one push per device: fan-out, de-duplication, limits, retries, pruning.

The call state (:mod:`mxproxy.calls`) hands each event over with the user's call before and
after it, and moves on; every delivery runs on its own, so a slow or dead provider never delays
the next call. Whether a call rings this user, and whether it stopped ringing because they
answered, comes from the call state; what the dispatcher keeps is what it told: which devices
heard of which call. A device is told about a call once, retried on transient failures only
while the phone could still ring, and forgotten only when the provider says its token is dead.
When a pushed call stops ringing, one follow-up tells the apps to stop ringing (never as a VoIP
push: iOS would expect a new call): ``ended`` when it ended before anyone answered,
``answeredElsewhere`` when someone else answered it, or this user did on another device — every
pushed device but the ones that said they are answering (:meth:`PushDispatcher.answering`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from mxproxy.calls import FORGET_AFTER, RINGING, Call
from mxproxy.csta.events import CallEvent, Delivered, Established, MailIncomingReady
from mxproxy.logs import Logger
from mxproxy.metrics import DELIVERED, DROPPED, FAILED, REJECTED, Metrics
from mxproxy.push.slots import FanOut, Slots
from mxproxy.store import Device, StoreUnavailable, TokenStore, token_digest

RING_WINDOW = 30.0
MAX_IN_FLIGHT = 512
MAX_QUEUED = 4096
RETRY_FIRST = 1.0
CREDENTIAL_ALARM_INTERVAL = 600.0
VOICEMAIL_TTL = 86_400
"""Seconds a voicemail push may wait for a phone that is offline: news, not a ringing phone,
worth a day of waiting."""


@attrs.frozen
class Notification:
    """What to tell a user's devices: an incoming call, or that a pushed call ended."""

    kind: str  # "call", "callEnded" or "voicemail"
    call_key: str
    payload: Mapping[str, Any]
    caller: str = ""  # name or number, for alert texts
    expires: int = 0
    """Unix time until which a provider may keep it for a phone that is offline; 0: now or
    never (a call rings now or not at all)."""


@attrs.frozen
class Outcome:
    """A provider's verdict on one delivery."""

    delivered: bool
    prune: bool = False
    prune_unless_registered_after: float | None = None
    retry_after: float | None = None  # set for transient failures worth retrying
    credential_error: bool = False
    reason: str = ""


class Sender(Protocol):
    """One push provider (APNs or FCM) seen from the dispatcher."""

    provider: str

    def deliver(self, device: Device, notification: Notification) -> Awaitable[Outcome]: ...

    def accepts(self, device: Device, notification: Notification) -> bool: ...


@attrs.define
class _Pushed:
    """The devices told about a call that rings this user, until it stops ringing."""

    key: str  # the notification's call_key: a follow-up collapses with the call's push
    devices: list[Device]
    started: float
    answering: set[str] = attrs.Factory(set)
    """:func:`token_digest` of the devices that said they answer it: no follow-up for them."""


class PushDispatcher:
    """Turns monitored call events of one user into notifications on every device. ``metrics``
    receives each push's result and the pruned tokens (a registry of its own when not given)."""

    log = Logger()

    def __init__(self, store: TokenStore, senders: Mapping[str, Sender], clock: IReactorTime,
                 max_in_flight: int = MAX_IN_FLIGHT, max_queued: int = MAX_QUEUED,
                 ring_window: float = RING_WINDOW, metrics: Metrics | None = None) -> None:
        self._store = store
        self._senders = dict(senders)
        self._clock = clock
        self._ring_window = ring_window
        self._metrics = metrics if metrics is not None else Metrics()
        self.slots = {provider: Slots(clock, max_in_flight, max_queued)
                      for provider in self._senders}
        self._pushed: dict[tuple[str, int], _Pushed] = {}
        self._alarms: dict[str, float] = {}
        self.delivered = 0
        self.failed = 0
        self._handling: set[Deferred[None]] = set()
        self._resting: dict[Deferred[None], IDelayedCall] = {}  # deliveries waiting to retry
        self._stopping = False

    @property
    def in_flight(self) -> dict[str, int]:
        """Pushes sent and not yet answered, per provider."""
        return {provider: slots.busy for provider, slots in self.slots.items()}

    def call_event(self, mx: str, user: str, event: CallEvent, before: Call | None,
                   after: Call | None) -> Deferred[None]:
        """React to one event on the monitor of ``user`` (a store user id) on the MX named
        ``mx``, given the user's call before and after it: a call that rings them is pushed,
        one that stops ringing before they answered gets a follow-up."""
        if isinstance(event, Delivered) and after is not None and after.state == RINGING:
            handling = Deferred.fromCoroutine(self._incoming(mx, user, event, after))
        elif before is not None and before.state == RINGING and (
                after is None or after.state != RINGING):
            handling = Deferred.fromCoroutine(self._stopped_ringing(user, event, after))
        else:
            return succeed(None)
        return self._track(handling)

    def _track(self, handling: Deferred[None]) -> Deferred[None]:
        """Keep ``handling`` until it ends, for :meth:`drain`."""
        if not handling.called:
            self._handling.add(handling)
            handling.addBoth(self._handled, handling)
        return handling

    def _handled(self, result: object, handling: Deferred[None]) -> object:
        self._handling.discard(handling)
        return result

    def drain(self, timeout: float) -> Deferred[bool]:
        """For a stopping daemon: no more retries; fires True once every event handed over so
        far is fully handled (its pushes answered or given up), or False after ``timeout``
        seconds, cancelling nothing."""
        self._stopping = True
        for wake, timer in list(self._resting.items()):
            timer.cancel()
            wake.callback(None)
        done: Deferred[bool] = Deferred()

        def finish(drained: bool) -> None:
            if not done.called:
                done.callback(drained)

        timer = self._clock.callLater(timeout, finish, False)
        ended = DeferredList(list(self._handling))
        ended.addCallback(lambda _: timer.cancel() if timer.active() else None)
        ended.addCallback(lambda _: finish(True))
        return done

    # -- incoming call ------------------------------------------------------------------------

    async def _incoming(self, mx: str, user: str, event: Delivered, call: Call) -> None:
        key = (user, call.call_id)
        self._forget_old_calls()
        payload = dict(event.push_payload(int(self._clock.seconds())))
        if call.peer_name:
            payload["callingName"] = call.peer_name
        payload["mx"] = mx  # with callId, what the app needs to answer without a lookup
        notification = Notification("call", call.global_call_id or str(call.call_id), payload,
                                    caller=call.peer_name or call.peer)
        # Known before the devices are read, so that an answer or hang-up arriving meanwhile
        # finds the call and nothing rings for a call that is already over.
        pushed = self._pushed.setdefault(key, _Pushed(notification.call_key, [],
                                                      self._clock.seconds()))
        devices = await self._store.devices(user)
        if self._pushed.get(key) is not pushed:
            return
        told = {_identity(device) for device in pushed.devices}
        fresh = [device for device in devices if _identity(device) not in told]
        pushed.devices.extend(fresh)
        await self._fan_out(fresh, notification, self._clock.seconds())

    # -- voicemail ----------------------------------------------------------------------------

    def voicemail(self, mx: str, user: str, mail: MailIncomingReady) -> Deferred[None]:
        """Tell ``user``'s devices of a new voicemail (an alert, never a VoIP push; never the
        audio): who left it and how long it is, with what the app needs to fetch it."""
        payload = {"type": "voicemail", "mx": mx, "id": mail.mail_id, "from": mail.sender,
                   "fromName": mail.from_name, "duration": mail.duration}
        notification = Notification("voicemail", f"vm-{mail.mail_id}", payload,
                                    caller=mail.from_name or mail.sender or "unknown caller",
                                    expires=int(self._clock.seconds()) + VOICEMAIL_TTL)
        return self._track(Deferred.fromCoroutine(self._voicemail(user, notification)))

    async def _voicemail(self, user: str, notification: Notification) -> None:
        devices = await self._store.devices(user)
        await self._fan_out(devices, notification, self._clock.seconds())

    # -- the call stopped ringing -------------------------------------------------------------

    def answering(self, user: str, call_id: int, digest: str) -> None:
        """The device whose token has :func:`token_digest` ``digest`` is answering the call
        pushed to ``user`` (said on this instance or another): it is left out of the
        follow-up. A digest of no device the call was pushed to changes nothing."""
        pushed = self._pushed.get((user, call_id))
        if pushed is not None:
            pushed.answering.add(digest)

    async def _stopped_ringing(self, user: str, event: CallEvent, after: Call | None) -> None:
        pushed = self._pushed.pop((user, event.call_id), None)
        if pushed is None:
            return  # nothing was pushed
        reason = "answeredElsewhere" if isinstance(event, Established) else "ended"
        payload = {"event": "callEnded", "reason": reason, "callId": event.call_id}
        notification = Notification("callEnded", pushed.key, payload)
        devices = [device for device in pushed.devices
                   if token_digest(device.token) not in pushed.answering]
        await self._fan_out(devices, notification, self._clock.seconds())

    # -- delivery -----------------------------------------------------------------------------

    async def _fan_out(self, devices: list[Device], notification: Notification,
                       started: float) -> None:
        fan_out = FanOut(started + self._ring_window)  # one turn at a time at each provider
        deliveries = []
        for device in devices:
            sender = self._senders.get(device.provider)
            if sender is None or not sender.accepts(device, notification):
                continue
            deliveries.append(Deferred.fromCoroutine(
                self._deliver(sender, device, notification, fan_out)))
        for delivery in deliveries:
            await delivery

    async def _deliver(self, sender: Sender, device: Device, notification: Notification,
                       fan_out: FanOut) -> None:
        result = await self._attempts(sender, device, notification, fan_out)
        self._metrics.pushes.labels(sender.provider, result).inc()

    async def _attempts(self, sender: Sender, device: Device, notification: Notification,
                        fan_out: FanOut) -> str:
        """Send, and retry while the phone could still ring; the push's result."""
        provider = sender.provider
        slots = self.slots[provider]
        deadline = fan_out.deadline
        delay = RETRY_FIRST
        while True:
            if not await slots.acquire(fan_out):
                self.failed += 1
                self.log.error("push: {provider} has {count} pushes in flight and {waiting} "
                               "waiting; dropping the {kind} push to {device}",
                               provider=provider, count=slots.busy, waiting=slots.waiting,
                               kind=notification.kind, device=device.label)
                return DROPPED
            try:
                outcome = await sender.deliver(device, notification)
            except Exception as error:  # a bug in a sender must not take the others down
                self.log.failure("push: {provider} sender failed", provider=provider)
                outcome = Outcome(False, reason=str(error))
            finally:
                slots.release()
            await self._record(device, outcome, notification)
            if outcome.delivered or outcome.retry_after is None:
                return _result(outcome)
            wait = max(outcome.retry_after, delay)
            if self._clock.seconds() + wait > deadline:
                self.log.warn("push: giving up on {device} ({reason}): past the ring window",
                              device=device.label, reason=outcome.reason)
                return FAILED
            if not self._stopping:
                await self._rest(wait)
            if self._stopping:
                self.log.warn("push: not retrying {device} ({reason}): stopping",
                              device=device.label, reason=outcome.reason)
                return FAILED
            delay *= 2

    def _rest(self, seconds: float) -> Deferred[None]:
        """Wait before a retry; a stopping daemon wakes every waiting delivery at once."""
        wake: Deferred[None] = Deferred()
        self._resting[wake] = self._clock.callLater(seconds, wake.callback, None)
        wake.addCallback(lambda _: self._resting.pop(wake, None) and None)
        return wake

    async def _record(self, device: Device, outcome: Outcome,
                      notification: Notification) -> None:
        now = self._clock.seconds()
        try:
            if outcome.delivered:
                self.delivered += 1
                await self._store.record_success(device, now)
                return
            self.failed += 1
            if outcome.credential_error:
                self._alarm(device.provider, outcome.reason)
            if outcome.prune:
                pruned = await self._store.prune(device, outcome.prune_unless_registered_after)
                if pruned:
                    self._metrics.pruned_tokens.labels(device.provider).inc()
                    self.log.info("push: pruned {device}: {reason}", device=device.label,
                                  reason=outcome.reason)
                    return
            else:
                self.log.warn("push: {kind} push to {device} failed: {reason}",
                              kind=notification.kind, device=device.label, reason=outcome.reason)
            await self._store.record_error(device, now, outcome.reason)
        except StoreUnavailable:
            pass  # a full disk: the store logs it once, not once per push, and /healthz shows it
        except Exception:
            self.log.failure("push: cannot record the outcome for {device}", device=device.label)

    def _alarm(self, provider: str, reason: str) -> None:
        """Credential problems are loud, but once per interval, not once per push."""
        now = self._clock.seconds()
        if now - self._alarms.get(provider, -CREDENTIAL_ALARM_INTERVAL) >= \
                CREDENTIAL_ALARM_INTERVAL:
            self._alarms[provider] = now
            self.log.critical("push: {provider} rejects our credentials: {reason}; pushes fail "
                              "until the configuration is fixed", provider=provider,
                              reason=reason)

    def _forget_old_calls(self) -> None:
        """Calls whose end never came (the link went down meanwhile) are dropped when the call
        state would drop them."""
        horizon = self._clock.seconds() - FORGET_AFTER
        for key in [key for key, pushed in self._pushed.items() if pushed.started < horizon]:
            del self._pushed[key]


def _result(outcome: Outcome) -> str:
    """A final outcome as the ``result`` label of the pushes counter."""
    if outcome.delivered:
        return DELIVERED
    return REJECTED if outcome.prune else FAILED


def _identity(device: Device) -> tuple[str, str, bool, str]:
    return (device.provider, device.bundle, device.sandbox, device.token)

