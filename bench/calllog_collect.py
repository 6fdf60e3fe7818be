"""Call-log collection time by log length: from ``iq get calllog`` to the fence's answer.

What ``calllog.DEADLINE`` has to cover: the MX sending every block of a long log, the proxy
reading them, and the fence's answer after them. ``fetch_call_log`` runs on one user link to
the simulator, which serves from a child process as a real MX is another machine, over TCP or
(``--tls``) TLS on loopback; each size is collected ``--rounds`` times, alternating sizes, and
the median is printed with the cost per 21-entry block and the share of the deadline used.
There is no baseline: this sizes a bound, it does not compare two ways.

Usage: python bench/calllog_collect.py [--sizes 0,21,500,2000,5000] [--rounds R] [--tls]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import _harness as h

from mxproxy.calllog import DEADLINE, fetch_call_log
from mxproxy.csta.client import CSTAFactory, MXAddress, open_session

BLOCK = 21


def login(size: int) -> tuple[str, str]:
    """Login and password of the user whose log has ``size`` entries."""
    return f"log{size}", f"secret-{size}"


async def serve_mx(reactor: Any, sizes: list[int], tls: bool) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX

    pbx = PBX(sn="BENCH3", clock=reactor)
    now = int(reactor.seconds())
    for index, size in enumerate(sizes):
        name, password = login(size)
        extension = str(2000 + index)
        pbx.add_user(name, password, extension)
        for number in range(size):
            pbx.add_call_record(name, direction="incoming", disconnect=now - 60 * (size - number),
                                connect=now - 60 * (size - number) - 30,
                                calling_party=f"+1212555{number % 10_000:04d}",
                                original_called_party=extension, first_name=f"Caller{number}",
                                last_name="Example")
    return {"port": h.listen_mx(reactor, pbx, tls=tls)}


async def collect(reactor: Any, port: int, sizes: list[int], rounds: int,
                  tls: bool) -> dict[int, list[float]]:
    address = MXAddress("127.0.0.1", port, tls=tls)
    links = {}
    for size in sizes:
        links[size], _ = await open_session(reactor, address, CSTAFactory(reactor), *login(size))
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(rounds):
        for size, link in links.items():
            started = time.perf_counter()
            entries = await fetch_call_log(link, None)
            seconds[size].append(time.perf_counter() - started)
            if len(entries) != size:
                raise RuntimeError(f"collected {len(entries)} entries of {size}")
    for link in links.values():
        link.logout()
    return seconds


def measure(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    tls = ["--tls"] if args.tls else []
    sizes = ",".join(map(str, args.sizes))
    with h.Children() as children:
        _, mx = children.start("calllog_collect.py", "--serve", "--sizes", sizes, *tls)
        outcome: list[Any] = []

        def run() -> None:
            Deferred.fromCoroutine(collect(reactor, mx["port"], args.sizes, args.rounds,
                                           args.tls)).addBoth(done)

        def done(result: Any) -> None:
            outcome.append(result)
            reactor.stop()

        reactor.callWhenRunning(run)
        reactor.run()
    [result] = outcome
    if not isinstance(result, dict):
        raise RuntimeError(result.getErrorMessage())
    print(f"call-log collection, request to fence answer; MX link "
          f"{'TLS' if args.tls else 'TCP'} on loopback, median of {args.rounds} rounds")
    for size in args.sizes:
        median = h.median(result[size])
        blocks = -(-size // BLOCK)
        per_block = f"{median / blocks * 1e6:7.0f} µs/block" if blocks else " " * 15
        print(f"{size:6d} entries {blocks:4d} blocks {median * 1000:9.1f} ms {per_block}  "
              f"{median / DEADLINE:6.1%} of the {DEADLINE:g} s deadline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,21,500,2000,5000",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tls", action="store_true", help="TLS between proxy and MX")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        h.serve(lambda reactor: serve_mx(reactor, args.sizes, args.tls))
        return
    if args.rounds < 1 or min(args.sizes) < 0:
        parser.error("--rounds must be positive and --sizes not negative")
    h.run("calllog_collect", measure, args)


if __name__ == "__main__":
    main()
