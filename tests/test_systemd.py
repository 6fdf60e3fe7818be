"""``contrib/systemd/mxproxy.service``: the directives it must keep, and ``systemd-analyze verify``.

What ``verify`` does here (systemd 252, in a container where systemd is not PID 1 and there is
no ``mxproxy`` user): it needs no running systemd and does not look the user up; it fails (status
1) when ExecStart's binary does not exist; and for a directive it cannot parse it prints a line
naming the file and still exits 0. For the real unit, with ExecStart pointing at this virtualenv's
twistd, it prints nothing. So the test rewrites that one path, runs ``verify`` and fails on any
output line: no line it was seen to print here is about the environment, so none is ignored.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(REPO, "contrib", "systemd", "mxproxy.service")
INSTALLED_TWISTD = "/opt/mxproxy/bin/twistd"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
EXEC_START = (f"{INSTALLED_TWISTD} --nodaemon --pidfile= mxproxy "
              "--config /etc/mxproxy/mxproxy.json --db /var/lib/mxproxy/mxproxy.db")

REQUIRED = {
    ("Unit", "Wants"): "network-online.target",
    ("Unit", "After"): "network-online.target",
    ("Service", "ExecStart"): EXEC_START,
    ("Service", "User"): "mxproxy",
    ("Service", "Group"): "mxproxy",
    ("Service", "StateDirectory"): "mxproxy",
    ("Service", "StateDirectoryMode"): "0700",
    ("Service", "ConfigurationDirectory"): "mxproxy",
    ("Service", "AmbientCapabilities"): "CAP_NET_BIND_SERVICE",
    ("Service", "CapabilityBoundingSet"): "CAP_NET_BIND_SERVICE",
    ("Service", "KillSignal"): "SIGTERM",
    ("Service", "TimeoutStopSec"): "20",
    ("Service", "Restart"): "on-failure",
    ("Service", "LimitNOFILE"): "65536",
    ("Service", "UMask"): "0077",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "ProtectHome"): "yes",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "PrivateDevices"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectKernelModules"): "yes",
    ("Service", "ProtectKernelLogs"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "RestrictAddressFamilies"): "AF_INET AF_INET6 AF_UNIX",
    ("Service", "RestrictNamespaces"): "yes",
    ("Service", "LockPersonality"): "yes",
    ("Service", "SystemCallFilter"): "@system-service",
    ("Install", "WantedBy"): "multi-user.target",
}


def read_unit() -> str:
    with open(UNIT, encoding="utf-8") as file:
        return file.read()


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) → every value given, in order, as systemd reads a unit file."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


class UnitTextTests(SynchronousTestCase):
    def test_required_directives(self) -> None:
        found = directives(read_unit())
        for (section, key), value in REQUIRED.items():
            self.assertEqual(found.get((section, key)), [value], f"[{section}] {key}=")

    def test_state_and_config_inside_the_directories_systemd_makes(self) -> None:
        # ProtectSystem=strict leaves only the StateDirectory writable: the database, and the
        # ACME directory beside it, must be in there.
        found = directives(read_unit())
        argv = shlex.split(found[("Service", "ExecStart")][0])
        state = "/var/lib/" + found[("Service", "StateDirectory")][0] + "/"
        config = "/etc/" + found[("Service", "ConfigurationDirectory")][0] + "/"
        self.assertTrue(argv[argv.index("--db") + 1].startswith(state))
        self.assertTrue(argv[argv.index("--config") + 1].startswith(config))

    def test_exec_start_is_a_valid_twistd_command_line(self) -> None:
        """Once the drop-in the README shows adds ``--host``; without one the daemon refuses
        to start (there is no default name to order a certificate for)."""
        argv = shlex.split(directives(read_unit())[("Service", "ExecStart")][0])
        error = self.assertRaises(usage.UsageError, ServerOptions().parseOptions, argv[1:])
        self.assertIn("say where to serve the API", str(error))
        options = ServerOptions()
        try:
            options.parseOptions([*argv[1:], "--host", "push.example.com"])
        except usage.UsageError as error:
            self.fail(f"twistd refuses the unit's ExecStart: {error}")
        self.assertEqual((options.subCommand, options["nodaemon"], options["pidfile"]),
                         ("mxproxy", True, ""))


class VerifyTests(SynchronousTestCase):
    def setUp(self) -> None:
        if shutil.which("systemd-analyze") is None:
            raise SkipTest("systemd-analyze is not installed (Debian: apt-get install systemd)")

    def verify(self, text: str) -> tuple[int, list[str], str]:
        """Run ``systemd-analyze verify`` on ``text`` as mxproxy.service in a fresh directory;
        returns its status, its output lines (stdout and stderr) and the unit's path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "mxproxy.service")
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        result = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                                text=True, timeout=60)
        return result.returncode, (result.stdout + result.stderr).splitlines(), path

    def test_unit_passes_verify(self) -> None:
        original = read_unit()
        # The only change: ExecStart's binary, which verify requires to exist, becomes the
        # twistd of this virtualenv.
        rewritten = original.replace(INSTALLED_TWISTD, TWISTD)
        changed = [(old, new) for old, new in zip(original.splitlines(), rewritten.splitlines(),
                                                   strict=True) if old != new]
        self.assertEqual(changed, [(f"ExecStart={EXEC_START}",
                                    f"ExecStart={EXEC_START.replace(INSTALLED_TWISTD, TWISTD)}")])
        status, lines, _ = self.verify(rewritten)
        self.assertEqual((status, lines), (0, []))

    def test_verify_reports_a_bad_directive_only_in_its_output(self) -> None:
        # Why the test above fails on output and not only on the exit status.
        broken = read_unit().replace(INSTALLED_TWISTD, TWISTD).replace(
            "ProtectSystem=strict", "ProtectSystem=strikt")
        status, lines, path = self.verify(broken)
        self.assertEqual(status, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(path + ":"), lines)
        self.assertIn("strikt", lines[0])

    def test_verify_requires_exec_start_to_exist(self) -> None:
        # Why the test above rewrites ExecStart.
        if os.path.exists(INSTALLED_TWISTD):
            raise SkipTest(f"{INSTALLED_TWISTD} exists on this machine")
        status, lines, _ = self.verify(read_unit())
        self.assertNotEqual(status, 0)
        self.assertTrue(any(INSTALLED_TWISTD in line for line in lines), lines)
