"""Crash-test child (not a test module): the whole mxproxy daemon, as ``twistd mxproxy`` runs it.

Usage: ``python tests/crash_daemon.py <work dir> <MX host:port>``. Starts a fake APNs and a fake
FCM in this process (real TLS and HTTP/2, as ``--demo`` does), writes a real configuration file
naming them and the MX into ``<work dir>`` (with the APNs key, the FCM service account and the
CA they trust), then builds the daemon with :func:`mxproxy.service.makeService` from ordinary
command-line options (``--config``, ``--db <work dir>/tokens.db``, ``--host 127.0.0.1:0``),
starts it as twistd does, and prints ``READY {"port": <HTTP port>}`` (flushed) once the HTTP API
listens and every MX link is logged in. Logs go to ``<work dir>/daemon.log``.

Nothing here is wired by hand: the one difference from ``twistd mxproxy`` is the HTTP port,
picked by the kernel (port 0) and read back from the endpoint. ``tests.test_crash`` kills this
process with SIGKILL mid-load, then starts it again on the same database.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import IService, IServiceCollection
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import globalLogBeginner, textFileLogObserver

from mxproxy.listeners import Listener
from mxproxy.mx import MXServer
from mxproxy.options import MXProxyOptions
from mxproxy.service import makeService
from mxproxy.testing import fakeapns, fakefcm

BUNDLE = "com.example.crash"
KEY_ID, TEAM_ID = "CRASHKEY01", "CRASHTEAM1"
MX_NAME = "crash"
MX_LOGIN, MX_PASSWORD = "server", "server-secret"
DB = "tokens.db"


@attrs.frozen
class Fakes:
    """The fake providers, and the ``apns``, ``gfcm`` and ``push`` parts of a config naming
    them (relative paths: the config lives in the same directory)."""

    apns: fakeapns.FakeAPNs
    fcm: fakefcm.FakeFCM
    config: dict[str, Any]
    ports: list[Any]
    """Where they listen, for whoever outlives them to close."""


def start_fakes(reactor: Any, directory: str) -> Fakes:
    """Fake APNs and FCM on loopback; their credentials as files; the config's push parts."""
    authority = fakeapns.server_authority()
    key = ec.generate_private_key(ec.SECP256R1())
    apns = fakeapns.FakeAPNs()
    apns.add_token_key(KEY_ID, TEAM_ID, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    apns_listening = fakeapns.listen(apns, reactor=reactor)
    apns_port = apns_listening.getHost().port  # type: ignore[attr-defined]
    google = fakefcm.FakeFCM()
    fcm_listening = fakefcm.listen(google, reactor=reactor, certificate=authority.issue())
    info, account = fakefcm.make_service_account(google.base_url, directory=directory)
    google.add_account(info)
    write(directory, "apns-key.p8", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    write(directory, "push-ca.pem", authority.cert_pem)
    return Fakes(apns, google, {
        "apns": {"apns-key.p8": {"keyId": KEY_ID, "teamId": TEAM_ID,
                                 "topics": [BUNDLE, BUNDLE + ".voip"]}},
        "gfcm": {BUNDLE: os.path.basename(account)},
        "push": {"apnsHost": f"127.0.0.1:{apns_port}", "apnsSandboxHost": f"127.0.0.1:{apns_port}",
                 "ca": "push-ca.pem", "fcmUrl": google.base_url,
                 "maxDevicesPerUser": 1000},  # every registration of the flood is kept
    }, [apns_listening, fcm_listening])


def write(directory: str, name: str, content: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as file:
        file.write(content)
    return path


async def serve(reactor: Any, directory: str, mx: str) -> None:
    config = {"mx": {MX_NAME: {"addr": mx, "login": MX_LOGIN, "password": MX_PASSWORD,
                               "tls": False}}}
    config.update(start_fakes(reactor, directory).config)
    path = write(directory, "mxproxy.json", json.dumps(config, indent=2).encode())
    options = MXProxyOptions()
    options.parseOptions(["--config", path, "--db", os.path.join(directory, DB),
                          "--host", "127.0.0.1:0", "--admin-listen", "none"])
    root = makeService(options, reactor)
    services = list(IServiceCollection(root))
    [api] = [service for service in services if isinstance(service, Listener)]
    servers = [service for service in services if isinstance(service, MXServer)]
    # As twistd's startApplication: start now, stop before the reactor shuts down.
    service = IService(root)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    assert api.port is not None  # TCP listens at once; a failure would have raised
    await gatherResults([server.when_ready() for server in servers])
    sys.stdout.write("READY " + json.dumps({"port": api.port.getHost().port}) + "\n")  # type: ignore[attr-defined]
    sys.stdout.flush()


def main() -> None:
    from twisted.internet import reactor

    directory, mx = sys.argv[1], sys.argv[2]
    log = open(os.path.join(directory, "daemon.log"), "a", encoding="utf-8")  # noqa: SIM115
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)

    def failed(failure: Any) -> None:
        sys.stderr.write(f"crash_daemon: cannot start:\n{failure.getTraceback()}")
        sys.stderr.flush()
        os._exit(2)

    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(serve(reactor, directory, mx)).addErrback(failed))
    reactor.run()


if __name__ == "__main__":
    main()
