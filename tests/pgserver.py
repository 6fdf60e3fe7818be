"""A throw-away PostgreSQL server for tests: Debian's binaries, a temporary folder, loopback.

One server per test process (starting one costs a second or two), shared by every test that
asks: each test gets a fresh database in it (:func:`database`). A test that stops and restarts
PostgreSQL mid-way (a failover test) may use the shared one, as :meth:`PostgresServer.start`
brings it back on the same port and data folder, or make its own :class:`PostgresServer`.

PostgreSQL refuses to run as root, which is what developers' machines and CI are: as root the
server runs as the ``postgres`` system user, which owns the folder. Missing binaries, a missing
``postgres`` user or a missing psycopg skip the test with the reason rather than failing it.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest

STARTUP_TIMEOUT_S = 60
"""Set-up, not a timed test: how long ``pg_ctl start`` may wait for connections on a slow,
busy machine before the tests fail."""

SUPERUSER = "postgres"
"""The role initdb makes; trust authentication, so no password is needed."""


def binaries() -> str:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb (``PG_BINDIR`` overrides);
    SkipTest if none."""
    found = os.environ.get("PG_BINDIR")
    if found:
        candidates = [found]
    else:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                            key=lambda path: int(path.split("/")[-2]) if
                            path.split("/")[-2].isdigit() else 0, reverse=True)
    for bindir in candidates:
        if os.access(os.path.join(bindir, "initdb"), os.X_OK):
            return bindir
    raise SkipTest("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
                   "(apt-get install postgresql, as .ci/run does)")


def _run_as() -> dict[str, Any]:
    """The subprocess arguments that run a server command as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise SkipTest("running as root and there is no 'postgres' system user to run "
                       "PostgreSQL as") from None
    return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, on a loopback port of its own."""

    def __init__(self, fsync: bool = False) -> None:
        """``fsync``: flush every commit to disk, as a production server does (a benchmark
        comparing stores needs it); tests do without."""
        self.bindir = binaries()
        self.fsync = fsync
        self._as = _run_as()
        self.root = tempfile.mkdtemp(prefix="mxproxy-pg-")
        if self._as:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.running = False
        self._databases = itertools.count(1)
        self._pg("initdb", "--pgdata", self.data, "--username", SUPERUSER, "--auth", "trust",
                 "--encoding", "UTF8", "--locale", "C", "--no-sync")

    def _pg(self, program: str, *args: str) -> None:
        done = subprocess.run([os.path.join(self.bindir, program), *args], cwd=self.root,
                              capture_output=True, text=True, check=False, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start (again) on the same port and data folder; returns once it takes connections.
        fsync is off unless asked for: a crash of the test machine loses nothing worth
        keeping."""
        if self.running:
            return
        fsync = "on" if self.fsync else "off"
        options = (f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync={fsync}"
                   " -c max_connections=200 -c shared_buffers=16MB")
        self._pg("pg_ctl", "start", "--pgdata", self.data, "--wait",
                 "--timeout", str(STARTUP_TIMEOUT_S), "--log", os.path.join(self.root, "log"),
                 "-o", options)
        self.running = True

    def stop(self) -> None:
        """Stop at once, as a crash would (immediate mode: no checkpoint, clients cut)."""
        if not self.running:
            return
        self.running = False
        self._pg("pg_ctl", "stop", "--pgdata", self.data, "--mode", "immediate", "--wait")

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for ``dbname``, over TCP on loopback."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def url(self, dbname: str = "postgres", password: str | None = None) -> str:
        """The same as a ``postgresql://`` URL (trust: any password is accepted)."""
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database (copied from template0); its name."""
        psycopg = _psycopg()
        self.start()
        name = f"test{next(self._databases)}"
        with psycopg.connect(self.conninfo(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return name


_shared: PostgresServer | None = None


def shared() -> PostgresServer:
    """This process's server, started on first use and removed at exit; SkipTest if
    PostgreSQL cannot run here."""
    global _shared
    if _shared is None:
        server = PostgresServer()
        atexit.register(server.remove)
        _shared = server
    _shared.start()
    return _shared


def database() -> str:
    """The conninfo of a fresh database on the shared server, for one test."""
    server = shared()
    return server.conninfo(server.create_database())


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise SkipTest("psycopg is not installed (pip install -e '.[test]')") from None
    return psycopg
