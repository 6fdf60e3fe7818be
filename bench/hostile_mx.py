"""GET /mx/bench/addressbook latency while another MX floods its link with malformed frames.

Three processes besides the load generator, on loopback with ephemeral ports: the simulator
(the healthy MX, with http_addressbook.py's ``--contacts`` entries), the hostile MX double
(``mxproxy.testing.hostilemx``), and mxproxy with both as MX entries, ``bench`` and ``hostile``,
wired as ``service.makeService`` does. The two MX run beside the load generator, as the other
machines they stand for; the proxy has the servers' CPU to itself.

Rounds alternate: quiet (the hostile MX is linked and idle) and flood (SIGUSR1: it floods every
link it has, and every new one as soon as its address book is served, with malformed frames
as fast as the proxy reads them; SIGUSR2 ends it and makes it report what it sent; the next
round waits until the proxy's CPU is idle again, in case it still has a backlog). Each round
measures the healthy MX's address book, which the proxy answers from its cache, so what the
flood can cost it is the reactor's time: the p99 of the flood rounds against the quiet ones
is the figure (target: within 2x), best and median of the rounds as the other benches print
(on a shared machine a round's p99 swings with the neighbours' load, either kind of round).
Also printed: the proxy's CPU per request, the links the hostile MX got, the frames it wrote,
and the lines the proxy logged (warnings and up).

Usage: python bench/hostile_mx.py [--contacts N] [--seconds S] [--rounds R]
                                  [--connections C] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import tempfile
import time
from typing import Any

import _harness as h
from http_addressbook import LOGIN, PASSWORD, serve_mx

TARGET = 2.0
SETTLED = 0.1  # share of a CPU under which the proxy counts as idle again
SETTLE_LIMIT = 120.0


async def serve_hostile(reactor: Any) -> dict[str, Any]:
    from mxproxy.testing.hostilemx import HostileMX, Script

    hostile = HostileMX(Script(sn="HOSTILE1", contacts=10), reactor)
    port = hostile.listen(reactor)

    def report() -> None:
        hostile.calm()
        print("STATS " + json.dumps({"connections": hostile.connections,
                                     "flooded": hostile.flooded}), flush=True)

    # Signal handlers run between bytecodes: hand the work to the reactor.
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(hostile.flood))
    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(report))
    return {"port": port.getHost().port}


def settle(pid: int) -> float:
    """Seconds until the proxy is idle again after a flood (it may still be reading a backlog),
    so that a quiet round measures a quiet proxy."""
    start = time.monotonic()
    while time.monotonic() - start < SETTLE_LIMIT:
        before = h.cpu_seconds(pid)
        time.sleep(0.5)
        if h.cpu_seconds(pid) - before < SETTLED * 0.5:
            break
    return time.monotonic() - start - 0.5


def measure(args: argparse.Namespace) -> None:
    tool = h.load_tool(args.client)
    auth = h.basic(LOGIN, PASSWORD)
    script = os.path.basename(__file__)
    with (h.Children(h.LOAD_CPUS) as mx_side, h.Children(h.SERVER_CPUS) as children,
          tempfile.NamedTemporaryFile("w+") as proxy_log):
        _, mx = mx_side.start(script, "--serve", "mx", "--contacts", str(args.contacts))
        hostile_proc, hostile = mx_side.start(script, "--serve", "hostile")
        api_proc, api = children.start(script, "--serve", "api", "--mx-port", str(mx["port"]),
                                       "--hostile-port", str(hostile["port"]),
                                       stderr=proxy_log)
        url = f"http://127.0.0.1:{api['port']}/mx/bench/addressbook"
        status, body = h.get(url, auth)
        if status != 200 or len(json.loads(body)["addressbook"]) != args.contacts:
            raise SystemExit(f"GET {url}: HTTP {status}: {body[:200]!r}")
        h.load(tool, url, args.warmup, args.connections, [auth])
        p99: dict[str, list[float]] = {"quiet": [], "flood": []}
        cpu: dict[str, list[float]] = {"quiet": [], "flood": []}
        stats: dict[str, int] = {}
        settled: list[float] = []
        for _ in range(args.rounds):
            for mode in ("quiet", "flood"):
                if mode == "flood":
                    hostile_proc.send_signal(signal.SIGUSR1)
                before = h.cpu_seconds(api_proc.pid)
                hostile_before = h.cpu_seconds(hostile_proc.pid)
                run = h.load(tool, url, args.seconds, args.connections, [auth])
                if mode == "flood":
                    hostile_proc.send_signal(signal.SIGUSR2)
                    stats = h.read_tagged(hostile_proc, "STATS", 30, "hostile MX")
                    settled.append(settle(api_proc.pid))
                if mode == "quiet" and (run.errors or not run.requests):
                    raise SystemExit(f"quiet: {run.errors} failed requests of {run.requests}")
                # A flood that starves the reactor answers nothing within the round: no p99.
                p99[mode].append(run.p99_ms if run.requests else math.inf)
                spent = h.cpu_seconds(api_proc.pid) - before
                cpu[mode].append(spent * 1000 / run.requests if run.requests else math.inf)
                print(f"  round: {mode:5s} {run.rate:>8,.0f} req/s  (p50 {run.p50_ms:.2f} ms, "
                      f"p99 {p99[mode][-1]:.2f} ms, {run.errors} errors; proxy CPU "
                      f"{cpu[mode][-1]:.3f} ms/request; hostile MX CPU "
                      f"{h.cpu_seconds(hostile_proc.pid) - hostile_before:.2f} s)", flush=True)
        proxy_log.seek(0)
        logged = sum(1 for _ in proxy_log)
    print(f"GET /mx/bench/addressbook ({args.contacts} contacts) beside a hostile MX; {tool}, "
          f"{args.connections} keep-alive connections, {args.rounds} rounds of {args.seconds:g} "
          "s each quiet and flooded")
    print(f"  hostile MX: {stats['connections']} links from the proxy, {stats['flooded']:,} "
          f"malformed frames written; the proxy logged {logged} lines and was idle again "
          f"{max(settled):.1f} s after a flood at the latest")
    best = {mode: min(values) for mode, values in p99.items()}
    middle = {mode: h.median(values) for mode, values in p99.items()}
    for mode in ("quiet", "flood"):
        print(f"  {mode:5s} p99 best {best[mode]:8.2f} ms   median {middle[mode]:8.2f} ms   "
              f"proxy CPU {h.median(cpu[mode]):.3f} ms/request (median)")
    ratio = best["flood"] / best["quiet"]
    print(f"flooded / quiet p99: {ratio:.2f} best, {middle['flood'] / middle['quiet']:.2f} median "
          f"(target <= {TARGET:g}: {h.verdict(ratio <= TARGET)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=5, help="of each kind")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=4,
                        help="few, so that the p99 is a request's time more than a queue's")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--serve", choices=("mx", "hostile", "api"), help=argparse.SUPPRESS)
    parser.add_argument("--mx-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--hostile-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mx":
        h.serve(lambda reactor: serve_mx(reactor, args.contacts))
    elif args.serve == "hostile":
        h.serve(serve_hostile)
    elif args.serve == "api":
        h.serve(lambda reactor: h.start_proxy(reactor, args.mx_port,
                                              others={"hostile": args.hostile_port}))
    else:
        if args.contacts < 1 or args.rounds < 1 or args.seconds <= 0:
            parser.error("--contacts, --rounds and --seconds must be positive")
        h.run("hostile_mx", measure, args)


if __name__ == "__main__":
    main()
