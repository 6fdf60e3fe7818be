"""makeService(): turns twistd options into the running daemon.

Everything that can be checked before listening is checked here, so a bad configuration exits
with a one-line reason and a non-zero status instead of a half-started daemon.

What a daemon may not use is imported only when it does: the push stack (HTTP/2, treq, JWT)
with push credentials, ACME (and ``requests``) for a public ``--host`` without a certificate,
the configuration check with ``--check-config``. Each costs a start tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService

from mxproxy import __version__, logs
from mxproxy.admin import admin_site
from mxproxy.api.access import MXAccess
from mxproxy.api.app import API
from mxproxy.api.clients import ClientAddresses
from mxproxy.api.site import APISite, ConnectionLimit
from mxproxy.calls import CallState
from mxproxy.config import Config, ConfigError
from mxproxy.configfile import load_config
from mxproxy.csta.client import CSTAFactory, log_trace, stdout_trace
from mxproxy.csta.protocol import Trace
from mxproxy.events import EventHub
from mxproxy.eventsources import feed
from mxproxy.listeners import admin_listener, api_listeners
from mxproxy.memory import tune_malloc
from mxproxy.metrics import Metrics
from mxproxy.mx import MXServer, SerialRegistry
from mxproxy.ownership import LockSession, Ownership
from mxproxy.sessions import SessionPool
from mxproxy.store.location import is_postgres

if TYPE_CHECKING:
    from mxproxy.push.system import PushSystem

log = logs.Logger(__name__)


def makeService(options: Mapping[str, Any], reactor: Any = None) -> IService:
    """Build the daemon: one MXServer per configured MX and the HTTP listener."""
    if reactor is None:
        from twisted.internet import reactor
    if options["check-config"]:
        from mxproxy.configcheck import check_config

        raise SystemExit(check_config(options["config"]))
    logs.set_debug(bool(options["debug"]))
    tune_malloc()
    root = MultiService()
    metrics = Metrics()
    push: PushSystem | None
    if options["demo"]:
        from mxproxy import demo  # test doubles: loaded for --demo only

        config, push = demo.start(reactor, options["db"], metrics)
    else:
        config = _load(options["config"])
        push = _push(config, options["db"], reactor, metrics)
    if push is not None:
        push.setServiceParent(root)  # first in, last out: it outlives the links that feed it
    # After the push system, before the links: stopped once the links are, so the locks go
    # only when this instance can no longer push.
    ownership = Ownership(_locks(options["db"], reactor) if push is not None else None, reactor)
    ownership.setServiceParent(root)
    serials = SerialRegistry()
    access = {}
    roles = {}
    for name, mx in config.mx.items():
        trace = _trace(options, f"mx.{name}")
        round_trip = metrics.round_trips(name)
        server = MXServer(mx, reactor, serials, trace=trace, on_round_trip=round_trip)
        server.setServiceParent(root)
        pool = SessionPool(reactor, server.address,
                           CSTAFactory(reactor, trace, on_round_trip=round_trip),
                           clear_text_retry=mx.clear_text_retry,
                           idle_timeout=options["session-idle"])
        pool.setServiceParent(root)
        calls = CallState(server, reactor)
        hub = EventHub(reactor)
        hub.setServiceParent(root)  # stopped before the link: the streams end first
        feed(hub, server, calls)
        roles[name] = ownership.role(server)
        devices = push.attach(server, calls, roles[name]) if push else None
        access[name] = MXAccess(server, pool, calls, devices, hub)
    clients = ClientAddresses(reactor, options["trusted-proxy"])
    site = APISite(API(access, reactor, metrics=metrics, clients=clients).resource(), reactor,
                   ConnectionLimit(reactor, options["max-connections-per-address"],
                                   clients.is_proxy),
                   log_formatter=clients.access_log)
    listeners, certificate = api_listeners(options, site, root, reactor)
    admin = admin_listener(options, admin_site(
        metrics, [entry.server for entry in access.values()], push, reactor,
        tls_not_after=None if certificate is None else lambda: certificate.not_after,
        monitors={name: entry.calls.monitors for name, entry in access.items()},
        roles=roles, database=ownership.database), reactor)
    if admin is not None:
        admin.setServiceParent(root)  # health answers until the API has stopped accepting
    # Added last, so stopped first: a stopping daemon stops accepting before anything else.
    for listener in listeners:
        listener.setServiceParent(root)
    log.info("mxproxy {version}: {count} MX configured: {names}", version=__version__,
             count=len(access), names=", ".join(access))
    return root


def _locks(db: str, reactor: Any) -> LockSession | None:
    """The lock connection when the tokens are in PostgreSQL: several instances may share it."""
    if not is_postgres(db):
        return None
    from mxproxy.lockconnection import PostgresLocks

    return PostgresLocks(db, reactor)


def _trace(options: Mapping[str, Any], label: str) -> Trace | None:
    """``--csta``: raw frames on stdout, or as log events when the log is JSON lines."""
    if not options["csta"]:
        return None
    return log_trace(label) if options["json-logs"] else stdout_trace(label)


def _load(path: str) -> Config:
    try:
        config, warnings = load_config(path)
    except ConfigError as error:
        raise _exit(error.lines) from None
    for warning in warnings:
        log.warn("{warning}", warning=warning)
    return config


def _push(config: Config, db: str, reactor: Any, metrics: Metrics) -> PushSystem | None:
    """Push delivery when the config names credentials; every problem exits, a line each."""
    if not config.apns and not config.gfcm:
        log.warn("push: no apns or gfcm credentials configured; device registration answers 501")
        return None
    from mxproxy.push.system import PushConfigError, build, load_credentials
    from mxproxy.store import TokenStoreError

    try:
        apns, fcm = load_credentials(config)
        trust = None
        if config.push.ca is not None:
            with open(config.push.ca, "rb") as pem:
                trust = pem.read()
        return build(reactor, db, apns, fcm, config.push, trust_root=trust, metrics=metrics)
    except PushConfigError as error:
        raise _exit(error.lines) from None
    except (TokenStoreError, OSError) as error:
        raise _exit([str(error)]) from None


def _exit(problems: list[str]) -> SystemExit:
    """The exit of a start that cannot go on (status 1), each problem on a line of its own."""
    return SystemExit("\n".join(f"mxproxy: {problem}" for problem in problems))

