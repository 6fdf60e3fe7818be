"""Event streams at scale: 10,000 open ``GET events`` streams, then one event per user.

What is measured:

1. memory: the proxy's RSS once every user has one stream open (``--users``: each login
   checked with the MX, each user's call monitor started, each followed by the event hub), and
   once ``--streams`` streams per user are open; the streams added in the second wave are
   idle streams of users already followed, so ``(RSS after - RSS before) / streams added`` is
   the memory of one idle stream (target <= 16 KiB). The RSS per stream over the whole proxy
   (from before any stream) is printed too; it includes each user's MX session (logged out
   after ``--session-idle``), monitor and hub record.
2. fan-out, ``--rounds`` times each: the simulator rings every user at once (one
   ``DeliveredEvent`` each, written back to back), and every stream gets a ``call`` event;
   and one address-book change, which every stream gets as a ``contact`` event. Timed from
   the first event the simulator wrote to the moment the last stream had its event (target <=
   1 s for 10,000 streams), on ``time.perf_counter()``, the system-wide monotonic clock, in
   every process.

Processes, on loopback with the real reactor: ``sim``, the MX simulator; ``proxy``, mxproxy as
``service.makeService`` builds it from a configuration file (its own process, no cap on
connections per address); ``clients``, asyncio processes of 2,500 streams each, which note when
each stream first sees an event of a kind. RLIMIT_NOFILE is raised to its hard limit in each.
As in the HTTP benchmarks, the servers share the first CPU and the clients get the others
(on two CPUs, unpinned clients take turns with the proxy on its own core).

Usage: python bench/event_stream.py [--users 2500] [--streams 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import _harness as h

TARGET_FANOUT_S, TARGET_STREAM_KIB = 1.0, 16.0
PER_CLIENT = 2500  # streams held by one client process
OPEN_AT_ONCE = 64  # connections a client process opens at a time (listen backlog, logins)
CALLER = "+12125550142"
SETTLE = 2.0  # seconds between hanging up a round's calls and ringing the next
MARKERS = {"ringing": b'"event":"ringing"', "contact": b"event: contact\n"}
"""What a client looks for in its streams, by name: a call ringing (not the hang-ups of the
last round), an address-book change."""
TAIL = min(len(marker) for marker in MARKERS.values()) - 1


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def login(index: int) -> tuple[str, str]:
    return f"bench{index}", f"secret-{index}"


# -- the simulator -------------------------------------------------------------------------------


async def serve_sim(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The PBX; SIGUSR1 rings every user, SIGUSR2 changes an address-book entry. Each prints
    ``SENT {"first", "last"}``: when the first event was made and when the last was handed to
    the connection (they leave together, once the handler returns to the reactor)."""
    from mxproxy.testing.mxsim import PBX, Contact

    raise_nofile()

    class IndexedPBX(PBX):
        """Monitors and contacts found in indexes built at each burst: the simulator's own
        scans per call (2,500 user sessions, 2,500 contacts) are no part of the fan-out."""

        index: dict[str, list[Any]] | None = None
        phones: dict[str, Any] | None = None
        extensions: dict[str, Any] = {}

        def monitors_of(self, device: str) -> list[Any]:
            if self.index is not None:
                return list(self.index.get(device, ()))
            return super().monitors_of(device)

        def contact_at(self, extension: str) -> Any:
            if self.phones is not None:
                return self.phones.get(extension)
            return super().contact_at(extension)

        def user_by_extension(self, extension: str) -> Any:
            return self.extensions.get(extension)

    pbx = IndexedPBX(sn="BENCHSSE", clock=reactor)
    for index in range(args.users):
        pbx.add_user(*login(index), str(20000 + index), first_name="Bench", last_name=str(index))
    pbx.extensions = {user.extension: user for user in pbx.users.values()}
    contact = pbx.add_contact(Contact(jid="", first_name="Changing", business_phone="4000"))
    mx_port = h.listen_mx(reactor, pbx)

    def sent(first: float) -> None:
        print("SENT " + json.dumps({"first": first, "last": time.perf_counter()}), flush=True)

    def ring() -> None:
        pbx.phones = {entry.business_phone: entry for entry in pbx.contacts.values()}
        pbx.index = {}
        for session in pbx.sessions:
            for cross_ref, device in session.monitors.items():
                pbx.index.setdefault(device, []).append((session, cross_ref))
        for call in list(pbx.calls.values()):
            pbx.hang_up(call)  # the last round's, done with before the clock starts
        reactor.callLater(SETTLE, burst)

    def burst() -> None:
        first = time.perf_counter()
        for index in range(args.users):
            pbx.place_call(CALLER, str(20000 + index))
        sent(first)

    def change() -> None:
        pbx.phones = None  # the change is to the book
        first = time.perf_counter()
        pbx.update_contact(contact.jid, last_name=f"{first:.6f}")
        sent(first)

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(ring))
    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(change))
    return {"mx_port": mx_port}


