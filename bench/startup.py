"""Time from ``twistd mxproxy`` starting to ``/healthz`` answering 200, and its RSS then.

An operator's restart: the daemon is spawned as a real process, as a service manager would
(``twistd --nodaemon --pidfile= mxproxy --config ... --listen ... --admin-listen ...``), linked
to an MX holding ``--contacts`` (10,000) address-book entries. ``/healthz`` turns 200 once the
MX link is logged in and the whole address book is loaded, which is when the proxy can answer
its users; the script polls it every ``--poll-ms`` (10) from the moment of the spawn, on one
kept-alive connection, and reads the daemon's VmRSS from ``/proc`` at the first 200. Each
answer costs the starting daemon about 0.7 ms of CPU (a new connection per poll: 1.1 ms), so
polling takes ~7% of a CPU from the start it measures: a finer poll would perturb it more.

The simulator runs in its own process, as a real MX is another machine, and is started once.
Each round starts the daemon afresh against an MX with the full address book and against one
with an empty address book (the daemon's own start: imports, services, TLS, login), in
alternation; the medians are printed with their ratio, the proxy's and the MX's CPU seconds
spent until healthy, and the time the admin endpoint took to answer at all.

``--tls`` (the default) is the MX link's default, TLS; ``--rtt-ms`` puts the delaying relay
of ``bench/_relay.py`` between daemon and MX (0: loopback, the target's setting).

Usage: python bench/startup.py [--contacts N] [--rounds R] [--tls|--no-tls] [--rtt-ms R]
                               [--poll-ms P]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import astuple, dataclass
from typing import Any

import _harness as h
import _relay

TARGET_SECONDS = 2.0
TARGET_CONTACTS = 10_000
"""Target: healthy within TARGET_SECONDS with an address book of TARGET_CONTACTS."""
HEALTHY_TIMEOUT = 60.0
CHECKOUT = os.path.dirname(h.HERE)


async def serve_mx(reactor: Any, contacts: int, tls: bool) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX

    pbx = PBX(sn="BENCH3", clock=reactor)
    h.add_contacts(pbx, contacts)
    return {"port": h.listen_mx(reactor, pbx, tls=tls), "contacts": len(pbx.contacts)}


@dataclass
class Start:
    """One daemon start: seconds from spawn to the admin endpoint's first answer and to its
    first 200, VmRSS then, and the CPU seconds the daemon and the MX had spent by then."""

    answering: float
    healthy: float
    rss: float
    proxy_cpu: float
    mx_cpu: float

    def __str__(self) -> str:
        return (f"healthy {self.healthy:.3f} s, admin answering {self.answering:.3f} s, RSS "
                f"{self.rss / 2**20:.1f} MiB, CPU proxy {self.proxy_cpu:.2f} s, MX "
                f"{self.mx_cpu:.2f} s")


def medians(starts: list[Start]) -> Start:
    """Field by field."""
    return Start(*(h.median(values) for values in zip(*map(astuple, starts), strict=True)))


def free_port() -> int:
    """A loopback port free now (the daemon binds it moments later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(connection: http.client.HTTPConnection) -> int | None:
    """The status of ``GET /healthz``, or None while nothing listens."""
    try:
        connection.request("GET", "/healthz")
        with connection.getresponse() as response:
            response.read()
            return response.status
    except ConnectionRefusedError:
        connection.close()
        return None


def start_daemon(scratch: str, mx_port: int, tls: bool, mx_pid: int, poll: float) -> Start:
    """Spawn the daemon, wait for its first 200, measure, stop it."""
    config = os.path.join(scratch, "mxproxy.json")
    with open(config, "w") as file:
        json.dump({"mx": {"bench": {"addr": f"127.0.0.1:{mx_port}", "login": h.SERVER_LOGIN,
                                    "password": h.SERVER_PASSWORD, "tls": tls}}}, file)
    admin = free_port()
    command = [os.path.join(os.path.dirname(h.PYTHON), "twistd"), "--nodaemon", "--pidfile=",
               "mxproxy", "--config", config, "--db", os.path.join(scratch, "mxproxy.db"),
               "--listen", "tcp:0:interface=127.0.0.1",
               "--admin-listen", f"tcp:{admin}:interface=127.0.0.1"]
    # The checkout first on the path, as `make` runs it: twistd finds the plugin there.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")])))
    log_path = os.path.join(scratch, "twistd.log")
    mx_before = h.cpu_seconds(mx_pid)
    with open(log_path, "w") as log:
        began = time.perf_counter()
        proc = subprocess.Popen(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    connection = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    try:
        answering = None
        while (elapsed := time.perf_counter() - began) < HEALTHY_TIMEOUT:
            status = health(connection)
            if status is not None and answering is None:
                answering = elapsed
            if status == 200:
                assert answering is not None
                return Start(answering, elapsed, h.memory(proc.pid)["VmRSS"],
                             h.cpu_seconds(proc.pid), h.cpu_seconds(mx_pid) - mx_before)
            if proc.poll() is not None:
                break
            time.sleep(poll)
        with open(log_path) as log:
            tail = "".join(log.readlines()[-20:])
        raise RuntimeError(f"the daemon was not healthy within {HEALTHY_TIMEOUT:g} s "
                           f"(exit status {proc.poll()}); its log ends:\n{tail}")
    finally:
        connection.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(args: argparse.Namespace) -> None:
    tls = "--tls" if args.tls else "--no-tls"
    books = {"full": args.contacts, "empty": 0}
    starts: dict[str, list[Start]] = {name: [] for name in books}
    with h.Children() as children, tempfile.TemporaryDirectory() as scratch:
        script = os.path.basename(__file__)
        mx: dict[str, tuple[int, int]] = {}
        for name, contacts in books.items():
            proc, ready = children.start(script, "--serve", "--contacts", str(contacts), tls)
            port = ready["port"]
            if args.rtt_ms:
                port = _relay.Relay(children, port, args.rtt_ms).port
            mx[name] = (port, proc.pid)
        for _ in range(args.rounds):
            for name in ("empty", "full"):
                port, pid = mx[name]
                start = start_daemon(scratch, port, args.tls, pid, args.poll_ms / 1000)
                starts[name].append(start)
                print(f"  round: {name:5s} {start}", flush=True)
    link = f"across a {args.rtt_ms:g} ms round trip" if args.rtt_ms else "on loopback"
    print(f"twistd mxproxy spawn -> /healthz 200: MX link {'TLS' if args.tls else 'TCP'} {link}, "
          f"{args.rounds} rounds, polled every {args.poll_ms:g} ms (medians); "
          f"{h.machine_load()}")
    healthy = {}
    for name, label in (("empty", "empty address book"),
                        ("full", f"{args.contacts:,} contacts")):
        middle = medians(starts[name])
        healthy[name] = middle.healthy
        print(f"  {label:20s} {middle} (healthy at worst "
              f"{max(start.healthy for start in starts[name]):.3f} s)")
    print(f"full / empty healthy time: {healthy['full'] / healthy['empty']:.2f} "
          f"(the address book's share of the start)")
    setting = "" if args.contacts == TARGET_CONTACTS and not args.rtt_ms else (
        f", set for {TARGET_CONTACTS:,} contacts on loopback")
    print(f"healthy with {args.contacts:,} contacts: {healthy['full']:.3f} s (target <= "
          f"{TARGET_SECONDS:g} s{setting}: {h.verdict(healthy['full'] <= TARGET_SECONDS)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=TARGET_CONTACTS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="TLS between proxy and MX (default)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="round trip between the proxy and the MX (0: no relay)")
    parser.add_argument("--poll-ms", type=float, default=10.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        h.serve(lambda reactor: serve_mx(reactor, args.contacts, args.tls))
    else:
        if args.contacts < 1 or args.rounds < 1 or args.poll_ms <= 0:
            parser.error("--contacts, --rounds and --poll-ms must be positive")
        if args.rtt_ms < 0:
            parser.error("--rtt-ms must not be negative")
        h.run("startup", measure, args)


if __name__ == "__main__":
    main()
