"""POST /mx/<mx>/calls/<id>/answer through mxproxy against the same answer sent straight to the MX.

What mxproxy adds to answering a call is its own cost: the HTTP request, the credential check,
the user's pooled session, the call-state check, the JSON answer. The baseline is a bare CSTA
client doing what the route does on the MX's side, on a session it keeps open: ``AssignDevice``
(waiting for ``AssignDeviceInfo``) then ``AnswerCall`` (``mxproxy.callcontrol.answer``, the
same conversation the route runs). The difference of the two latencies is mxproxy's overhead.

Processes, on loopback with ephemeral ports and the real reactor: the MX simulator with its
control API (its own process, as a real MX is another machine), one mxproxy process linked to
it, and this script, which is both clients. The proxy gets the first CPU to itself; the
simulator and this script share the others.

A wave: the simulator's control API rings each of ``--users`` users (50) with a call of its
own (not timed), then every user answers, through mxproxy (one keep-alive HTTP connection per
user) or on the bare sessions, each answer timed from its request to its confirmation; then the
calls are hung up. The answers of a wave start at random moments within ``--spread-ms`` (1000:
50 users answering within a second, a busy office); ``--spread-ms 0`` makes them all start at
once, a burst that measures queueing: an answer then waits for the ones before it, at the MX
and, through mxproxy, at the proxy too. Waves alternate between the two modes,
``--waves`` (20) of each, so that both see the same machine. Printed: p50 and p99 of each mode
over all its answers, the overheads, and the targets (p50 overhead <= 2 ms, p99 <= 10 ms).

The HTTP client here (a minimal one of this script) costs the proxy side something the bare side
does not pay; it is counted in the overhead, which errs against mxproxy.

Usage: python bench/call_control.py [--users 50] [--waves 20] [--spread-ms 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from typing import Any

import _harness as h
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

P50_TARGET_MS = 2.0
P99_TARGET_MS = 10.0
CALLER = "+12125550142"


def user(index: int) -> tuple[str, str, str]:
    """Login, password and extension of bench user ``index``."""
    return f"bench{index}", f"secret-{index}", str(2000 + index)


async def serve_mx(reactor: Any, users: int) -> dict[str, Any]:
    from mxproxy.testing.mxsim import PBX
    from mxproxy.testing.mxsim.control import listen_control

    pbx = PBX(sn="BENCH3", clock=reactor)
    for index in range(users):
        login, password, extension = user(index)
        pbx.add_user(login, password, extension, first_name="Bench", last_name=str(index))
    control = listen_control(pbx, reactor=reactor).getHost()
    return {"port": h.listen_mx(reactor, pbx), "control": control.port}  # type: ignore[attr-defined]


async def serve_proxy(reactor: Any, mx_port: int) -> dict[str, Any]:
    return await h.start_proxy(reactor, mx_port)


class Connection(Protocol):
    """A minimal keep-alive HTTP/1.1 client, one request at a time: twisted.web's Agent costs
    this process (which shares its CPU with the simulator) several times more per request."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: Deferred[tuple[int, bytes]] | None = None

    def ask(self, request: bytes) -> Deferred[tuple[int, bytes]]:
        assert self.transport is not None and self._waiting is None
        self._waiting = Deferred()
        self.transport.write(request)
        return self._waiting

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            return
        lines = head.split(b"\r\n")
        length = next((int(line.split(b":")[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), 0)
        if len(rest) < length:
            return
        self._buffer = rest[length:]
        waiting, self._waiting = self._waiting, None
        assert waiting is not None
        waiting.callback((int(lines[0].split(b" ")[1]), rest[:length]))


class Clients:
    """Both clients of every user, and the simulator's control API."""

    def __init__(self, reactor: Any, mx: dict[str, Any], proxy: dict[str, Any],
                 users: int, spread: float) -> None:
        self.reactor = reactor
        self.mx, self.users, self.spread = mx, users, spread
        self.random = random.Random(1)
        self.ports = {"proxy": proxy["port"], "control": mx["control"]}
        self.connections: dict[tuple[str, int], Connection] = {}
        self.sessions: list[Any] = []

    async def request(self, method: str, where: str, path: str,
                      body: dict[str, Any] | None = None, user_index: int = 0) -> tuple[int, Any]:
        """One request on the user's own connection to ``where`` (proxy or control)."""
        key = (where, user_index)
        connection = self.connections.get(key)
        if connection is None:
            endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.ports[where])
            connection = self.connections[key] = await connectProtocol(endpoint, Connection())
        payload = b"" if body is None else json.dumps(body).encode()
        login, password, _ = user(user_index)
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: {h.basic(login, password)}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        status, answer = await connection.ask(head.encode() + payload)
        return status, json.loads(answer or b"null")

    async def start(self) -> None:
        """Open the bare sessions (monitoring their extension, as the route's session does) and
        warm the proxy up: every user logged in, their calls followed."""
        from twisted.internet.defer import gatherResults

        from mxproxy.csta.client import CSTAFactory, MXAddress, open_session
        from mxproxy.sessions import UserSession

        address = MXAddress("127.0.0.1", self.mx["port"], tls=False)
        for index in range(self.users):
            login, password, _ = user(index)
            protocol, info = await open_session(self.reactor, address,
                                                CSTAFactory(self.reactor), login, password)
            session = UserSession(protocol, info, login)
            await session.ensure_monitor()
            self.sessions.append(session)
        warm = [self.request("GET", "proxy", "/mx/bench/calls", user_index=i)
                for i in range(self.users)]
        codes = await gatherResults([_deferred(w) for w in warm])
        if any(code != 200 for code, _ in codes):
            raise RuntimeError(f"warm-up: {codes[:3]}")

    async def wave(self, mode: str) -> list[float]:
        """Ring every user, answer every call at once; each answer's milliseconds."""
        from twisted.internet.defer import gatherResults
        from twisted.internet.task import deferLater

        calls = []
        for index in range(self.users):
            code, call = await self.request("POST", "control", "/calls",
                                            {"from": CALLER, "to": user(index)[2]})
            if code != 201:
                raise RuntimeError(f"ringing: HTTP {code} {call}")
            calls.append(call["callId"])
        await deferLater(self.reactor, 0.05, lambda: None)  # the ringing events settle
        answer = self._through_proxy if mode == "proxy" else self._bare
        took = await gatherResults([
            deferLater(self.reactor, self.random.uniform(0, self.spread), lambda: None)
            .addCallback(lambda _, i=index, c=call_id: _deferred(answer(i, c)))
            for index, call_id in enumerate(calls)])
        for call_id in calls:
            await self.request("POST", "control", f"/calls/{call_id}/hangup", {})
        return list(took)

    async def _through_proxy(self, index: int, call_id: int) -> float:
        started = time.perf_counter()
        code, body = await self.request("POST", "proxy", f"/mx/bench/calls/{call_id}/answer",
                                        {"device": f"{user(index)[0]}-softphone"}, index)
        took = time.perf_counter() - started
        if code != 200:
            raise RuntimeError(f"answer through mxproxy: HTTP {code} {body}")
        return took * 1000

    async def _bare(self, index: int, call_id: int) -> float:
        from mxproxy import callcontrol

        session = self.sessions[index]
        started = time.perf_counter()
        await callcontrol.answer(session.protocol, call_id, session.identity.ext,
                                 f"{session.identity.login}-softphone")
        return (time.perf_counter() - started) * 1000


def _deferred(coroutine: Any) -> Any:
    return Deferred.fromCoroutine(coroutine)


def measure(args: argparse.Namespace) -> None:
    from twisted.internet.task import react

    with h.Children(h.LOAD_CPUS) as mx_side, h.Children(h.SERVER_CPUS) as children:
        script = os.path.basename(__file__)
        _, mx = mx_side.start(script, "--serve", "mx", "--users", str(args.users))
        _, proxy = children.start(script, "--serve", "proxy", "--mx-port", str(mx["port"]))
        os.sched_setaffinity(0, h.LOAD_CPUS)
        samples: dict[str, list[float]] = {"proxy": [], "bare": []}

        async def run(reactor: Any) -> None:
            clients = Clients(reactor, mx, proxy, args.users, args.spread_ms / 1000)
            await clients.start()
            for _ in range(args.waves):
                for mode in ("proxy", "bare"):
                    samples[mode].extend(await clients.wave(mode))
            report(samples, args)

        react(lambda reactor: _deferred(run(reactor)))  # ends with SystemExit: children stop


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> None:
    def percentile(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    p50 = {mode: statistics.median(values) for mode, values in samples.items()}
    p99 = {mode: percentile(values, 99) for mode, values in samples.items()}
    print(f"POST calls/<id>/answer, {args.users} users answering within {args.spread_ms:g} ms, "
          f"{args.waves} "
          f"alternating waves per mode ({len(samples['proxy'])} answers each); "
          f"{h.machine_load()}")
    for mode, label in (("bare", "bare CSTA client"), ("proxy", "through mxproxy")):
        print(f"  {label:18s} p50 {p50[mode]:7.2f} ms   p99 {p99[mode]:7.2f} ms")
    over50, over99 = p50["proxy"] - p50["bare"], p99["proxy"] - p99["bare"]
    print(f"overhead p50 {over50:.2f} ms (target <= {P50_TARGET_MS:g} ms: "
          f"{h.verdict(over50 <= P50_TARGET_MS)}), p99 {over99:.2f} ms (target <= "
          f"{P99_TARGET_MS:g} ms: {h.verdict(over99 <= P99_TARGET_MS)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument("--spread-ms", type=float, default=1000.0)
    parser.add_argument("--serve", choices=["mx", "proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--mx-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "mx":
        h.serve(lambda reactor: serve_mx(reactor, args.users))
    elif args.serve == "proxy":
        h.serve(lambda reactor: serve_proxy(reactor, args.mx_port))
    else:
        h.run("call_control", measure, args)


if __name__ == "__main__":
    main()
