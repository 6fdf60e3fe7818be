"""makeService wiring, with a stand-in reactor (nothing listens)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mxproxy.acme import ACMEService
from mxproxy.listeners import Listener, acme_dir
from mxproxy.mx import MXServer
from mxproxy.options import MXProxyOptions
from mxproxy.service import makeService
from mxproxy.testing.certs import certificate_authority
from tests.test_plugin import run

FEATURE_MODULES = ("acme", "josepy", "requests", "mxproxy.acme", "mxproxy.push.system",
                   "mxproxy.push.apns", "mxproxy.push.fcm", "treq", "jwt", "mxproxy.configcheck")
"""Modules only some daemons use: ACME for a public --host without a certificate, the push
stack with push credentials, the configuration check with --check-config."""
BUILD_AND_LIST = f"""
import json, sys
from mxproxy.options import MXProxyOptions
from mxproxy.service import makeService
options = MXProxyOptions()
options.parseOptions(sys.argv[1:])
makeService(options)
print(json.dumps([name for name in {FEATURE_MODULES!r} if name in sys.modules]))
"""


class RecordingReactor:
    """Records what the services ask of the reactor."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []
        self.stops = 0

    def addSystemEventTrigger(self, phase: str, event: str, call: Any) -> None:
        self.triggers.append((phase, event, call))

    def stop(self) -> None:
        self.stops += 1

    def seconds(self) -> float:
        return 0.0


class MakeServiceTests(SynchronousTestCase):
    def options(self, *args: str) -> MXProxyOptions:
        options = MXProxyOptions()
        options.parseOptions(list(args))
        return options

    def config_file(self, data: object) -> str:
        fd, path = tempfile.mkstemp(suffix=".json")
        os.write(fd, json.dumps(data).encode())
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path

    def test_one_mx_server_per_entry_and_the_http_listener(self) -> None:
        path = self.config_file({"mx": {
            "dev": {"addr": "127.0.0.1:7778", "login": "s", "password": "p"},
            "prod": {"addr": "mx.example.com", "login": "s", "password": "p", "tls": False},
        }})
        root = makeService(self.options("--config", path, "--host", "localhost:9090"),
                           reactor=RecordingReactor())
        services = list(root)
        servers = [s for s in services if isinstance(s, MXServer)]
        self.assertEqual([s.name for s in servers], ["dev", "prod"])
        self.assertEqual((servers[1].address.host, servers[1].address.port), ("mx.example.com",
                                                                              7778))
        self.assertFalse(servers[1].address.tls)
        admin, api = [s for s in services if isinstance(s, Listener)]
        self.assertEqual((api.what, api.description), ("HTTP", "127.0.0.1:9090"))
        self.assertEqual(admin.description, "tcp:9473:interface=127.0.0.1")  # loopback only
        self.assertIs(services[-1], api)  # stopped first: no new requests while stopping

    def test_legacy_fcm_server_key_stops_the_start_with_the_reason(self) -> None:
        path = self.config_file({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}},
                                 "gfcm": {"com.example.app": "AAAAlegacy-server-key"}})
        with self.assertRaises(SystemExit) as raised:
            makeService(self.options("--config", path, "--host", "localhost:9090",
                                     "--db", self.mktemp()), reactor=RecordingReactor())
        message = str(raised.exception)
        self.assertIn("gfcm.com.example.app", message)
        self.assertIn("2024", message)
        self.assertNotIn("AAAAlegacy-server-key", message)

    def test_public_host_gets_acme_with_its_directory_beside_the_db(self) -> None:
        path = self.config_file({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}}})
        db = os.path.join(os.path.abspath(self.mktemp()), "state", "mxproxy.db")
        root = makeService(self.options("--config", path, "--db", db, "--host",
                                        "push.example.com", "--acme-email", "ops@example.com",
                                        "--acme-directory", "staging"),
                           reactor=RecordingReactor())
        [acme] = [s for s in root if isinstance(s, ACMEService)]  # type: ignore[attr-defined]
        self.assertEqual(acme_dir({"acme-dir": None, "db": db}),
                         os.path.join(os.path.dirname(db), "acme"))
        self.assertEqual(acme_dir({"acme-dir": None, "db": "postgresql://mx:pw@db/tokens"}),
                         os.path.abspath("acme"))  # the working directory's
        listeners = [(s.what, s.description) for s in root  # type: ignore[attr-defined]
                     if isinstance(s, Listener)]
        self.assertEqual(listeners, [("the admin endpoint (/healthz, /metrics)",
                                      "tcp:9473:interface=127.0.0.1"),
                                     ("HTTPS for push.example.com", "tcp:443"),
                                     ("HTTP (ACME challenges, redirect to HTTPS)", "tcp:80")])

    def test_certificate_files_replace_acme(self) -> None:
        path = self.config_file({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}}})
        issued = certificate_authority().issue(["push.example.com"])
        cert, key = self.config_file_bytes(issued.cert_pem), self.config_file_bytes(issued.key_pem)
        root = makeService(self.options("--config", path, "--host", "push.example.com",
                                        "--tls-cert", cert, "--tls-key", key),
                           reactor=RecordingReactor())
        self.assertEqual([s for s in root if isinstance(s, ACMEService)],  # type: ignore
                         [])
        with self.assertRaises(SystemExit) as raised:
            makeService(self.options("--config", path, "--host", "push.example.com",
                                     "--tls-cert", key, "--tls-key", key),
                        reactor=RecordingReactor())
        self.assertIn(key, str(raised.exception))

    def test_a_bad_endpoint_stops_the_start_naming_the_flag(self) -> None:
        path = self.config_file({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}}})
        for flag in ("--listen", "--admin-listen"):
            with self.assertRaises(SystemExit) as raised:
                makeService(self.options("--config", path, "--host", "localhost:0", flag,
                                         "tcp:notaport"),
                            reactor=RecordingReactor())
            self.assertIn(f'{flag} "tcp:notaport": not a Twisted endpoint',
                          str(raised.exception))

    def config_file_bytes(self, data: bytes) -> str:
        fd, path = tempfile.mkstemp(suffix=".pem")
        os.write(fd, data)
        os.close(fd)
        self.addCleanup(os.remove, path)
        return path


class ImportTests(SynchronousTestCase):
    """A start imports what its options and configuration use, no more: each of these
    costs the start tens of milliseconds (in a fresh process, as twistd is)."""

    def imported(self, *args: str) -> list[str]:
        """The :data:`FEATURE_MODULES` imported once the daemon is built with ``args``."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "mxproxy.json"), "w") as file:
            json.dump({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}}}, file)
        result = run([sys.executable, "-c", BUILD_AND_LIST, "--config", "mxproxy.json",
                      "--db", "mxproxy.db", *args], directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        imported: list[str] = json.loads(result.stdout)
        return imported

    def test_behind_a_reverse_proxy_without_push_none(self) -> None:
        self.assertEqual(self.imported("--listen", "tcp:0:interface=127.0.0.1"), [])

    def test_a_public_host_without_a_certificate_acme(self) -> None:
        self.assertEqual(self.imported("--host", "push.example.com"),
                         ["acme", "josepy", "requests", "mxproxy.acme"])
