"""Shared plumbing of the HTTP benchmarks: server processes, load generator, fetch client, RSS.

Not a benchmark itself: run without arguments it only says so (``make bench`` runs every
``bench/*.py``). The benchmarks start their servers as subprocesses of their own script (each
prints one ``READY {json}`` line to stdout once it listens on an ephemeral loopback port) and
their clients as subprocesses of this module, so that server and client never share a process
or an event loop:

  python bench/_harness.py load URL --seconds S --connections C [--auth VALUE ...] [--body J]
      keep-alive HTTP/1.1 GET load (asyncio, raw sockets); used when ``wrk`` is not installed,
      and for POSTs of JSON ``J`` (each request's own)
  python bench/_harness.py fetch URL [--auth VALUE]
      one GET read as fast as possible; prints size, SHA-256 and seconds as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import ctypes
import hashlib
import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable
SERVER_LOGIN, SERVER_PASSWORD = "server", "server-secret"
CHILD_LIFETIME = 600.0  # a server subprocess stops itself after this long, whatever happens
READY_TIMEOUT = 60.0

T = TypeVar("T")


def basic(login: str, password: str) -> str:
    """The ``Authorization`` header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def machine_load() -> str:
    """The 1-minute load average against the CPUs: what else competed for them (on a shared
    machine, latencies grow with it)."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


# -- server subprocesses (the child side) ------------------------------------------------------


def serve(setup: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Run the real reactor in this (child) process: ``await setup(reactor)``, print its result
    as the ``READY`` line, serve until SIGTERM, the parent's death or :data:`CHILD_LIFETIME`."""
    _die_with_parent()
    _log_warnings_to_stderr()
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from mxproxy.memory import tune_malloc

    tune_malloc()  # as the daemon does: every child, baselines included, is that kind of process

    failed: list[bool] = []

    def started(info: dict[str, Any]) -> None:
        print("READY " + json.dumps(info), flush=True)

    def broken(failure: Any) -> None:
        failed.append(True)
        failure.printTraceback(file=sys.stderr)
        reactor.stop()

    def begin() -> None:
        Deferred.fromCoroutine(setup(reactor)).addCallbacks(started, broken)

    reactor.callWhenRunning(begin)
    reactor.callLater(CHILD_LIFETIME, reactor.stop)
    reactor.run()
    sys.exit(1 if failed else 0)


PROFILER = cProfile.Profile()
"""The profile of a child's reactor thread, toggled by the benchmark (``--profile``)."""


def toggle_profiler(path: str) -> None:
    """In a child, from a signal handler (it runs on the reactor thread, between two
    bytecodes): start profiling, or stop and save to ``path``."""
    if getattr(PROFILER, "running", False):
        PROFILER.disable()
        PROFILER.running = False  # type: ignore[attr-defined]
        PROFILER.dump_stats(path)
    else:
        PROFILER.running = True  # type: ignore[attr-defined]
        PROFILER.enable()


def run(name: str, measure: Callable[[Any], T], args: Any) -> T:
    """Run a benchmark's measurement; a failure of the set-up, a child or the load generator
    ends it with one line and status 1 instead of a traceback."""
    try:
        return measure(args)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as error:
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(1)


