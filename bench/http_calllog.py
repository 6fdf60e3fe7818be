"""GET /mx/<mx>/calllog latency across a WAN: pooled MX sessions vs a fresh login per request.

The API as built keeps each user's MX session open between requests (``SessionPool``). The
baseline is the original product's behaviour: connect to the MX, log in, fetch the call log,
log out, for every request. It is the same API with :class:`FreshSessionPool`, a SessionPool
subclass defined here whose ``use`` opens a session for the one call and logs it out after it
(mxproxy itself is not changed).

What a user feels is the round trips to the MX, which is another machine, often across a WAN:
``--rtt-ms`` (40) puts the delaying relay of ``bench/_relay.py`` between the proxies and the
simulator, so a TCP connect, each TLS handshake flight and each MX command cost what they cost
at that round-trip time (the relay's model is in its docstring; the script checks it first).
A pooled request needs one round trip (the call-log command); a fresh one adds the connect, the
TLS handshake and the login. ``--rtt-ms 0`` leaves the relay out (loopback only).

Processes, all on loopback with ephemeral ports and the real reactor: the MX simulator, alone in
its own process as a real MX is another machine, answering every command after
``--delay-ms`` (2; ``Faults.reply_delay`` on the reactor clock) and holding ``--entries`` call-log
entries for each of ``--users`` users; the relay; one mxproxy process with pooled sessions and
one with fresh logins, both linked through the relay to that simulator; the load generator,
the asyncio client of ``bench/_harness.py``. Rounds alternate pooled/fresh. Not ``wrk`` unless
asked for (``--client wrk``): it abandons the request each connection has in flight when a
round ends, and the proxy retires a session whose call-log command was cancelled (the MX may
still owe blocks), so every pooled round would begin with a fresh login per user.

CPUs: the proxies get the first CPU to themselves; the simulator and the relay share the others
with the load generator. The MX's own work (its half of every TLS handshake and login) is not
the proxy's cost; on the proxy's CPU it was counted against both modes, the fresh one most.

Load: one request in flight per user, as the mobile apps poll: ``--connections`` keep-alive
connections (8) over ``--users`` distinct users (8), each sending its next request when the
previous one is answered (a closed loop). The p50 and p99 latency of each mode (medians over the
rounds), its req/s (users / latency, so the same ratio; the throughput mode of earlier versions
of this script is this one with ``--rtt-ms 0``) and the CPU milliseconds per request of the
proxy and the simulator are printed. One user on many connections would mostly measure the
per-user session lock (a pooled session runs one request at a time).

Call-log size: 30 entries, sent by the MX as a block of 21 and one of 9; in both modes the
collection ends at the answer to the fence sent after the request (``mxproxy/calllog.py``), one
round trip whatever the length.

``--tls`` (the default, as on an MX's port 7778 and in the original) makes the simulator serve
TLS and both proxies connect with TLS (unpinned); ``--no-tls`` runs the MX link on plain TCP.

Usage: python bench/http_calllog.py [--rtt-ms R] [--tls|--no-tls] [--users U]
                                    [--connections C] [--entries N] [--delay-ms D]
                                    [--seconds S] [--rounds R] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import _harness as h
import _relay

from mxproxy.csta.client import open_session
from mxproxy.sessions import SessionPool, UserSession

T = TypeVar("T")
POOLED_BUDGET_MS = 5.0
"""Target: a pooled request's p50 is at most one round trip plus this."""
RATIO_TARGET = 3.5
"""Target: fresh / pooled p50, set for a 40 ms round trip over TLS."""
MODES = {"fresh": "fresh login per request", "pooled": "pooled sessions"}


def user(index: int) -> tuple[str, str, str]:
    """Login, password and extension of bench user ``index``."""
    return f"bench{index}", f"secret-{index}", str(2000 + index)


class FreshSessionPool(SessionPool):
    """The original's behaviour: a new MX connection and login for every request, logged out
    after it. Only ``use`` is replaced, which is all the call-log route calls; nothing is
    pooled, so ``logged_in`` finds nothing and the auth cache is never filled."""

    def __init__(self, reactor: Any, address: Any, factory: Any, **options: Any) -> None:
        super().__init__(reactor, address, factory, **options)
        self._link = (reactor, address, factory)

    async def use(self, login: str, password: str,
                  work: Callable[[UserSession], Awaitable[T]], retry: bool = True) -> T:
        reactor, address, factory = self._link
        protocol, info = await open_session(reactor, address, factory, login, password)
        self.logins += 1
        try:
            return await work(UserSession(protocol, info, login))
        finally:
            protocol.logout()


async def serve_mx(reactor: Any, users: int, entries: int, delay: float,
                   tls: bool) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX

    pbx = PBX(sn="BENCH2", clock=reactor)
    now = int(reactor.seconds())
    for index in range(users):
        login, password, extension = user(index)
        pbx.add_user(login, password, extension, first_name="Bench", last_name=str(index))
        for number in range(entries):
            answered = number % 3 != 0
            incoming = number % 2 == 0
            other = f"+1212555{number:04d}"
            pbx.add_call_record(
                login, direction="incoming" if incoming else "outgoing",
                disconnect=now - 600 * (entries - number), connect=(
                    now - 600 * (entries - number) - 60 if answered else None),
                missed=incoming and not answered,
                calling_party=other if incoming else extension,
                original_called_party=extension if incoming else other,
                first_name=f"Caller{number}", last_name="Example")
    pbx.faults.reply_delay = delay
    return {"port": h.listen_mx(reactor, pbx, tls=tls)}


