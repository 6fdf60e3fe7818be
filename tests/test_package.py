"""The package as operators get it: a wheel built from the checkout, installed (not editable)
into a folder of its own, runs ``twistd mxproxy`` and the ``mxproxy`` command from there.

The wheel is built offline (``--no-build-isolation``, with the setuptools of the test venv), so
the test needs no network.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import TestCase

from mxproxy import __version__

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def run(argv: list[str], cwd: str, python_path: str | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def package_folders() -> set[str]:
    """Every package of the checkout, as a folder path inside the wheel."""
    found = set()
    for folder, _, files in os.walk(os.path.join(REPO, "mxproxy")):
        if "__init__.py" in files:
            found.add(os.path.relpath(folder, REPO).replace(os.sep, "/"))
    return found


@functools.cache
def installed() -> tuple[str, str]:
    """(the wheel, the folder it is installed in), built once per test run: the slow part."""
    work = tempfile.mkdtemp(prefix="mxproxy-package-")
    atexit.register(shutil.rmtree, work, True)
    # A copy: setuptools builds in the source folder (build/, *.egg-info), which must stay
    # untouched, and trial's workers may build at the same time.
    source = os.path.join(work, "source")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "_trial_temp*", "build", "*.egg-info", "__pycache__", "dropin.cache"))
    dist, target = os.path.join(work, "dist"), os.path.join(work, "site")
    for argv in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "--wheel-dir", dist, source],
                 [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
                  target, "--find-links", dist, "mxproxy"]):
        result = run(argv, work)
        if result.returncode != 0:
            raise AssertionError(f"{argv[3]} failed:\n{result.stdout}\n{result.stderr}")
    (wheel,) = os.listdir(dist)
    return os.path.join(dist, wheel), target


class WheelTests(TestCase):
    def setUp(self) -> None:
        self.wheel, self.target = installed()

    def test_wheel_contents(self) -> None:
        """The plugin in Twisted's namespace (never an __init__.py that would replace
        Twisted's own), every package of the checkout, the licence, no plugin cache."""
        names = set(zipfile.ZipFile(self.wheel).namelist())
        self.assertIn("twisted/plugins/mxproxy_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([name for name in names if name.endswith("dropin.cache")])
        folders = {name.rsplit("/", 1)[0] for name in names if name.endswith("/__init__.py")}
        self.assertEqual(package_folders() - folders, set())
        self.assertTrue(any(name.endswith(".dist-info/licenses/LICENSE") for name in names))

    def test_twistd_runs_the_installed_copy(self) -> None:
        """From a folder outside the checkout, with only the installed copy on the path."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        where = run([sys.executable, "-c", "import mxproxy; print(mxproxy.__file__)"], cwd,
                    self.target)
        self.assertTrue(where.stdout.startswith(self.target), where.stdout + where.stderr)
        helped = run([os.path.join(BIN, "twistd"), "mxproxy", "--help"], cwd, self.target)
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--config=", helped.stdout)
        version = run([os.path.join(BIN, "twistd"), "mxproxy", "--version"], cwd, self.target)
        self.assertEqual((version.returncode, version.stdout), (0, f"mxproxy {__version__}\n"))

    def test_console_script(self) -> None:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        script = os.path.join(self.target, "bin", "mxproxy")
        result = run([script, "--version"], cwd, self.target)
        self.assertEqual((result.returncode, result.stdout), (0, f"mxproxy {__version__}\n"),
                         result.stderr)
