"""The push providers as the dispatcher sees them, and device registration for the API.

Each sender knows which client serves a device and what a notification looks like on its wire,
and turns the provider's answer into an :class:`Outcome`: delivered, prune the token, retry, or
a credential problem. Pruning follows only token-specific errors; everything else keeps the
token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed

from mxproxy.csta.errors import MXUnavailable
from mxproxy.logs import Logger
from mxproxy.monitors import DEVICES, CallMonitors
from mxproxy.push.apns import APNsClient, APNsError, APNsResponse
from mxproxy.push.dispatcher import VOICEMAIL_TTL, Notification, Outcome, PushDispatcher
from mxproxy.push.fcm import FCMClient, FCMError, FCMResponse
from mxproxy.store import Device, TokenStore, parse_user_key, token_digest, user_key

VOIP_SUFFIX = ".voip"
CALL_TTL = 15  # seconds an FCM call message may wait for an offline phone
ENDED_TTL = 60

APNS_PRUNE = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})
APNS_CREDENTIALS = frozenset({"InvalidProviderToken", "ExpiredProviderToken",
                              "MissingProviderToken", "BadCertificate",
                              "BadCertificateEnvironment"})


def _transient(retry_after: float | None) -> float:
    return retry_after if retry_after is not None else 0.0


class APNsSender:
    """Apple: one client per (host, credential), chosen by the device's (topic, sandbox)."""

    provider = "apns"

    def __init__(self, routes: Mapping[tuple[str, bool], APNsClient]) -> None:
        self._routes = dict(routes)

    def supports(self, bundle: str, sandbox: bool) -> bool:
        return (bundle, sandbox) in self._routes

    def accepts(self, device: Device, notification: Notification) -> bool:
        # A PushKit (VoIP) token may only ever receive incoming calls: iOS ends an app that
        # gets a VoIP push it does not report to CallKit as a call.
        voip = device.bundle.endswith(VOIP_SUFFIX)
        return self.supports(device.bundle, device.sandbox) and (
            notification.kind == "call" or not voip)

    async def deliver(self, device: Device, notification: Notification) -> Outcome:
        client = self._routes[(device.bundle, device.sandbox)]
        payload: dict[str, Any] = dict(notification.payload)
        collapse_id = None
        if notification.kind == "call" and device.bundle.endswith(VOIP_SUFFIX):
            push_type = "voip"
        else:
            push_type = "alert"
            payload["aps"] = {"alert": alert(notification), "sound": "default"} \
                if notification.kind != "callEnded" else {"alert": alert(notification)}
            # The call's alert and its follow-up share one id: "Call ended" replaces "Incoming
            # call from …" on the lock screen instead of showing next to it.
            collapse_id = notification.call_key
        try:
            response = await client.send(device.token, device.bundle, push_type, payload,
                                         priority=10, expiration=notification.expires,
                                         collapse_id=collapse_id)
        except APNsError as error:
            return Outcome(False, retry_after=0.0, reason=str(error))
        return apns_outcome(response)


def alert(notification: Notification) -> dict[str, str]:
    """The title and body a phone shows for the notification."""
    if notification.kind == "call":
        return {"title": "Incoming call", "body": f"Incoming call from {notification.caller}"}
    if notification.kind == "voicemail":
        seconds = notification.payload.get("duration", 0)
        return {"title": f"New voicemail from {notification.caller}",
                "body": f"{seconds // 60}:{seconds % 60:02d}"}
    reason = notification.payload.get("reason")
    body = "Answered on another device" if reason == "answeredElsewhere" else "Call ended"
    return {"title": "Call ended", "body": body}


def apns_outcome(response: APNsResponse) -> Outcome:
    """What an APNs answer means for the token (Apple's reasons, HTTP/2 provider API)."""
    reason = response.reason or f"HTTP {response.status}"
    if response.status == 200:
        return Outcome(True)
    if response.status == 410:
        stamp = response.timestamp / 1000 if response.timestamp is not None else None
        return Outcome(False, prune=True, prune_unless_registered_after=stamp, reason=reason)
    if response.status == 400 and response.reason in APNS_PRUNE:
        return Outcome(False, prune=True, reason=reason)
    if response.status == 403 and response.reason in APNS_CREDENTIALS:
        return Outcome(False, credential_error=True, reason=reason)
    if response.status == 429 or response.status >= 500:
        return Outcome(False, retry_after=_transient(response.retry_after), reason=reason)
    return Outcome(False, reason=reason)