def measure(args: argparse.Namespace) -> None:
    tool = h.load_tool(args.client)
    auths = [h.basic(login, password) for login, password, _ in map(user, range(args.users))]
    if args.rtt_ms:
        print(_relay.check(args.rtt_ms), flush=True)
    tls = "--tls" if args.tls else "--no-tls"
    # The simulator stands in for the MX, another machine, and the relay for the network: they
    # run beside the load generator, leaving the servers' CPU to the proxy being measured.
    with h.Children(h.LOAD_CPUS) as mx_side, h.Children(h.SERVER_CPUS) as children:
        script = os.path.basename(__file__)
        mx_proc, mx = mx_side.start(script, "--serve", "mx", "--users", str(args.users),
                                    "--entries", str(args.entries), "--delay-ms",
                                    str(args.delay_ms), tls)
        urls, charged, counted = {}, {}, {}
        for mode in ("pooled", "fresh"):
            mx_port = mx["port"]
            if args.rtt_ms:  # a relay per mode, so that its tally is that mode's
                relay = _relay.Relay(mx_side, mx_port, args.rtt_ms)
                mx_port, counted[mode] = relay.port, relay.tally
            proxy_proc, proxy = children.start(script, "--serve", mode, "--mx-port",
                                               str(mx_port), tls)
            urls[mode] = f"http://127.0.0.1:{proxy['port']}/mx/bench/calllog"
            charged[mode] = {"proxy": proxy_proc.pid, "MX": mx_proc.pid}
            status, body = h.get(urls[mode], auths[0])
            if status != 200:
                raise SystemExit(f"{mode}: GET calllog: HTTP {status}: {body[:200]!r}")
            got = len(json.loads(body)["callog"])
            if got != args.entries:
                raise SystemExit(f"{mode}: the API returned {got} entries, expected "
                                 f"{args.entries}")
        # The warm-up logs all users in.
        rounds = h.alternate(tool, urls, args, auths, charged, counted)
    link = (f"across a {args.rtt_ms:g} ms round trip" if args.rtt_ms else "on loopback")
    print(f"GET /mx/bench/calllog: {args.entries} entries, MX reply delay {args.delay_ms:g} ms, "
          f"MX link {'TLS' if args.tls else 'TCP'} {link}; {tool}, {args.users} users with one "
          f"request in flight each on {args.connections} keep-alive connections, "
          f"{args.rounds} alternating rounds of {args.seconds:g} s (medians over the rounds); "
          f"{h.machine_load()}")
    summarize(rounds, args)


def summarize(rounds: h.Rounds, args: argparse.Namespace) -> None:
    """Latency, req/s and CPU per request of each mode; the two targets."""
    p50 = {mode: h.median(rounds.p50_ms[mode]) for mode in MODES}
    cpu = {mode: {process: h.median(values) for process, values in rounds.cpu[mode].items()}
           for mode in MODES}
    rtt = args.rtt_ms
    for mode, label in MODES.items():
        trips = ""
        if rounds.counts[mode]:  # the relay's tally
            tally = {key: h.median(values) for key, values in rounds.counts[mode].items()}
            trips = (f" ({tally['round_trips']:.2f} round trips, {tally['connections']:.2f} "
                     "connects per request)")
        in_rtts = f" = {p50[mode] / rtt:.2f} RTT{trips}" if rtt else ""
        spent = ", ".join(f"{process} {value:.2f}" for process, value in cpu[mode].items())
        print(f"  {label:24s} p50 {p50[mode]:6.1f} ms{in_rtts}   p99 "
              f"{h.median(rounds.p99_ms[mode]):6.1f} ms   {h.median(rounds.rates[mode]):6,.0f} "
              f"req/s   CPU ms/request: {spent}")
    budget = rtt + POOLED_BUDGET_MS
    print(f"pooled p50: {p50['pooled']:.1f} ms (target <= 1 RTT + {POOLED_BUDGET_MS:g} ms = "
          f"{budget:g} ms: {h.verdict(p50['pooled'] <= budget)})")
    ratio = p50["fresh"] / p50["pooled"]
    setting = "" if rtt == 40 and args.tls else (
        f", set for 40 ms over TLS; this run: {rtt:g} ms over {'TLS' if args.tls else 'TCP'}")
    print(f"fresh / pooled p50 ratio: {ratio:.2f} (target >= {RATIO_TARGET:g}{setting}: "
          f"{h.verdict(ratio >= RATIO_TARGET)})")
    fresh, pooled = (cpu[mode]["proxy"] for mode in ("fresh", "pooled"))
    print(f"proxy CPU per request, fresh / pooled: {fresh:.2f} / {pooled:.2f} ms = "
          f"{fresh / pooled:.2f}: the most pooling can gain once the proxy's CPU is the limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=_relay.DEFAULT_RTT_MS,
                        help="round trip between the proxies and the MX (0: no relay)")
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True,
                        help="TLS between proxy and MX (default)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--entries", type=int, default=30)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="MX reply delay")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per mode")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="python")
    parser.add_argument("--serve", choices=("mx", "pooled", "fresh"), help=argparse.SUPPRESS)
    parser.add_argument("--mx-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mx":
        h.serve(lambda reactor: serve_mx(reactor, args.users, args.entries,
                                         args.delay_ms / 1000, args.tls))
    elif args.serve in ("pooled", "fresh"):
        pool = FreshSessionPool if args.serve == "fresh" else None
        h.serve(lambda reactor: h.start_proxy(reactor, args.mx_port, pool_class=pool,
                                              mx_tls=args.tls))
    else:
        if min(args.users, args.connections, args.rounds) < 1 or args.seconds <= 0:
            parser.error("--users, --connections, --rounds and --seconds must be positive")
        if min(args.entries, args.delay_ms, args.rtt_ms) < 0:
            parser.error("--entries, --delay-ms and --rtt-ms must not be negative")
        h.run("http_calllog", measure, args)


if __name__ == "__main__":
    main()
