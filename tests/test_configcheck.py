"""check-config: every problem of a configuration and of the files it names, one line each,
JSON path first; exit 0 or 1; no port opened, no MX connection made."""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mxproxy.configcheck import check_config
from mxproxy.testing.mxsim import PBX
from tests.support import serve
from tests.test_plugin import REPO, TWISTD


class ReportTests(SynchronousTestCase):
    def write(self, data: object) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mxproxy.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(data, file)
        return path

    def check(self, path: str) -> tuple[int, list[str], str]:
        out, err = io.StringIO(), io.StringIO()
        status = check_config(path, out, err)
        return status, err.getvalue().splitlines(), out.getvalue()

    def test_a_good_file(self) -> None:
        path = self.write({"mx": {"dev": {"addr": "mx.example.com", "login": "cti",
                                          "password": "s"}}})
        self.assertEqual(self.check(path),
                         (0, [], f"{path}: OK (1 MX, 0 APNs credentials, 0 FCM apps)\n"))

    def test_every_problem_at_once_path_first_then_the_warnings(self) -> None:
        path = self.write({"mx": {
            "dev": {"addr": "mx.example.com:x", "login": "cti", "pasword": "s"},
            "other": {"addr": "h", "login": "a", "password": "b", "maxContacts": 0}}})
        self.assertEqual(self.check(path), (1, [
            'mx.dev.addr: expected "host:port", got "mx.example.com:x"',
            'mx.dev.password: required (did you mean "pasword"?)',
            "mx.other.maxContacts: expected a whole number ≥ 1",
            'warning: mx.dev.pasword: unknown key, ignored (did you mean "password"?)',
            f"{path}: 3 problems"], ""))

    def test_the_files_it_names(self) -> None:
        """Credentials are read as a start reads them; each unusable one is a line."""
        path = self.write({
            "mx": {"dev": {"addr": "h", "login": "a", "password": "b"}},
            "apns": {"AuthKey_K.p8": {"keyId": "K", "teamId": "T", "topics": ["a"]},
                     "cert.p12": "secret-p12-password"},
            "gfcm": {"com.example.app": "service-account.json"}})
        folder = os.path.dirname(path)
        with open(os.path.join(folder, "cert.p12"), "wb") as file:
            file.write(b"not a PKCS#12 file")
        status, lines, out = self.check(path)
        self.assertEqual((status, out, len(lines)), (1, "", 4), lines)
        self.assertTrue(lines[0].startswith('apns["AuthKey_K.p8"]: '), lines[0])
        self.assertTrue(lines[1].startswith('apns["cert.p12"]: '), lines[1])
        self.assertTrue(lines[2].startswith("gfcm.com.example.app: "), lines[2])
        self.assertEqual(lines[3], f"{path}: 3 problems")
        self.assertNotIn("secret-p12-password", "\n".join(lines))

    def test_an_unreadable_file(self) -> None:
        path = os.path.abspath("missing.json")
        self.assertEqual(self.check(path), (1, ["cannot read: No such file or directory",
                                                f"{path}: 1 problem"], ""))


class CommandTests(TestCase):
    """Both spellings, as an operator runs them, against a config naming a live MX that
    must see no connection."""

    async def run_command(self, *argv: str) -> tuple[int, str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
        out, err, status = await getProcessOutputAndValue(argv[0], argv[1:], env=env,
                                                          path=os.path.dirname(self.config))
        return status, out.decode(), err.decode()

    def setUp(self) -> None:
        self.pbx = PBX("CHECK1", clock=reactor)
        mx = serve(self, self.pbx)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.config = os.path.join(folder, "mxproxy.json")
        with open(self.config, "w", encoding="utf-8") as file:
            json.dump({"mx": {"dev": {"addr": f"{mx.host}:{mx.port}", "login": "server",
                                      "password": "x", "tls": False}}}, file)

    async def test_mxproxy_check_config(self) -> None:
        status, out, err = await self.run_command(
            sys.executable, "-m", "mxproxy.cli", "check-config", self.config)
        self.assertEqual((status, out, err),
                         (0, f"{self.config}: OK (1 MX, 0 APNs credentials, 0 FCM apps)\n", ""))
        self.assertEqual(self.pbx.sessions, [])

    async def test_twistd_check_config(self) -> None:
        """No --host needed: nothing will be served."""
        status, out, err = await self.run_command(
            TWISTD, "--nodaemon", "--pidfile=", "mxproxy", "--check-config", "--config",
            self.config)
        self.assertEqual((status, out, err),
                         (0, f"{self.config}: OK (1 MX, 0 APNs credentials, 0 FCM apps)\n", ""))
        self.assertEqual(self.pbx.sessions, [])
        with open(self.config, "w", encoding="utf-8") as file:
            file.write('{"mx": {"dev": {"addr": "h", "login": "a"}}}')
        status, out, err = await self.run_command(
            TWISTD, "--nodaemon", "--pidfile=", "mxproxy", "--check-config", "--config",
            self.config)
        self.assertEqual((status, out, err.splitlines()),
                         (1, "", ["mx.dev.password: required", f"{self.config}: 1 problem"]))
