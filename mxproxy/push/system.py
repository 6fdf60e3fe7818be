"""Assembling push delivery: credentials from the config, one client per host and credential,
the token store, the dispatcher, and the per-MX glue from the call state to the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList

from mxproxy.calls import Call, CallState
from mxproxy.config import Config, PushConfig
from mxproxy.csta.events import CallEvent, MailIncomingReady
from mxproxy.logs import Logger
from mxproxy.metrics import Metrics
from mxproxy.monitors import DEVICES
from mxproxy.mx import MXServer
from mxproxy.push.apns import APNS_PORT, HOSTS, APNsClient
from mxproxy.push.credentials import (
    DEVELOPMENT,
    PRODUCTION,
    APNsCertificate,
    APNsTokenKey,
    Credential,
)
from mxproxy.push.dispatcher import PushDispatcher
from mxproxy.push.fcm import DEFAULT_BASE_URL, FCMClient, ServiceAccount
from mxproxy.push.providers import APNsSender, DeviceRegistry, FCMSender
from mxproxy.roles import MXRole
from mxproxy.store import TokenStore, parse_user_key, user_key
from mxproxy.store.location import masked, open_store

log = Logger(__name__)

STOP_GRACE = 5.0
"""Seconds a stopping daemon gives the pushes in flight to be answered."""


class PushConfigError(ValueError):
    """Push credentials named in the config cannot be used: one line each, naming the JSON
    path (all of them at once, as for the config file itself)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


def load_credentials(config: Config) -> tuple[list[Credential], dict[str, ServiceAccount]]:
    """Read every APNs credential and FCM service account the config names."""
    source = config.path or "config"
    problems: list[str] = []
    apns: list[Credential] = []
    for name, entry in config.apns.items():
        try:
            if entry.is_token_key:
                assert entry.key_id is not None and entry.team_id is not None
                apns.append(APNsTokenKey.from_file(entry.path, entry.key_id, entry.team_id,
                                                   entry.topics))
            else:
                apns.append(APNsCertificate.from_p12(entry.path, entry.password or ""))
        except (OSError, ValueError) as error:
            problems.append(f'{source}: apns["{name}"]: {error}')
    fcm = {}
    for app, path in config.gfcm.items():
        try:
            fcm[app] = ServiceAccount.from_file(path)
        except ValueError as error:
            problems.append(f"{source}: gfcm.{app}: {error}")
    if problems:
        raise PushConfigError(problems)
    return apns, fcm


class PushSystem(Service):
    """Everything push delivery needs, started and stopped with the daemon."""

    def __init__(self, store: TokenStore, dispatcher: PushDispatcher,
                 senders: dict[str, APNsSender | FCMSender],
                 clients: list[APNsClient | FCMClient]) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.senders = senders
        self.clients = clients

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """Let the pushes in flight finish (a phone is ringing), then close the connections and
        the store."""
        if not await self.dispatcher.drain(STOP_GRACE):
            log.warn("push: stopping after {grace:g} s with pushes still unanswered",
                     grace=STOP_GRACE)
        # The grace period is over: whatever APNs has not answered yet is abandoned now.
        await DeferredList([client.close(0.0) if isinstance(client, APNsClient)
                            else client.close() for client in self.clients])
        await self.store.close()

    def attach(self, server: MXServer, calls: CallState,
               role: MXRole | None = None) -> DeviceRegistry:
        """Push this MX's calls and voicemail while this instance owns it (``role``): its users
        with devices are monitored (again at every link-up and take-over, from the store), and
        their call and new-voicemail events reach the dispatcher; returns the MX's device
        registration. Without ``role``, this instance is the only one."""
        owned = role if role is not None else MXRole(server.config.name, owner=True)

        def on_call_event(jid: str, event: CallEvent, before: Call | None,
                          after: Call | None) -> None:
            if owned.owner:  # a standby may monitor a user for the API: never for pushes
                self.dispatcher.call_event(server.config.name, user_key(server.sn or "", jid),
                                           event, before, after)

        def on_mail(jid: str, mail: MailIncomingReady) -> None:
            # Recordings are not news: the user made them.
            if owned.owner and mail.media_type == "VoiceMail" and not mail.read:
                self.dispatcher.voicemail(server.config.name, user_key(server.sn or "", jid), mail)

        async def stored_users() -> list[str]:
            if not owned.owner:
                return []
            return [parse_user_key(user)[1] for user in await self.store.users(server.sn or "")]

        devices = DeviceRegistry(lambda: server.sn, self.store, calls.monitors, self.senders,
                                 self.dispatcher, owns=lambda: owned.owner,
                                 tell_owner=owned.tell_owner)
        calls.on_call_event(on_call_event)
        calls.monitors.on_mail(on_mail)
        calls.monitors.restore(DEVICES, stored_users)
        owned.on_change(lambda owner: _log_failure(Deferred.fromCoroutine(
            devices.take_over() if owner else devices.stand_by()), server.config.name))
        owned.on_tokens(lambda user: _log_failure(Deferred.fromCoroutine(devices.refresh(user)),
                                                 server.config.name))
        owned.on_answering(self.dispatcher.answering)
        return devices


