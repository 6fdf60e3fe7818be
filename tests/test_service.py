"""makeService wiring and the fatal stop, with a stand-in reactor (nothing listens)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.mx import DuplicateSerial, MXServer
from mxproxy.options import MXProxyOptions
from mxproxy.service import FatalStop, _exit_fatal, makeService


class RecordingReactor:
    """Records what FatalStop asks of the reactor."""

    def __init__(self) -> None:
        self.triggers: list[tuple[str, str, Any]] = []
        self.stops = 0

    def addSystemEventTrigger(self, phase: str, event: str, call: Any) -> None:
        self.triggers.append((phase, event, call))

    def stop(self) -> None:
        self.stops += 1


class FatalStopTests(SynchronousTestCase):
    def test_stops_once_and_exits_non_zero_after_shutdown(self) -> None:
        reactor = RecordingReactor()
        abort = FatalStop(reactor)
        abort(DuplicateSerial("mx.b and mx.a are the same MX (sn X)"))
        abort(DuplicateSerial("again, from the next retry"))
        self.assertEqual(reactor.stops, 1)
        self.assertEqual(reactor.triggers, [("after", "shutdown", _exit_fatal)])


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
        self.assertEqual(len([s for s in services
                              if isinstance(s, StreamServerEndpointService)]), 1)

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

    def test_public_host_is_refused_until_https_exists(self) -> None:
        path = self.config_file({"mx": {"dev": {"addr": "h", "login": "s", "password": "p"}}})
        with self.assertRaises(SystemExit) as raised:
            makeService(self.options("--config", path), reactor=RecordingReactor())
        self.assertIn("--host mxproxy.connector73.net", str(raised.exception))
