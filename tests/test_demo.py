"""The ``--demo`` wiring (mxproxy.demo)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mxproxy.config import MXConfig
from mxproxy.demo import demo_config


class DemoConfigTests(SynchronousTestCase):
    def test_one_mx_named_demo_on_the_simulator_without_a_file(self) -> None:
        config = demo_config("127.0.0.1", 17778)
        self.assertEqual(
            dict(config.mx),
            {"demo": MXConfig("demo", "127.0.0.1", 17778, "server", "server", tls=False)},
        )
        self.assertIsNone(config.path)
