"""GET /mx/<mx>/addressbook requests per second vs a bare twisted.web Resource serving its bytes.

Three processes besides the load generator, all on loopback with ephemeral ports and the real
reactor: the MX simulator with ``--contacts`` address-book entries (the bench user among them),
mxproxy's HTTP API wired as ``service.makeService`` does (MXServer with the address book loaded,
SessionPool, API, APIRequest), and the baseline, a bare ``twisted.web.resource.Resource`` on a
plain ``Site`` returning the exact JSON body the API answered once (fetched before measuring,
which also warms the auth cache: every measured API request is answered from the cache and the
server link's address book, without a word to the MX).

The load generator runs in its own process: ``wrk`` (one thread, HTTP/1.1 keep-alive, Basic
auth header) when installed, else this repository's asyncio client (``bench/_harness.py load``).
Rounds alternate api/bare to even out machine noise; the best and median of each are printed
with the api/bare ratio.

Usage: python bench/http_addressbook.py [--contacts N] [--seconds S] [--rounds R]
                                        [--connections C] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import _harness as h

LOGIN, PASSWORD, EXTENSION = "bench", "bench-secret", "2000"
TARGET = 0.8


async def serve_mx(reactor: Any, contacts: int) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX

    pbx = PBX(sn="BENCH1", clock=reactor)
    pbx.add_user(LOGIN, PASSWORD, EXTENSION, first_name="Bench", last_name="User")
    h.add_contacts(pbx, contacts - 1)  # the user is an entry of the address book too
    return {"port": h.listen_mx(reactor, pbx), "contacts": len(pbx.contacts)}


async def serve_bare(reactor: Any, body_file: str) -> dict[str, Any]:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    with open(body_file, "rb") as file:
        body = file.read()

    class Body(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", b"application/json")
            return body

    port = reactor.listenTCP(0, Site(Body()), interface="127.0.0.1")
    return {"port": port.getHost().port, "bytes": len(body)}


def measure(args: argparse.Namespace) -> None:
    tool = h.load_tool(args.client)
    auth = h.basic(LOGIN, PASSWORD)
    with h.Children(h.SERVER_CPUS) as children, tempfile.TemporaryDirectory() as scratch:
        script = os.path.basename(__file__)
        _, mx = children.start(script, "--serve", "mx", "--contacts", str(args.contacts))
        api_proc, api = children.start(script, "--serve", "api", "--mx-port", str(mx["port"]))
        api_url = f"http://127.0.0.1:{api['port']}/mx/bench/addressbook"
        status, body = h.get(api_url, auth)
        if status != 200:
            raise SystemExit(f"GET {api_url}: HTTP {status}: {body[:200]!r}")
        entries = len(json.loads(body)["addressbook"])
        if entries != args.contacts:
            raise SystemExit(f"the API returned {entries} contacts, expected {args.contacts}")
        body_file = os.path.join(scratch, "addressbook.json")
        with open(body_file, "wb") as file:
            file.write(body)
        bare_proc, bare = children.start(script, "--serve", "bare", "--body-file", body_file)
        urls = {"api": api_url, "bare": f"http://127.0.0.1:{bare['port']}/mx/bench/addressbook"}
        rounds = h.alternate(tool, urls, args, [auth], charged={
            "api": {"server": api_proc.pid}, "bare": {"server": bare_proc.pid}})
    print(f"GET /mx/bench/addressbook: {entries} contacts, {len(body):,} bytes of JSON; "
          f"{tool}, {args.connections} keep-alive connections, {args.rounds} alternating "
          f"rounds of {args.seconds:g} s")
    h.compare(rounds, {"bare": "bare twisted.web Resource", "api": "mxproxy API"}, TARGET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--serve", choices=("mx", "api", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--mx-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--body-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mx":
        h.serve(lambda reactor: serve_mx(reactor, args.contacts))
    elif args.serve == "api":
        h.serve(lambda reactor: h.start_proxy(reactor, args.mx_port))
    elif args.serve == "bare":
        h.serve(lambda reactor: serve_bare(reactor, args.body_file))
    else:
        if args.contacts < 1 or args.rounds < 1 or args.seconds <= 0:
            parser.error("--contacts, --rounds and --seconds must be positive")
        h.run("http_addressbook", measure, args)


if __name__ == "__main__":
    main()
