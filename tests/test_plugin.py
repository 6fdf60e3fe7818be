"""Tests for the twistd plugins, run as a user would: the twistd script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mxproxy import __version__
from mxproxy.options import MXProxyOptions, MXSimOptions
from twisted.plugins import mxproxy_plugin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``cwd`` with the repository on PYTHONPATH.

    The setuptools editable install (the default, finder-based mode) maps ``twisted.plugins`` to
    this repository only for imports; Twisted discovers plugins by listing the ``twisted/plugins``
    directories of ``sys.path`` entries, so without this twistd would not list ours.
    """
    python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


class PluginTestCase(SynchronousTestCase):
    def workdir(self) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return directory


class HelpTests(PluginTestCase):
    def assertHelpLists(self, tapname: str, options: list[str]) -> None:
        result = run([TWISTD, tapname, "--help"], self.workdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in options:
            self.assertIn(f"--{option}", result.stdout)

    def test_twistdListsBothPlugins(self) -> None:
        result = run([TWISTD, "--help"], self.workdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        for tapname in ("mxproxy", "mxsim"):
            self.assertTrue(any(line.split()[:1] == [tapname] for line in lines), tapname)

    def test_mxproxyHelp(self) -> None:
        self.assertHelpLists(
            "mxproxy", ["config=", "db=", "host=", "debug", "csta", "logflag=", "demo"]
        )

    def test_mxproxyVersion(self) -> None:
        """mxproxy's version, not Twisted's (which ``twistd --version`` prints)."""
        result = run([TWISTD, "mxproxy", "--version"], self.workdir())
        self.assertEqual((result.returncode, result.stdout), (0, f"mxproxy {__version__}\n"),
                         result.stderr)

    def test_mxsimHelp(self) -> None:
        self.assertHelpLists("mxsim", ["port=", "tls", "control-port=", "interface=", "demo"])


class ConfigErrorExitTests(PluginTestCase):
    """A bad config stops twistd before anything listens, with one precise line and no trace."""

    def assertExitsWith(self, content: str | None, message: str) -> None:
        cwd = self.workdir()
        if content is not None:
            with open(os.path.join(cwd, "mxproxy.json"), "w") as file:
                file.write(content)
        result = run([TWISTD, "-n", "mxproxy", "--config", "mxproxy.json", "--host",
                      "localhost:0"], cwd)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            [line for line in result.stderr.splitlines() if line.strip()],
            [f"mxproxy: mxproxy.json: {message}"],
        )
        self.assertEqual(result.stdout, "")

    def test_missingFile(self) -> None:
        self.assertExitsWith(None, "cannot read: No such file or directory")

    def test_invalidJSON(self) -> None:
        self.assertExitsWith(
            '{"mx": {\n  "dev": }\n}',
            "invalid JSON at line 2, column 10: Expecting value",
        )

    def test_missingMX(self) -> None:
        self.assertExitsWith('{"apns": {}}', "mx: required")

    def test_badAddr(self) -> None:
        self.assertExitsWith(
            '{"mx": {"dev": {"addr": "mx:port", "login": "server", "password": "x"}}}',
            'mx.dev.addr: expected "host:port", got "mx:port"',
        )


class PluginModuleTests(PluginTestCase):
    def test_importsOnlyOptions(self) -> None:
        """twistd imports every plugin module at start-up, so ours must stay light."""
        script = (
            "import sys, twisted.plugins.mxproxy_plugin\n"
            "print(sorted(name for name in sys.modules if name.startswith('mxproxy')))"
        )
        result = run([sys.executable, "-c", script], self.workdir())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "['mxproxy', 'mxproxy.options']")

    def test_serviceMakers(self) -> None:
        for maker, tapname, options in [
            (mxproxy_plugin.mxproxy, "mxproxy", MXProxyOptions),
            (mxproxy_plugin.mxsim, "mxsim", MXSimOptions),
        ]:
            self.assertTrue(verifyObject(IServiceMaker, maker))
            self.assertTrue(verifyObject(IPlugin, maker))
            self.assertEqual((maker.tapname, maker.options), (tapname, options))

    def test_noInitFiles(self) -> None:
        """An ``__init__.py`` would shadow Twisted's own plugin package."""
        for directory in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(REPO, directory, "__init__.py")))
