"""``--json-logs``: the observer's records, and a real ``twistd mxproxy --json-logs`` run."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger, LogLevel, textFileLogObserver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy import __version__
from mxproxy.logs import json_observer
from mxproxy.testing.mxsim import PBX
from tests.support import serve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
KEYS = {"time", "level", "namespace", "message"}
RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class FlushCountingIO(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class ObserverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = FlushCountingIO()
        self.log = Logger(namespace="mxproxy.test", observer=json_observer(self.out))

    def records(self) -> list[dict[str, Any]]:
        lines = self.out.getvalue().splitlines()
        self.assertEqual(self.out.getvalue().count("\n"), len(lines))
        return [json.loads(line) for line in lines]

    def test_record_fields(self) -> None:
        json_observer(self.out)({"log_format": "up {n}", "n": 2, "log_time": 1700000000.1239,
                                 "log_level": LogLevel.warn, "log_namespace": "mxproxy.mx"})
        self.assertEqual(self.records(), [{"time": "2023-11-14T22:13:20.123Z", "level": "warn",
                                           "namespace": "mxproxy.mx", "message": "up 2"}])

    def test_one_line_flushed_per_event(self) -> None:
        self.log.info("first")
        self.assertEqual((self.out.getvalue().count("\n"), self.out.flushes), (1, 1))
        self.log.info("second")
        self.assertEqual((self.out.getvalue().count("\n"), self.out.flushes), (2, 2))

    def test_level_names(self) -> None:
        for level in LogLevel.iterconstants():
            self.log.emit(level, "at {name}", name=level.name)
        self.assertEqual([record["level"] for record in self.records()],
                         ["debug", "info", "warn", "error", "critical"])

    def test_message_as_the_text_log_formats_it(self) -> None:
        text = io.StringIO()
        for observer in (json_observer(self.out), textFileLogObserver(text)):
            Logger(namespace="mxproxy.test", observer=observer).info(
                "{user} has {count:03d} calls, {missing!r}", user="bob", count=7, missing=None)
        [record] = self.records()
        self.assertEqual(record["message"], "bob has 007 calls, None")
        self.assertTrue(text.getvalue().endswith(" [mxproxy.test#info] " + record["message"]
                                                 + "\n"), text.getvalue())

    def test_newlines_stay_inside_one_line(self) -> None:
        self.log.info("line one\nline two\r\n\tend")
        [record] = self.records()
        self.assertEqual(record["message"], "line one\nline two\r\n\tend")

    def test_non_ascii_kept_readable(self) -> None:
        self.log.info("{name} called", name="Zoë Łukasz 東京")
        self.assertIn("Zoë Łukasz 東京 called", self.out.getvalue())

    def test_failure_traceback(self) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            self.log.failure("push {id} failed", Failure(), id=7)
        [record] = self.records()
        self.assertEqual(set(record), KEYS | {"traceback"})
        self.assertEqual((record["level"], record["message"]), ("critical", "push 7 failed"))
        self.assertIn("Traceback", record["traceback"])
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertIn("1 / 0", record["traceback"])

    def test_other_event_keys_are_left_out(self) -> None:
        self.log.info("login for {user}", user="bob", password="s3cret", session=object())
        [record] = self.records()
        self.assertEqual(set(record), KEYS)
        self.assertNotIn("s3cret", self.out.getvalue())

    def test_event_with_nothing_to_say_prints_nothing(self) -> None:
        json_observer(self.out)({"log_time": 1700000000.0, "log_level": LogLevel.info})
        self.assertEqual((self.out.getvalue(), self.out.flushes), ("", 0))

    def test_twistd_factory_writes_to_stdout(self) -> None:
        # twistd calls its --logger with no arguments and wraps an observer that does not
        # provide ILogObserver as a deprecated legacy one.
        self.patch(sys, "stdout", self.out)
        observer = json_observer()
        self.assertTrue(ILogObserver.providedBy(observer))
        Logger(namespace="mxproxy.test", observer=observer).info("to stdout")
        self.assertEqual(self.records()[0]["message"], "to stdout")


class TwistdProcess(ProcessProtocol):
    """A twistd child: its stdout lines, its stderr, when the MX link is up, and its end."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.errors = b""
        self.linked: Deferred[None] = Deferred()
        self.ended: Deferred[BaseException] = Deferred()
        self.unfinished = b""
        self._awaited: list[tuple[bytes, Deferred[bytes]]] = []

    def until(self, text: bytes) -> Deferred[bytes]:
        """The first stdout line containing ``text``, whether already printed or to come."""
        found: Deferred[bytes] = Deferred()
        self._awaited.append((text, found))
        self._match(self.lines)
        return found

    def outReceived(self, data: bytes) -> None:
        *lines, self.unfinished = (self.unfinished + data).split(b"\n")
        self.lines.extend(lines)
        if not self.linked.called and any(b"connected to MX" in line for line in lines):
            self.linked.callback(None)
        self._match(lines)

    def _match(self, lines: list[bytes]) -> None:
        for text, found in tuple(self._awaited):
            line = next((line for line in lines if text in line), None)
            if line is not None:
                self._awaited.remove((text, found))
                found.callback(line)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def signal(self, name: str) -> None:
        assert self.transport is not None
        self.transport.signalProcess(name)

    def processEnded(self, reason: Failure) -> None:
        if not self.linked.called:
            output = b"\n".join(self.lines + [self.unfinished, self.errors])
            self.linked.errback(RuntimeError(
                f"twistd ended before the MX link came up ({reason.value}):\n"
                + output.decode("utf-8", "replace")))
        awaited, self._awaited = self._awaited, []
        for text, found in awaited:
            found.errback(RuntimeError(f"twistd ended before printing {text!r}"))
        self.ended.callback(reason.value)


