"""The proxy's open file descriptors after 1,000 bad-credential requests of each kind.

Issue 10: a login with a control character answered 500 and left its MX connection open, so
~750 such requests used up 1,024 descriptors and every user got 503 until a restart. For each
kind of bad credentials this starts a fresh proxy (wired as ``service.makeService`` does, in
front of one simulator process), lets one user log in, counts the proxy's descriptors
(``/proc/<pid>/fd``), sends the requests (``GET addressbook``) one after another on a
keep-alive connection, closes it, and counts again once the count has settled. Then two other
users try: the one logged in before (cached) and one new to the proxy.

Kinds: a NUL in the login, a \\x01 in the password, logins with 1 to 200 trailing spaces (the
simulator strips them and logs ``bench`` in: each was a pooled session of its own), a
login of 300 characters, credentials that are not UTF-8, a wrong password, and unknown logins
(the last two refused by the MX, then throttled).

Usage: python bench/bad_credentials.py [--requests N]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import tempfile
import time
from collections import Counter
from typing import Any

import _harness as h

VICTIM, VICTIM_PASSWORD = "bench", "bench-secret"
OTHERS = {"cached": ("carol", "carol-secret"), "new": ("dave", "dave-secret")}
"""Users who log in before the bad requests (cached) or only after them (new)."""
SETTLE_SECONDS = 5.0
STEADY_SECONDS = 0.5

KINDS: dict[str, Any] = {
    "NUL in the login": lambda n: f"{VICTIM}\0:{VICTIM_PASSWORD}".encode(),
    "\\x01 in the password": lambda n: f"{VICTIM}:{VICTIM_PASSWORD}\x01".encode(),
    "login with trailing spaces": lambda n: f"{VICTIM}{' ' * (n % 200 + 1)}:{VICTIM_PASSWORD}"
    .encode(),
    "login of 300 characters": lambda n: ("a" * 300 + ":x").encode(),
    "not UTF-8": lambda n: b"\xff" + VICTIM.encode() + b":x",
    "wrong password": lambda n: f"{VICTIM}:wrong{n}".encode(),
    "unknown logins": lambda n: f"guess{n}:x".encode(),
}
"""Each kind's ``login:password`` bytes of request ``n``."""


async def serve_mx(reactor: Any) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX

    pbx = PBX(sn="BENCH1", clock=reactor)
    pbx.add_user(VICTIM, VICTIM_PASSWORD, "2000")
    for extension, (login, password) in enumerate(OTHERS.values(), 2001):
        pbx.add_user(login, password, str(extension))
    return {"port": h.listen_mx(reactor, pbx)}


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled(pid: int, floor: int = 0) -> int:
    """The descriptor count once closing connections are gone: down to ``floor``, or steady
    for :data:`STEADY_SECONDS` (at most :data:`SETTLE_SECONDS` in all)."""
    start = steady_since = time.monotonic()
    count = descriptors(pid)
    while count > floor and time.monotonic() - start < SETTLE_SECONDS:
        time.sleep(0.05)
        now, latest = time.monotonic(), descriptors(pid)
        if latest != count:
            count, steady_since = latest, now
        elif now - steady_since >= STEADY_SECONDS:
            break
    return count


def send(port: int, credentials: list[bytes]) -> Counter[int]:
    """One GET /mx/bench/addressbook per credentials, on a keep-alive connection (a new one
    whenever the proxy closes it); the statuses seen."""
    statuses: Counter[int] = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for raw in credentials:
            auth = "Basic " + base64.b64encode(raw).decode("ascii")
            connection.request("GET", "/mx/bench/addressbook", headers={"Authorization": auth})
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
            if response.will_close:
                connection.close()
    finally:
        connection.close()
    return statuses


def others_status(port: int) -> dict[str, int]:
    """The status of a correct GET /mx/bench/addressbook of each of :data:`OTHERS`."""
    url = f"http://127.0.0.1:{port}/mx/bench/addressbook"
    return {who: h.get(url, h.basic(*credentials))[0] for who, credentials in OTHERS.items()}


def measure(args: argparse.Namespace) -> None:
    script = os.path.basename(__file__)
    grown = {}
    print(f"{args.requests:,} bad-credential requests per kind, each kind against a fresh "
          "proxy: its open descriptors before and after, the statuses it answered, then a "
          "correct request of a user logged in before (cached) and of one new to it (new)")
    with h.Children() as children, tempfile.TemporaryFile("w") as logs:
        _, mx = children.start(script, "--serve", "mx")
        for kind, credentials in KINDS.items():
            with h.Children() as proxies:
                proc, api = proxies.start(script, "--serve", "api", "--mx-port",
                                          str(mx["port"]), stderr=logs)
                url = f"http://127.0.0.1:{api['port']}/mx/bench/addressbook"
                status, _ = h.get(url, h.basic(*OTHERS["cached"]))
                if status != 200:
                    raise SystemExit(f"GET {url} as {OTHERS['cached'][0]}: HTTP {status}")
                before = settled(proc.pid)
                statuses = send(api["port"], [credentials(n) for n in range(args.requests)])
                after = settled(proc.pid, before)
                others = others_status(api["port"])
            grown[kind] = after - before
            seen = ", ".join(f"{code} x{count:,}" for code, count in sorted(statuses.items()))
            print(f"  {kind:28s} descriptors {before:>4} -> {after:>4} ({after - before:+d})"
                  f"   statuses: {seen:22s} cached user: {others['cached']}, new user: "
                  f"{others['new']}", flush=True)
    worst = max(grown.values())
    print(f"descriptor growth after {args.requests:,} requests: at most {worst:+d} "
          f"(target 0: {h.verdict(worst <= 0)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per kind")
    parser.add_argument("--serve", choices=("mx", "api"), help=argparse.SUPPRESS)
    parser.add_argument("--mx-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mx":
        h.serve(serve_mx)
    elif args.serve == "api":
        h.serve(lambda reactor: h.start_proxy(reactor, args.mx_port))
    else:
        if args.requests < 1:
            parser.error("--requests must be positive")
        h.run("bad_credentials", measure, args)


if __name__ == "__main__":
    main()