# -- the proxy -----------------------------------------------------------------------------------


async def serve_proxy(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from mxproxy import service
    from mxproxy.options import MXProxyOptions

    raise_nofile()
    options = MXProxyOptions()
    options.parseOptions(["--config", args.config, "--db", args.db, "--host",
                          f"127.0.0.1:{args.port}", "--admin-listen", "none",
                          "--max-connections-per-address", "0",
                          "--session-idle", str(args.session_idle)])
    root = service.makeService(options, reactor)
    if args.profile_to:
        signal.signal(signal.SIGUSR1, lambda *_: h.toggle_profiler(args.profile_to))
    root.privilegedStartService()
    root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    server = next(child for child in root if child.name == "bench")
    await server.when_ready()
    return {"contacts": len(server.address_book)}


# -- the clients ---------------------------------------------------------------------------------


class Stream(asyncio.Protocol):
    """One event stream: opened once its headers and first comment came; notes when it first
    saw each of :data:`MARKERS` since the last reset."""

    def __init__(self, request: bytes, opened: asyncio.Future[int]) -> None:
        self._request = request
        self._opened = opened
        self._head = b""
        self._tail = b""
        self.seen: dict[str, float] = {}

    def connection_made(self, transport: Any) -> None:
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        stamp = time.perf_counter()
        if not self._opened.done():
            self._head += data
            if b": mxproxy events" in self._head or b"\r\n\r\n" in self._head and \
                    not self._head.startswith(b"HTTP/1.1 200"):
                self._opened.set_result(int(self._head.split(b" ", 2)[1]))
            return
        scan = self._tail + data
        for name, marker in MARKERS.items():
            if name not in self.seen and marker in scan:
                self.seen[name] = stamp
        self._tail = scan[-TAIL:]  # a marker split between reads; too short to hold a whole one

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._opened.done():
            self._opened.set_exception(ConnectionError("closed before the stream opened"))


async def run_clients(args: argparse.Namespace) -> None:
    """Open a stream per user of ``--first``..``--first + --count``; then answer the parent's
    lines: ``report <marker>`` -> ``REPORT {"stamps"}`` (when each stream first saw it, None
    where not yet), ``reset``, ``quit``."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    streams: list[Stream] = []
    limit = asyncio.Semaphore(OPEN_AT_ONCE)

    async def open_one(index: int) -> None:
        user, password = login(index)
        token = h.basic(user, password)
        request = (f"GET /mx/bench/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: {token}\r\n\r\n").encode()
        async with limit:
            opened: asyncio.Future[int] = loop.create_future()
            _, stream = await loop.create_connection(lambda: Stream(request, opened),
                                                     "127.0.0.1", args.port)
            status = await asyncio.wait_for(opened, 120)
        if status != 200:
            raise RuntimeError(f"stream of {user}: status {status}")
        streams.append(stream)

    await asyncio.gather(*(open_one(index) for index in range(args.first,
                                                               args.first + args.count)))
    print("READY " + json.dumps({"streams": len(streams)}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "report":
            print("REPORT " + json.dumps({"stamps": [s.seen.get(line[1]) for s in streams]}),
                  flush=True)
        elif line[0] == "reset":
            for stream in streams:
                stream.seen.clear()
        else:
            break


# -- the parent ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss(pid: int) -> int:
    return h.memory(pid)["VmRSS"]


def settled_rss(pid: int) -> int:
    """The RSS once it stopped moving (the last logins and monitors done)."""
    last = rss(pid)
    while True:
        time.sleep(2.0)
        now = rss(pid)
        if abs(now - last) < 64 * 1024:
            return now
        last = now


def start_clients(port: int, first: int, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [h.PYTHON, os.path.abspath(__file__), "--serve", "clients", "--port", str(port),
         "--first", str(first), "--count", str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, h.LOAD_CPUS))
    h.read_tagged(proc, "READY", 600, "a client process")
    return proc


def fan_out(sim: subprocess.Popen[str], clients: list[subprocess.Popen[str]], kind: str,
            signum: int, total: int, timeout: float = 30.0) -> tuple[float, float, int]:
    """Trigger one event per user (or one for all), wait until every stream saw it: (seconds
    from the simulator's write to the last stream's event, to the median stream's, streams)."""
    for proc in clients:
        assert proc.stdin is not None
        proc.stdin.write("reset\n")
        proc.stdin.flush()
    sim.send_signal(signum)
    sent = h.read_tagged(sim, "SENT", timeout, "the simulator")
    deadline = time.monotonic() + timeout
    while True:
        stamps: list[float | None] = []
        for proc in clients:
            assert proc.stdin is not None
            proc.stdin.write(f"report {kind}\n")
            proc.stdin.flush()
            stamps += h.read_tagged(proc, "REPORT", timeout, "a client process")["stamps"]
        arrived = sorted(stamp for stamp in stamps if stamp is not None)
        if len(arrived) == total or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not arrived:
        return float("nan"), float("nan"), 0
    return (arrived[-1] - sent["last"], h.median(arrived) - sent["last"], len(arrived))


def measure(args: argparse.Namespace) -> bool:
    total = args.users * args.streams
    print(f"event streams: {args.users} users x {args.streams} streams = {total:,}; "
          f"{h.machine_load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="event-stream-") as work, \
            h.Children(h.SERVER_CPUS) as children:
        sim_proc, sim = children.start(os.path.basename(__file__), "--serve", "sim",
                                       "--users", str(args.users))
        config = os.path.join(work, "mxproxy.json")
        with open(config, "w") as file:
            json.dump({"mx": {"bench": {"addr": f"127.0.0.1:{sim['mx_port']}",
                                        "login": h.SERVER_LOGIN,
                                        "password": h.SERVER_PASSWORD, "tls": False}}}, file)
        port = free_port()
        log = open(os.path.join(work, "proxy.log"), "w")
        profile = os.path.join(work, "proxy.prof")
        proxy_proc, _ = children.start(
            os.path.basename(__file__), "--serve", "proxy", "--config", config, "--db",
            os.path.join(work, "tokens.db"), "--port", str(port), "--session-idle",
            str(args.session_idle), *(["--profile-to", profile] if args.profile else []),
            stderr=log)
        clients: list[subprocess.Popen[str]] = []
        try:
            base = settled_rss(proxy_proc.pid)
            started = time.perf_counter()
            for first in range(0, args.users, PER_CLIENT):
                clients.append(start_clients(port, first, min(PER_CLIENT, args.users - first)))
            wave = time.perf_counter() - started
            followed = settled_rss(proxy_proc.pid)
            started = time.perf_counter()
            for _ in range(args.streams - 1):
                for first in range(0, args.users, PER_CLIENT):
                    clients.append(start_clients(port, first,
                                                 min(PER_CLIENT, args.users - first)))
            more = time.perf_counter() - started
            full = settled_rss(proxy_proc.pid)
            added = total - args.users
            per_stream = (full - followed) / added / 1024 if added else float("nan")
            print(f"  opened {args.users:,} streams (one per user: logins, monitors) in "
                  f"{wave:.1f} s, then {added:,} more in {more:.1f} s")
            print(f"  proxy RSS: {base / 2**20:.1f} MiB before, {followed / 2**20:.1f} MiB "
                  f"with one stream per user, {full / 2**20:.1f} MiB with {total:,} streams")
            print(f"  RSS per idle stream (second wave): {per_stream:.1f} KiB (target <= "
                  f"{TARGET_STREAM_KIB:g}: {h.verdict(per_stream <= TARGET_STREAM_KIB)}); "
                  f"over the whole proxy: {(full - base) / total / 1024:.1f} KiB per stream")
            met = per_stream <= TARGET_STREAM_KIB
            if args.profile:
                proxy_proc.send_signal(signal.SIGUSR1)
            for kind, signum, what in (("ringing", signal.SIGUSR1, "one call ringing per user"),
                                       ("contact", signal.SIGUSR2, "one address-book change")):
                for number in range(args.rounds):
                    user, system = cpu(proxy_proc.pid)
                    last, middle, count = fan_out(sim_proc, clients, kind, signum, total)
                    now = cpu(proxy_proc.pid)
                    user, system = now[0] - user, now[1] - system
                    ok = count == total and last <= TARGET_FANOUT_S
                    met &= ok
                    print(f"  fan-out, {what}, round {number + 1}: {count:,}/{total:,} "
                          f"streams, last {last * 1e3:.0f} ms, median {middle * 1e3:.0f} ms "
                          f"(target last <= {TARGET_FANOUT_S:g} s: {h.verdict(ok)}); proxy "
                          f"CPU in the round: user {user:.2f} s, system {system:.2f} s",
                          flush=True)
            print(f"targets {'met' if met else 'NOT all met'}")
            if args.profile:
                proxy_proc.send_signal(signal.SIGUSR1)
                while not os.path.exists(profile):
                    time.sleep(0.2)
                time.sleep(1.0)
                print("\n== the proxy during the fan-outs (cProfile, by own time) ==")
                pstats.Stats(profile).sort_stats("tottime").print_stats(25)
                pstats.Stats(profile).sort_stats("cumulative").print_stats("mxproxy", 25)
        finally:
            for proc in clients:
                if proc.poll() is None:
                    assert proc.stdin is not None
                    proc.stdin.close()
                    proc.terminate()
                    proc.wait(timeout=10)
            log.close()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2500)
    parser.add_argument("--streams", type=int, default=4, help="streams per user")
    parser.add_argument("--rounds", type=int, default=3, help="fan-outs of each kind")
    parser.add_argument("--session-idle", type=float, default=3600.0,
                        help="the proxy's --session-idle: the users' MX sessions stay for the "
                             "whole run, so that none closing shrinks the second wave's RSS")
    parser.add_argument("--profile", action="store_true",
                        help="profile the proxy during the fan-outs and print where its time "
                             "went (the fan-outs are then slower)")
    parser.add_argument("--serve", choices=("sim", "proxy", "clients"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "sim":
        h.serve(lambda reactor: serve_sim(reactor, args))
    elif args.serve == "proxy":
        h.serve(lambda reactor: serve_proxy(reactor, args))
    elif args.serve == "clients":
        asyncio.run(run_clients(args))
    else:
        if min(args.users, args.streams, args.rounds) < 1 or args.streams > 8:
            parser.error("--users, --rounds positive; --streams from 1 to 8 (the cap per user)")
        h.run("event_stream", measure, args)


if __name__ == "__main__":
    main()