def start_twistd(test: TestCase, directory: str, config: str, *flags: str,
                 environ: dict[str, str] | None = None) -> TwistdProcess:
    """``twistd --nodaemon mxproxy --config <config> --db <directory>/mxproxy.db <flags>`` in
    ``directory``, SIGKILLed at cleanup if still running. ``environ`` (default: this process's)
    gets the repository on PYTHONPATH, for the plugin, as in tests.test_plugin."""
    daemon = TwistdProcess()
    env = dict(os.environ if environ is None else environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    reactor.spawnProcess(daemon, TWISTD, [
        TWISTD, "--nodaemon", "--pidfile=", "mxproxy", "--config", config,
        "--db", os.path.join(directory, "mxproxy.db"), *flags], env=env, path=directory)

    async def kill() -> None:
        if not daemon.ended.called:
            daemon.signal("KILL")
            await daemon.ended

    test.addCleanup(lambda: Deferred.fromCoroutine(kill()))
    return daemon


class RealRunTests(TestCase):
    timeout = 60

    async def test_every_stdout_line_is_a_json_record(self) -> None:
        pbx = PBX("JSONLOG1", clock=reactor)
        pbx.add_server_login("server", "server-secret")
        pbx.add_user("alice", "alice-secret", "3001")
        mx = serve(self, pbx)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        config = os.path.join(directory, "mxproxy.json")
        with open(config, "w", encoding="utf-8") as file:
            json.dump({"mx": {"json": {"addr": f"{mx.host}:{mx.port}", "login": "server",
                                       "password": "server-secret", "tls": False}},
                       "größe": 1}, file, ensure_ascii=False)
        # PYTHONUNBUFFERED dropped: under systemd stdout is block-buffered, so the records must
        # arrive by the observer's own flushes.
        env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
        daemon = start_twistd(self, directory, config, "--host", "localhost:0",
                              "--admin-listen", "none", "--json-logs", environ=env)
        await daemon.linked
        daemon.signal("TERM")
        ended = await daemon.ended
        stderr = daemon.errors.decode("utf-8", "replace")
        # After a clean stop twistd re-raises the signal it handled, so the exit is "killed by
        # SIGTERM", which systemd counts as clean.
        self.assertIsInstance(ended, ProcessTerminated, stderr)
        assert isinstance(ended, ProcessTerminated)
        self.assertEqual((ended.signal, ended.exitCode), (signal.SIGTERM, None), stderr)
        self.assertEqual(stderr, "")
        self.assertEqual(daemon.unfinished, b"", "the last record was not ended by a newline")
        records = [json.loads(line) for line in daemon.lines]
        for record in records:
            self.assertIsInstance(record, dict)
            self.assertLessEqual(KEYS, set(record), record)
            self.assertLessEqual(set(record), KEYS | {"traceback"}, record)
            self.assertRegex(record["time"], RFC3339_UTC_MS)
            self.assertIn(record["level"], {"debug", "info", "warn", "error", "critical"})
        found = {(record["level"], record["namespace"], record["message"]) for record in records}
        expected = {
            ("warn", "mxproxy.service", f'{config}: ["größe"]: unknown key, ignored'),
            ("info", "mxproxy.service", f"mxproxy {__version__}: 1 MX configured: json"),
            ("info", "mxproxy.mx.MXServer",
             "mx.json: connected to MX JSONLOG1, address book of 1 contacts"),
            ("info", "twisted.scripts._twistd_unix.UnixAppLogger", "Server Shut Down."),
        }
        self.assertLessEqual(expected, found, "\n".join(map(repr, sorted(found))))
        self.assertIn("größe".encode(), b"\n".join(daemon.lines))
        self.assertNotIn(b"server-secret", b"\n".join(daemon.lines))
