"""GET /mx/<mx>/calllog requests per second: pooled MX sessions vs a fresh login per request.

The API as built keeps each user's MX session open between requests (``SessionPool``). The
baseline is the original product's behaviour: connect to the MX, log in, fetch the call log,
log out, for every request. It is the same API with :class:`FreshSessionPool`, a SessionPool
subclass defined here whose ``use`` opens a session for the one call and logs it out after it
(mxproxy itself is not changed).

Processes, all on loopback with ephemeral ports and the real reactor: the MX simulator, alone in
its own process as a real MX is another machine, answering every command after
``--delay-ms`` (``Faults.reply_delay`` on the reactor clock) and holding ``--entries`` call-log
entries for each of ``--users`` users; one mxproxy process with pooled sessions and one with
fresh logins, both linked to that simulator; the load generator (``wrk``, else the asyncio
client of ``bench/_harness.py``) in a fourth. Rounds alternate pooled/fresh.

CPUs: the proxies get the first CPU to themselves; the simulator shares the others with the load
generator. The MX's own work (its half of every TLS handshake and login) is not the proxy's
cost; on the proxy's CPU it was counted against both modes, the fresh one most.

Concurrency: ``--connections`` keep-alive connections (8) spread over ``--users`` distinct users
(8), so each connection polls as one user, as the mobile apps do. One user on many connections
would mostly measure the per-user session lock (a pooled session runs one request at a time)
instead of what pooling saves.

Call-log size: 30 entries, sent by the MX as a block of 21 and one of 9; in both modes the
collection ends at the answer to the fence sent after the request (``mxproxy/calllog.py``), one
round trip whatever the length.

``--tls`` makes the simulator serve TLS and both proxies connect with TLS (unpinned), as an MX
on its default port 7778 and the original did; by default the MX link is plain TCP.

Usage: python bench/http_calllog.py [--users U] [--connections C] [--entries N] [--delay-ms D]
                                    [--seconds S] [--rounds R] [--tls]
                                    [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import _harness as h

from mxproxy.csta.client import open_session
from mxproxy.sessions import SessionPool, UserSession

T = TypeVar("T")
TARGET = 5.0


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
    tls = ["--tls"] if args.tls else []
    # The simulator stands in for the MX, another machine: it runs beside the load generator,
    # leaving the servers' CPU to the proxy being measured.
    with h.Children(h.LOAD_CPUS) as mx_side, h.Children(h.SERVER_CPUS) as children:
        script = os.path.basename(__file__)
        mx_proc, mx = mx_side.start(script, "--serve", "mx", "--users", str(args.users),
                                    "--entries", str(args.entries), "--delay-ms",
                                    str(args.delay_ms), *tls)
        urls, charged = {}, {}
        for mode in ("pooled", "fresh"):
            proxy_proc, proxy = children.start(script, "--serve", mode, "--mx-port",
                                               str(mx["port"]), *tls)
            urls[mode] = f"http://127.0.0.1:{proxy['port']}/mx/bench/calllog"
            charged[mode] = {"proxy": proxy_proc.pid, "MX": mx_proc.pid}
            status, body = h.get(urls[mode], auths[0])
            if status != 200:
                raise SystemExit(f"{mode}: GET calllog: HTTP {status}: {body[:200]!r}")
            got = len(json.loads(body)["callog"])
            if got != args.entries:
                raise SystemExit(f"{mode}: the API returned {got} entries, expected "
                                 f"{args.entries}")
        rounds = h.alternate(tool, urls, args, auths, charged)  # the warm-up logs all users in
    print(f"GET /mx/bench/calllog: {args.entries} entries, MX reply delay {args.delay_ms:g} ms, "
          f"MX link {'TLS' if args.tls else 'TCP'}; {tool}, {args.connections} keep-alive "
          f"connections over {args.users} users, {args.rounds} alternating rounds of "
          f"{args.seconds:g} s")
    h.compare(rounds, {"fresh": "fresh login per request", "pooled": "pooled sessions"}, TARGET)
    fresh, pooled = (h.median(rounds.cpu[mode]["proxy"]) for mode in ("fresh", "pooled"))
    print(f"proxy CPU per request, fresh / pooled: {fresh:.2f} / {pooled:.2f} ms = "
          f"{fresh / pooled:.2f}: the most pooling can gain once the proxy's CPU is the limit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--entries", type=int, default=30)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="MX reply delay")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per mode")
    parser.add_argument("--tls", action="store_true", help="TLS between proxy and MX")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
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
        if args.entries < 0 or args.delay_ms < 0:
            parser.error("--entries and --delay-ms must not be negative")
        h.run("http_calllog", measure, args)


if __name__ == "__main__":
    main()
