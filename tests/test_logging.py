"""Secrets stay out of traces and logs; ``--debug`` opens the debug level."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxproxy import logs
from mxproxy.csta.client import hash_password, stdout_trace
from mxproxy.csta.xml import redact


class RedactTests(SynchronousTestCase):
    def test_password_element(self) -> None:
        body = b"<loginRequest><userName>bob</userName><pwd>s3cret\n</pwd></loginRequest>"
        self.assertEqual(redact(body),
                         b"<loginRequest><userName>bob</userName><pwd>***</pwd></loginRequest>")

    def test_prefixed_and_attributed_password_elements(self) -> None:
        body = b'<x:pwd a="1">one</x:pwd><password>two</password>'
        self.assertEqual(redact(body), b'<x:pwd a="1">***</x:pwd><password>***</password>')

    def test_soft_phone_password_attribute(self) -> None:
        body = b'<loginResponce sn="A" softPhonePwd="abc&quot;def" ext="1">OK</loginResponce>'
        self.assertEqual(redact(body),
                         b'<loginResponce sn="A" softPhonePwd="***" ext="1">OK</loginResponce>')

    def test_audio_is_replaced_by_its_size(self) -> None:
        body = b"<r><mediaContent>UklGRiQAAABXQVZF</mediaContent></r>"
        self.assertEqual(redact(body), b"<r><mediaContent>[16 bytes of base64]</mediaContent></r>")

    def test_everything_else_is_untouched(self) -> None:
        body = b'<DeliveredEvent><callingDevice>3044</callingDevice></DeliveredEvent>'
        self.assertEqual(redact(body), body)


class TraceTests(SynchronousTestCase):
    def test_trace_lines_are_labelled_and_redacted(self) -> None:
        out = io.StringIO()
        trace = stdout_trace("mx.dev", out)
        trace("->", 1, b"<loginRequest><pwd>" + hash_password("pw").encode() + b"</pwd>"
                       b"</loginRequest>")
        trace("<-", 9999, b"<presence/>")
        self.assertEqual(out.getvalue().splitlines(), [
            "mx.dev -> 0001 <loginRequest><pwd>***</pwd></loginRequest>",
            "mx.dev <- 9999 <presence/>",
        ])


class DebugLevelTests(SynchronousTestCase):
    def capture(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(logs.set_debug, False)
        return events

    def test_debug_events_only_with_debug(self) -> None:
        events = self.capture()
        log = logs.Logger("mxproxy.test")
        log.debug("hidden")
        log.info("shown")
        logs.set_debug(True)
        log.debug("now shown")
        self.assertEqual([e["log_format"] for e in events], ["shown", "now shown"])


class RateLimitedLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.clock = Clock()
        self.limited = logs.RateLimitedLog(Logger(observer=self.events.append), self.clock,
                                           "mx.dev: bad frames", window=60)

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def test_first_logged_then_counted_then_the_count(self) -> None:
        for number in range(5):
            self.limited.emit("bad frame {number}", number=number)
        self.assertEqual(self.lines(), ["bad frame 0"])
        self.assertEqual(self.limited.suppressed, 4)
        self.clock.advance(59)
        self.limited.emit("bad frame 5")
        self.assertEqual(self.lines(), ["bad frame 0"])
        self.clock.advance(1)
        self.limited.emit("bad frame 6")
        self.assertEqual(self.lines(), ["bad frame 0",
                                        "mx.dev: bad frames: 5 more suppressed in 60 s",
                                        "bad frame 6"])
        self.assertEqual(self.events[-2]["log_level"], LogLevel.warn)

    def test_a_steady_flood_costs_two_lines_per_window(self) -> None:
        for second in range(600):
            self.limited.emit("bad frame {second}", second=second)
            self.clock.advance(1)
        self.assertEqual(len(self.lines()), 19)
        self.assertEqual(self.lines()[:4], ["bad frame 0",
                                            "mx.dev: bad frames: 59 more suppressed in 60 s",
                                            "bad frame 60",
                                            "mx.dev: bad frames: 59 more suppressed in 60 s"])

    def test_nothing_suppressed_nothing_counted(self) -> None:
        self.limited.emit("first")
        self.clock.advance(60)
        self.limited.emit("second")
        self.assertEqual(self.lines(), ["first", "second"])

    def test_stop_reports_the_count_and_leaves_no_timer(self) -> None:
        self.limited.emit("first")
        self.limited.emit("second")
        self.clock.advance(12)
        self.limited.stop()
        self.assertEqual(self.lines(), ["first", "mx.dev: bad frames: 1 more suppressed in 12 s"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.limited.stop()
        self.assertEqual(len(self.lines()), 2)