class FCMSender:
    """Google: one HTTP v1 client per configured app (the device's bundle)."""

    provider = "gfcm"

    def __init__(self, clients: Mapping[str, FCMClient]) -> None:
        self._clients = dict(clients)

    def supports(self, bundle: str, sandbox: bool) -> bool:
        return bundle in self._clients

    def accepts(self, device: Device, notification: Notification) -> bool:
        return device.bundle in self._clients

    async def deliver(self, device: Device, notification: Notification) -> Outcome:
        data = {key: str(value) for key, value in notification.payload.items()}
        ttl = {"call": CALL_TTL, "voicemail": VOICEMAIL_TTL}.get(notification.kind, ENDED_TTL)
        shown = alert(notification) if notification.kind == "voicemail" else None
        try:
            response = await self._clients[device.bundle].send(
                device.token, data, ttl, collapse_key=notification.call_key, notification=shown)
        except FCMError as error:
            return Outcome(False, retry_after=0.0, reason=str(error))
        return fcm_outcome(response)


def fcm_outcome(response: FCMResponse) -> Outcome:
    reason = response.error_code or f"HTTP {response.status}"
    if response.ok:
        return Outcome(True)
    if response.token_invalid:
        return Outcome(False, prune=True, reason=reason)
    if response.status in (401, 403):
        return Outcome(False, credential_error=True, reason=reason)
    if response.status == 429 or response.status >= 500:
        return Outcome(False, retry_after=_transient(response.retry_after), reason=reason)
    return Outcome(False, reason=reason)


class DeviceRegistry:
    """Device tokens of one MX's users (the API's ``Devices``): store, then monitor (the
    ``devices`` reason holds while a user has one). With several instances on one database,
    only the MX's owner (``owns``) monitors: a standby stores, and the owner hears of it from
    the store's notification (:meth:`refresh`); an answer through a standby reaches the owner
    by ``tell_owner`` (:meth:`answered_here`)."""

    log = Logger()

    def __init__(self, sn: Callable[[], str | None], store: TokenStore,
                 monitors: CallMonitors, senders: Mapping[str, APNsSender | FCMSender],
                 dispatcher: PushDispatcher, owns: Callable[[], bool] = lambda: True,
                 tell_owner: Callable[[str, int, str], Deferred[None]] | None = None) -> None:
        self._sn = sn
        self._store = store
        self._monitors = monitors
        self._senders = dict(senders)
        self._dispatcher = dispatcher
        self._owns = owns
        self._tell_owner = tell_owner

    def supports(self, provider: str, bundle: str, sandbox: bool) -> bool:
        sender = self._senders.get(provider)
        return sender is not None and sender.supports(bundle, sandbox)

    def _user(self, jid: str) -> tuple[str, str]:
        sn = self._sn()
        if sn is None:
            raise MXUnavailable("the MX link has not been established yet")
        return sn, user_key(sn, jid)

    async def register(self, jid: str, provider: str, bundle: str, sandbox: bool,
                       token: str) -> None:
        sn, user = self._user(jid)
        previous = await self._store.register(user, provider, bundle, sandbox, token)
        if not self._owns():
            return
        if previous is not None and previous != user:
            owner_sn, owner = parse_user_key(previous)
            if owner_sn == sn and not await self._store.has_devices(previous):
                await self._monitors.release(owner, DEVICES)
        await self._monitors.want(jid, DEVICES)

    async def unregister(self, jid: str, provider: str, bundle: str, sandbox: bool,
                         token: str) -> None:
        _, user = self._user(jid)
        await self._store.remove(provider, bundle, sandbox, token, user=user)
        if self._owns() and not await self._store.has_devices(user):
            await self._monitors.release(jid, DEVICES)

    async def refresh(self, user: str) -> None:
        """Another instance changed ``user``'s devices: monitor them while they have any."""
        sn, jid = parse_user_key(user)
        if sn != self._sn():
            return
        has_devices = await self._store.has_devices(user)
        if not self._owns():
            return  # stepped down meanwhile
        if has_devices:
            await self._monitors.want(jid, DEVICES)
        else:
            await self._monitors.release(jid, DEVICES)

    async def take_over(self) -> None:
        """This instance became the owner: monitor every user the store has devices of."""
        sn = self._sn()
        users = await self._store.users(sn) if sn is not None else []
        for user in users:
            if not self._owns():
                return
            await self._monitors.want(parse_user_key(user)[1], DEVICES)
        self.log.info("mx {sn}: {count} users with devices monitored after the take-over",
                      sn=sn, count=len(users))

    async def stand_by(self) -> None:
        """This instance is no longer the owner: its monitors for pushes stop."""
        for jid in self._monitors.wanting(DEVICES):
            await self._monitors.release(jid, DEVICES)

    def answered_here(self, jid: str, call_id: int, token: str) -> Deferred[None]:
        """The owner's dispatcher pushed the call: told here at once, or from a standby
        through the database (fired once the owner can have heard, before the MX can say the
        call was answered)."""
        sn = self._sn()
        if sn is None:
            return succeed(None)
        user, digest = user_key(sn, jid), token_digest(token)
        if self._owns() or self._tell_owner is None:
            self._dispatcher.answering(user, call_id, digest)
            return succeed(None)
        return self._tell_owner(user, call_id, digest)