def _die_with_parent() -> None:
    """SIGTERM this process when the benchmark that started it dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _log_warnings_to_stderr() -> None:
    """Warnings and errors to stderr; info events (one access-log line per request) dropped, as
    with a production log level. Beginning to log also stops Twisted buffering early events."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    observer = FilteringLogObserver(textFileLogObserver(sys.stderr),
                                    [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def add_contacts(pbx: Any, count: int) -> None:
    """``count`` generated address-book entries, every field filled as on a real MX."""
    from mxproxy.testing.mxsim import Contact

    for number in range(count):
        pbx.add_contact(Contact(
            jid="", first_name=f"First{number}", last_name=f"Last{number}",
            business_phone=str(3000 + number), cell_phone=f"+1555010{number:04d}",
            email=f"user{number}@example.invalid", home_system="43884850000099999",
            did=f"+1212555{number:04d}"))


def listen_mx(reactor: Any, pbx: Any, tls: bool = False) -> int:
    """Serve the simulator on an ephemeral loopback port (TLS with a self-signed certificate
    if ``tls``); its server login is the bench one."""
    from mxproxy.testing.mxsim import listen

    pbx.add_server_login(SERVER_LOGIN, SERVER_PASSWORD)
    address: Any = listen(pbx, port=0, interface="127.0.0.1", tls=tls or None,
                          reactor=reactor).getHost()
    return int(address.port)


async def start_proxy(reactor: Any, mx_port: int, pool_class: Any = None,
                      call_log_timing: Any = None, mx_tls: bool = False,
                      others: dict[str, int] | None = None) -> dict[str, Any]:
    """mxproxy as ``service.makeService`` wires it, for one MX named ``bench`` at ``mx_port``:
    MXServer (address book loaded before this returns), SessionPool, API, APISite.
    ``mx_tls``: the MX link is TLS, unverified (the default of an MX entry without pinning).
    ``others``: more MX entries (name: port, same login) linked beside it, not waited for."""
    from mxproxy.api.access import MXAccess
    from mxproxy.api.app import API
    from mxproxy.api.site import APISite, ConnectionLimit
    from mxproxy.calls import CallState
    from mxproxy.config import MXConfig
    from mxproxy.csta.client import CSTAFactory
    from mxproxy.mx import MXServer, SerialRegistry
    from mxproxy.options import CONNECTIONS_PER_ADDRESS
    from mxproxy.sessions import SessionPool

    serials = SerialRegistry()

    def link(name: str, port: int) -> MXAccess:
        config = MXConfig(name=name, host="127.0.0.1", port=port, login=SERVER_LOGIN,
                          password=SERVER_PASSWORD, tls=mx_tls)
        server = MXServer(config, reactor, serials)
        server.startService()
        reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
        pool = (pool_class or SessionPool)(reactor, server.address, CSTAFactory(reactor))
        reactor.addSystemEventTrigger("before", "shutdown", pool.close_all)
        return MXAccess(server, pool, CallState(server, reactor))

    access = {name: link(name, port) for name, port in {"bench": mx_port, **(others or {})}
              .items()}
    server = access["bench"].server
    await server.when_ready()
    extra = () if call_log_timing is None else (call_log_timing,)
    site = APISite(API(access, reactor, *extra).resource(), reactor,
                   ConnectionLimit(reactor, CONNECTIONS_PER_ADDRESS))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return {"port": port.getHost().port, "contacts": len(server.address_book)}


# -- server subprocesses (the parent side) -----------------------------------------------------

_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = set(_CPUS[:1]) if len(_CPUS) > 1 else set(_CPUS)
"""Under an HTTP load, the servers (simulator, proxies, bare baseline) share the first CPU and
the load generator gets the others, so the two sides of a measurement do not take turns on one
core (on two cores, unpinned runs swung by a factor of two)."""
LOAD_CPUS = set(_CPUS[1:]) or set(_CPUS)


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


class Children:
    """Subprocesses started by a benchmark, terminated (then killed) when the block exits."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        """``cpus``: where every child runs (:data:`SERVER_CPUS` under an HTTP load)."""
        self._procs: list[subprocess.Popen[str]] = []
        self._cpus = cpus

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        # Newest first, one at a time: a proxy goes before the simulator it is linked to.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def start(self, script: str, *args: str, stderr: Any = None
              ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """Start ``python bench/<script> args...`` and wait for its ``READY`` line; ``stderr``
        (a file) receives the child's log instead of this process's stderr."""
        proc = subprocess.Popen([PYTHON, os.path.join(HERE, script), *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                stderr=stderr, preexec_fn=_pinned(self._cpus))
        self._procs.append(proc)
        return proc, read_tagged(proc, "READY", READY_TIMEOUT, f"{script} {' '.join(args)}")


def read_tagged(proc: subprocess.Popen[str], tag: str, timeout: float,
                who: str) -> dict[str, Any]:
    """The JSON after the child's first ``<tag> `` line; other output passes to stderr."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        if not readable:
            break
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{who}: exited with status {proc.wait()} before its {tag} line")
        if line.startswith(tag + " "):
            found: dict[str, Any] = json.loads(line[len(tag) + 1:])
            return found
        sys.stderr.write(line)
    raise RuntimeError(f"{who}: no {tag} line within {timeout:g} s")


def memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM... of a process, in bytes, from ``/proc/<pid>/status``."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Vm") and line.rstrip().endswith("kB"):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0]) * 1024
    return values


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def get(url: str, auth: str | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """One GET from the parent (setup and sanity checks only, never measured)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# -- load generation -------------------------------------------------------------------------


@dataclass
class Load:
    """One load run: completed requests, over how long, failures and latency; ``late``: the
    requests in flight at the end, served after it and not counted (counted by the Python
    client; wrk abandons them, one per connection)."""

    tool: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    late: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def load_tool(choice: str) -> str:
    """``wrk`` when asked for or (``auto``) installed, else the Python client of this module."""
    if choice == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


_WRK_SCRIPT = """
local auths = {%(auths)s}
local count = 0
function setup(thread)
  count = count + 1
  thread:set("auth", auths[(count - 1) %% #auths + 1])
end
function init(args)
  wrk.headers["Authorization"] = auth
  request_text = wrk.format()
end
function request()
  return request_text
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"errors\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load(tool: str, url: str, seconds: float, connections: int,
         auths: Sequence[str], body: str | None = None) -> Load:
    """Keep-alive GETs of ``url`` on ``connections`` connections for ``seconds``; connection
    ``i`` authenticates with ``auths[i % len(auths)]``. Runs in a separate process. With a
    ``body`` (JSON), POSTs instead, each with its own :data:`UNIQUE` (the Python client only)."""
    if tool == "wrk":
        if body is not None:
            raise ValueError("the wrk client only sends GETs")
        return _wrk(url, seconds, connections, auths)
    command = [PYTHON, os.path.abspath(__file__), "load", url, "--seconds", str(seconds),
               "--connections", str(connections)]
    for auth in auths:
        command += ["--auth", auth]
    if body is not None:
        command += ["--body", body]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                         check=True, preexec_fn=_pinned(LOAD_CPUS)).stdout
    result = json.loads(out)
    return Load("python", result["requests"], result["seconds"], result["errors"],
                result["p50_ms"], result["p99_ms"], result["late"])


def _wrk(url: str, seconds: float, connections: int, auths: Sequence[str]) -> Load:
    # One wrk thread per credential, so each connection keeps one user (wrk has no
    # per-connection state); connections are shared out among the threads.
    threads = min(len(auths), connections)
    script = _WRK_SCRIPT % {"auths": ", ".join(json.dumps(auth) for auth in auths)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--timeout", "10s", "-s", lua.name, url],
            capture_output=True, text=True, timeout=seconds + 60, check=True,
            preexec_fn=_pinned(LOAD_CPUS)).stdout
    line = next((line for line in out.splitlines() if line.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    result = json.loads(line[len("WRKJSON "):])
    # Each connection has one request in flight when wrk stops; the servers serve it, at
    # least in part.
    return Load("wrk", result["requests"], result["duration_us"] / 1e6, result["errors"],
                result["p50_us"] / 1e3, result["p99_us"] / 1e3, late=connections)


@dataclass
class Rounds:
    """What :func:`alternate` measured, one value per round: req/s, p50 and p99 latency (ms)
    per URL, CPU milliseconds per request of each charged process
    (``cpu[url name][process label]``) and the growth per request of each counter
    (``counts[url name][counter]``)."""

    rates: dict[str, list[float]]
    cpu: dict[str, dict[str, list[float]]]
    p50_ms: dict[str, list[float]]
    p99_ms: dict[str, list[float]]
    counts: dict[str, dict[str, list[float]]]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Counters = Callable[[], dict[str, float]]
"""Reads cumulative counters of a server (e.g. a relay's tally), before and after a round."""


def alternate(tool: str, urls: dict[str, str], args: Any, auths: Sequence[str],
              charged: dict[str, dict[str, int]] | None = None,
              counted: dict[str, Counters] | None = None, body: str | None = None) -> Rounds:
    """Warm every URL up, then measure them in alternating rounds. ``charged[name]`` names the
    processes (label: pid) whose CPU time a round of URL ``name`` is charged per request;
    ``counted[name]`` reads counters whose growth it is charged per request; ``body``: POST
    it (see :func:`load`)."""
    charged, counted = charged or {}, counted or {}
    for url in urls.values():  # warm-up, not counted
        load(tool, url, args.warmup, args.connections, auths, body)
    rounds = Rounds({name: [] for name in urls},
                    {name: {label: [] for label in charged.get(name, {})} for name in urls},
                    {name: [] for name in urls}, {name: [] for name in urls},
                    {name: {} for name in urls})
    for _ in range(args.rounds):
        for name, url in urls.items():
            pids = charged.get(name, {})
            before = {label: cpu_seconds(pid) for label, pid in pids.items()}
            counters = counted[name]() if name in counted else {}
            run = load(tool, url, args.seconds, args.connections, auths, body)
            if run.errors or not run.requests:
                raise SystemExit(f"{name}: {run.errors} failed requests out of {run.requests}")
            rounds.rates[name].append(run.rate)
            rounds.p50_ms[name].append(run.p50_ms)
            rounds.p99_ms[name].append(run.p99_ms)
            served = run.requests + run.late  # what the servers' CPU and counters saw
            if name in counted:
                for key, value in counted[name]().items():
                    rounds.counts[name].setdefault(key, []).append(
                        (value - counters[key]) / served)
            spent = []
            for label, pid in pids.items():
                per_request = (cpu_seconds(pid) - before[label]) * 1000 / served
                rounds.cpu[name][label].append(per_request)
                spent.append(f"{label} {per_request:.2f}")
            cpu = f"; CPU ms/request: {', '.join(spent)}" if spent else ""
            print(f"  round: {name:6s} {run.rate:>8,.0f} req/s  (p50 {run.p50_ms:.1f} ms, "
                  f"p99 {run.p99_ms:.1f} ms{cpu})", flush=True)
    return rounds


def compare(rounds: Rounds, labels: dict[str, str], target: float) -> None:
    """Best and median of each, as ratios to the first of ``labels`` (the baseline), and the
    median CPU per request of the charged processes."""
    rates = rounds.rates
    best = {name: max(values) for name, values in rates.items()}
    middle = {name: median(values) for name, values in rates.items()}
    baseline, measured = list(labels)
    for name, label in labels.items():
        cpu = "".join(f"   {process} {median(values):.2f} ms CPU/request"
                      for process, values in rounds.cpu[name].items())
        print(f"  {label:28s} best {best[name]:>8,.0f} req/s   median {middle[name]:>8,.0f} "
              f"req/s   ratio {best[name] / best[baseline]:.2f}{cpu}")
    ratio = best[measured] / best[baseline]
    print(f"{measured} / {baseline} ratio: {ratio:.2f} best, "
          f"{middle[measured] / middle[baseline]:.2f} median "
          f"(target >= {target:g}: {verdict(ratio >= target)})")


# -- the client processes ----------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """(status, body bytes, keep-alive) of one response; chunked or Content-Length."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed by the server")
    status = int(status_line.split(b" ", 2)[1])
    length, chunked, keep_alive = None, False, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value == b"chunked"
        elif name == b"connection":
            keep_alive = value != b"close"
    size = 0
    if chunked:
        while (chunk := int((await reader.readline()).split(b";")[0], 16)) > 0:
            await reader.readexactly(chunk + 2)
            size += chunk
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # trailers
    elif length is not None:
        await reader.readexactly(length)
        size = length
    return status, size, keep_alive


async def _connection(host: str, port: int, request: Callable[[], bytes], deadline: float,
                      latencies: list[float], errors: list[int], late: list[int]) -> None:
    clock = asyncio.get_running_loop().time
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        while clock() < deadline:
            start = clock()
            writer.write(request())
            status, _, keep_alive = await asyncio.wait_for(_read_response(reader), 30)
            if clock() > deadline:
                late[0] += 1
                break  # finished after the end: not counted, as wrk does
            if status >= 400:
                errors[0] += 1
            latencies.append(clock() - start)
            if not keep_alive:
                raise ConnectionError(f"the server closed a keep-alive connection ({status})")
    finally:
        writer.close()


UNIQUE = "{unique}"
"""In a POST body, replaced by 40 hex digits no other request of any run has."""


def _requests(head: str, body: str | None, connection: int) -> Callable[[], bytes]:
    """The requests of one connection: ``head`` (request line and headers) as a GET, or a POST
    of ``body`` with its :data:`UNIQUE` filled in."""
    if body is None:
        fixed = (head + "\r\n").encode()
        return lambda: fixed
    prefix = f"{random.getrandbits(64):016x}{connection:08x}"
    counter = itertools.count()

    def post() -> bytes:
        payload = body.replace(UNIQUE, f"{prefix}{next(counter):016x}").encode()
        return (f"POST{head[3:]}Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload
    return post


async def _load(url: str, seconds: float, connections: int,
                auths: Sequence[str], body: str | None = None) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    latencies: list[float] = []
    errors, late = [0], [0]
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + seconds
    tasks = []
    for index in range(connections):
        auth = f"Authorization: {auths[index % len(auths)]}\r\n" if auths else ""
        head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
        tasks.append(_connection(host, port, _requests(head, body, index), deadline,
                                 latencies, errors, late))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors[0] += sum(isinstance(outcome, BaseException) for outcome in outcomes)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            print(f"load: a connection failed: {outcome!r}", file=sys.stderr)
    ordered = sorted(latencies) or [0.0]
    return {"requests": len(latencies), "late": late[0], "seconds": seconds,
            "errors": errors[0],
            "p50_ms": ordered[len(ordered) // 2] * 1e3,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3}


def fetch(url: str, auth: str | None, timeout: float = 120.0) -> dict[str, Any]:
    """One GET on a fresh connection, body read as fast as possible and hashed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    header = f"Authorization: {auth}\r\n" if auth else ""
    digest = hashlib.sha256()
    size = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        stream = sock.makefile("rb", buffering=1 << 20)
        start = time.perf_counter()
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{header}"
                     "Connection: close\r\n\r\n".encode())
        status = int(stream.readline().split(b" ", 2)[1])
        length, chunked = None, False
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
        if chunked:
            while (chunk := int(stream.readline().split(b";")[0], 16)) > 0:
                data = stream.read(chunk)
                if len(data) != chunk or stream.read(2) != b"\r\n":
                    raise ConnectionError(f"response cut off after {size} bytes")
                digest.update(data)
                size += chunk
        else:
            remaining = length
            while remaining is None or remaining > 0:
                data = stream.read(1 << 20 if remaining is None else min(remaining, 1 << 20))
                if not data:
                    if remaining is not None:
                        raise ConnectionError(f"response cut off after {size} bytes")
                    break
                digest.update(data)
                size += len(data)
                if remaining is not None:
                    remaining -= len(data)
        seconds = time.perf_counter() - start
    return {"status": status, "bytes": size, "sha256": digest.hexdigest(), "seconds": seconds}


def fetch_in_child(url: str, auth: str | None) -> subprocess.Popen[str]:
    """Start the fetch client process; its stdout is :func:`fetch`'s result as JSON."""
    command = [PYTHON, os.path.abspath(__file__), "fetch", url]
    if auth:
        command += ["--auth", auth]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    load_parser = commands.add_parser("load")
    load_parser.add_argument("url")
    load_parser.add_argument("--seconds", type=float, default=5.0)
    load_parser.add_argument("--connections", type=int, default=32)
    load_parser.add_argument("--auth", action="append", default=[])
    load_parser.add_argument("--body", help=f"POST this JSON, {UNIQUE} made unique")
    fetch_parser = commands.add_parser("fetch")
    fetch_parser.add_argument("url")
    fetch_parser.add_argument("--auth")
    args = parser.parse_args()
    if args.command == "load":
        print(json.dumps(asyncio.run(_load(args.url, args.seconds, args.connections,
                                           args.auth, args.body))))
    elif args.command == "fetch":
        print(json.dumps(fetch(args.url, args.auth)))
    else:
        print("bench/_harness.py: shared code of the HTTP benchmarks, nothing to measure")


if __name__ == "__main__":
    main()