def _log_failure(running: Deferred[None], mx: str) -> None:
    """A take-over or refresh that failed (the store unreachable) is logged; the next
    take-over, link-up or notification tries again."""
    running.addErrback(lambda failure: log.failure(
        "mx.{mx}: cannot bring the monitors for pushes in line with the token store",
        failure, mx=mx))


def build(reactor: Any, db: str, apns: Iterable[Credential], fcm: Mapping[str, ServiceAccount],
          push: PushConfig, trust_root: bytes | None = None,
          metrics: Metrics | None = None) -> PushSystem:
    """Open the store and make one client per (APNs host, credential) and per FCM app;
    ``metrics`` receives the dispatcher's counts."""
    routes: dict[tuple[str, bool], APNsClient] = {}
    clients: list[APNsClient | FCMClient] = []
    for credential in apns:
        environments = (credential.environments if isinstance(credential, APNsCertificate)
                        else (PRODUCTION, DEVELOPMENT))
        for environment in sorted(environments):
            host, port = _host(push, environment)
            client = APNsClient(reactor, host, port, credential, trust_root=trust_root)
            clients.append(client)
            for topic in credential.topics:
                routes[(topic, environment == DEVELOPMENT)] = client
    fcm_clients = {app: FCMClient(reactor, account, base_url=push.fcm_url or DEFAULT_BASE_URL,
                                  trust_root=_fcm_trust(trust_root))
                   for app, account in fcm.items()}
    clients.extend(fcm_clients.values())
    senders: dict[str, APNsSender | FCMSender] = {"apns": APNsSender(routes),
                                                   "gfcm": FCMSender(fcm_clients)}
    store = open_store(db, reactor=reactor, max_devices_per_user=push.max_devices_per_user)
    dispatcher = PushDispatcher(store, senders, reactor, max_in_flight=push.max_in_flight,
                                max_queued=push.max_queued, metrics=metrics)
    log.info("push: {routes} APNs topics, {apps} FCM apps, tokens in {db}",
             routes=len(routes), apps=len(fcm_clients), db=masked(db))
    return PushSystem(store, dispatcher, senders, clients)


def _host(push: PushConfig, environment: str) -> tuple[str, int]:
    override = push.apns_sandbox_host if environment == DEVELOPMENT else push.apns_host
    if override is None:
        return HOSTS[environment], APNS_PORT
    host, _, port = override.rpartition(":")
    return host.strip("[]"), int(port)


def _fcm_trust(pem: bytes | None) -> Any:
    if pem is None:
        return None
    from twisted.internet import ssl

    return ssl.Certificate.loadPEM(pem)

