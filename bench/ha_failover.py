"""Several instances on PostgreSQL: token registrations per second against SQLite, a token
registered on the standby reaching the owner, and failover from ``kill -9`` of the owner.

Real ``twistd mxproxy`` daemons (tests/cluster.py: a throw-away PostgreSQL server, the MX
simulator and the fake APNs and FCM in this process, the daemons as child processes). Measured
in one run, in this order:

1. Registrations per second (target: PostgreSQL >= 0.5x SQLite). Two daemons, one on an SQLite
   file and one alone on PostgreSQL (so it owns the MX and also hears its own ``NOTIFY``s), on
   the same simulator; each commit flushed to disk (SQLite's ``synchronous=FULL``, PostgreSQL's
   ``fsync``, off in the other parts). ``--connections`` (32) keep-alive connections, each its
   own MX user (HTTP Basic, checked with the simulator at the first request and then from the
   auth cache), each request ``POST /mx/<mx>/token/apns/<bundle>.voip`` with a token no other
   request has, answered 204 once stored; a load generator process of bench/_harness.py. After a
   warm-up of each, ``--rounds`` (5) rounds of ``--seconds`` (5) alternating between the two
   daemons; best and median of each, the ratio of the bests, and the daemon's CPU per request.
   As in the HTTP benchmarks, the daemons get the first CPU and the load generator the others;
   PostgreSQL, shared by several instances, is another machine's work, and runs beside the load
   generator (as bench/http_calllog.py places the MX), as does this process (the simulator, and
   the reader of the daemons' logs). Then the same at the store level, without HTTP:
   ``TokenStore.register`` from ``--connections`` concurrent callers in this process on the
   first CPU, on a new SQLite file and a new PostgreSQL database, alternating rounds of
   ``--seconds``: whether HTTP or the store bounds the first figure. Every token is new and each
   user soon has ``push.maxDevicesPerUser`` (its default, 20) devices, so each registration also
   removes that user's least recently registered device: the writing kind.
2. A registration on the standby reaching the owner (target: within 1 s). Two daemons on
   PostgreSQL, one owning the MX. ``--propagation-runs`` (9) times, a user without devices
   registers one on the standby; timed from the standby's 204 (as this process reads it) to the
   owner's ``MonitorStart`` for that user's extension at the simulator, the first thing the
   owner does that the MX sees (through the store's ``NOTIFY`` and the owner's query of the
   user's devices). A standby starts no monitor for a registration (tests/test_ha_push.py), so
   the first ``MonitorStart`` for that extension on a server session is the owner's. Negative:
   the monitor started before the 204 arrived.
3. Failover, on the same two daemons: from ``kill -9`` of the owning instance to the first push
   sent by the new owner. alice has an APNs device. While the measurement runs, the simulator
   rings alice with a new call every ``--call-interval-ms`` (100), hanging up the previous one,
   so that the new owner has a call to push as soon as its monitor runs; the first push that
   reaches the fake APNs after the kill ends the run. The time of that arrival, less the moment
   of the kill, is the figure; it includes up to one call interval of waiting for the next call
   and the push's own way through the fake provider. Also reported: when the standby's
   ``/healthz`` first said "owner" (polled every 50 ms). Each run kills the current owner,
   measures, then starts the killed one again and waits for it to stand by, so every run starts
   from one owner and one standby that have run for a while. A standby polls for the lock every
   3 s and the figure depends on where in that cycle the kill falls: each kill comes 5 s plus a
   random 0-3 s after the previous take-over, hence ``--runs`` (7) runs. Expected from the
   design (README, "Several instances"): at most one poll, 3 s, plus the take-over's monitor
   starts and a push. Parts 2 and 3 run on every CPU.

Usage: python bench/ha_failover.py [--rounds 5] [--seconds 5] [--propagation-runs 9] [--runs 7]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import _harness as h

sys.path.insert(0, os.path.dirname(h.HERE))

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from mxproxy.csta.xml import text  # noqa: E402
from mxproxy.ownership import POLL  # noqa: E402
from mxproxy.store import TokenStore  # noqa: E402
from mxproxy.store.location import open_store  # noqa: E402
from tests.cluster import BUNDLE, CALLER, MX_NAME, SN, USERS, VOIP, Cluster, Node  # noqa: E402

RATIO_TARGET = 0.5
PROPAGATION_TARGET_S = 1.0
TOKEN_BODY = '{"token": "' + "0" * 24 + h.UNIQUE + '"}'
"""An APNs token, 64 hex digits: 24 zeros, then the load generator's unique 40."""

HEALTH_POLL = 0.05
SETTLE = 5.0


def load_user(index: int) -> tuple[str, str, str]:
    """Login, password and extension of the user of load connection ``index``."""
    return f"load{index}", f"load-secret-{index}", str(4000 + index)


def new_user(index: int) -> tuple[str, str, str]:
    """Login, password and extension of the user registering in propagation run ``index``."""
    return f"new{index}", f"new-secret-{index}", str(5000 + index)


def add_users(cluster: Cluster, user: Callable[[int], tuple[str, str, str]],
              count: int) -> None:
    for index in range(count):
        cluster.pbx.add_user(*user(index))


async def start_on(cluster: Cluster, name: str, db: str) -> Node:
    """A daemon of ``cluster`` on the store ``db`` rather than the cluster's PostgreSQL."""
    shared, cluster.db = cluster.db, db
    try:
        return await cluster.start(name)
    finally:
        cluster.db = shared


# -- 1. registrations per second ------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This thread, and the processes and threads it starts meanwhile, on ``cpus``."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def registrations(args: argparse.Namespace) -> None:
    """Through a daemon's HTTP API, then at the store, SQLite against PostgreSQL."""
    directory = tempfile.mkdtemp(prefix="mxproxy-ha-bench-")
    with pinned(h.LOAD_CPUS):  # PostgreSQL and this process: another machine's work
        cluster = Cluster(directory, fsync=True)
    try:
        with open(cluster.config, encoding="utf-8") as file:
            config = json.load(file)
        del config["push"]["maxDevicesPerUser"]  # the default: a user's devices stay few
        with open(cluster.config, "w", encoding="utf-8") as file:
            json.dump(config, file)
        add_users(cluster, load_user, args.connections)
        with pinned(h.SERVER_CPUS):
            daemons = {"sqlite": await start_on(cluster, "sqlite", f"{directory}/tokens.db"),
                       "pg": await cluster.start("pg")}
        for daemon in daemons.values():
            await cluster.owner([daemon])
        urls = {name: f"{daemon.api}/mx/{MX_NAME}/token/apns/{VOIP}"
                for name, daemon in daemons.items()}
        charged = {name: {"daemon": daemon.process.transport.pid}  # type: ignore[union-attr]
                   for name, daemon in daemons.items()}
        auths = [h.basic(*load_user(index)[:2]) for index in range(args.connections)]
        print(f"POST token, {args.connections} connections, one user each, every token new, "
              f"{args.rounds} alternating rounds of {args.seconds:g} s; {h.machine_load()}",
              flush=True)
        with pinned(h.LOAD_CPUS):
            rounds = await deferToThread(h.alternate, "python", urls, args, auths, charged,
                                         body=TOKEN_BODY)
        h.compare(rounds, {"sqlite": "SQLite daemon", "pg": "PostgreSQL daemon"}, RATIO_TARGET)
        with pinned(h.SERVER_CPUS):  # the stores' callers where the daemons were
            await store_rates(cluster, directory, args)
    finally:
        await cluster.close()


async def store_rates(cluster: Cluster, directory: str, args: argparse.Namespace) -> None:
    stores = {"sqlite": open_store(f"{directory}/store.db", reactor),
              "pg": open_store(cluster.postgres.url(cluster.postgres.create_database()), reactor)}
    rates: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for _ in range(args.rounds):
            for name, store in stores.items():
                rates[name].append(await store_rate(store, args.seconds, args.connections))
                print(f"  round: {name:6s} {rates[name][-1]:>8,.0f} registrations/s "
                      "(TokenStore.register)", flush=True)
    finally:
        for store in stores.values():
            await store.close()
    best = {name: max(values) for name, values in rates.items()}
    middle = {name: statistics.median(values) for name, values in rates.items()}
    print(f"TokenStore.register, {args.connections} concurrent callers: SQLite best "
          f"{best['sqlite']:,.0f}/s, median {middle['sqlite']:,.0f}/s; PostgreSQL best "
          f"{best['pg']:,.0f}/s, median {middle['pg']:,.0f}/s; pg / sqlite ratio "
          f"{best['pg'] / best['sqlite']:.2f} best, {middle['pg'] / middle['sqlite']:.2f} median",
          flush=True)


async def store_rate(store: TokenStore, seconds: float, callers: int) -> float:
    """Registrations per second, each of the ``callers`` registering new tokens one at a time."""
    done = [0]
    prefix = random.getrandbits(64)
    start = time.perf_counter()

    async def caller(index: int) -> None:
        for count in itertools.count():
            if time.perf_counter() - start >= seconds:
                return
            token = f"{prefix:016x}{index:08x}{count:040x}"
            await store.register(f"{SN}:load{index}", "apns", VOIP, False, token)
            done[0] += 1

    await gatherResults([Deferred.fromCoroutine(caller(index)) for index in range(callers)])
    return done[0] / (time.perf_counter() - start)


# -- 2. a registration on the standby reaching the owner ------------------------------------------


def monitor_started(cluster: Cluster, extension: str) -> Deferred[float]:
    """Fires with the moment the next ``MonitorStart`` of ``extension`` on a server session
    reaches the simulator."""
    started: Deferred[float] = Deferred()

    def watch() -> None:
        cluster.pbx.wait_for("MonitorStart").addCallback(check)

    def check(command: Any) -> None:
        if started.called:  # timed out
            return
        if (command.session.kind == "Server"
                and text(command.element, "monitorObject/deviceObject") == extension):
            started.callback(time.perf_counter())
        else:
            watch()

    watch()
    return started


async def propagation(cluster: Cluster, standby: Node, index: int) -> float:
    """Seconds from the standby's 204 for a registration to the owner's monitor start."""
    login, password, extension = new_user(index)
    started = monitor_started(cluster, extension).addTimeout(30, reactor)
    code, _ = await cluster.request("POST", f"{standby.api}/mx/{MX_NAME}/token/apns/{VOIP}",
                                    (login, password), {"token": f"{index + 1:064x}"})
    answered = time.perf_counter()
    if code != 204:
        raise RuntimeError(f"registration on the standby: HTTP {code}")
    return await started - answered


async def propagations(cluster: Cluster, standby: Node, runs: int) -> None:
    took = []
    for index in range(runs):
        took.append(await propagation(cluster, standby, index))
        await deferLater(reactor, random.uniform(0.2, 0.5), lambda: None)
    print(f"a token registered on the standby to the owner's MonitorStart, {runs} runs (ms): "
          + ", ".join(f"{seconds * 1000:.1f}" for seconds in took))
    worst = max(took)
    print(f"  median {statistics.median(took) * 1000:.1f} ms, max {worst * 1000:.1f} ms "
          f"(target within {PROPAGATION_TARGET_S:g} s: "
          f"{h.verdict(worst <= PROPAGATION_TARGET_S)})", flush=True)


# -- 3. failover ----------------------------------------------------------------------------------


async def failover(cluster: Cluster, owner: Node, standby: Node,
                  interval: float) -> tuple[float, float]:
    """Kill ``owner``; (seconds to the standby's first push, to its /healthz saying owner)."""
    received = len(cluster.fakes.apns.received)
    calls: list[Any] = []

    def ring() -> None:
        if calls:
            cluster.pbx.hang_up(calls.pop())
        calls.append(cluster.pbx.place_call(CALLER, USERS["alice"][1]))

    killed = time.perf_counter()
    cluster.kill(owner)
    ringing = LoopingCall(ring)
    ringing.start(interval)
    owned_after = None
    try:
        while True:
            pushes = cluster.fakes.apns.received[received:]
            calls_pushed = [request for request in pushes
                            if (request.payload or {}).get("event") != "callEnded"]
            if owned_after is None and await cluster.role(standby) == "owner":
                owned_after = time.perf_counter() - killed
            if calls_pushed:
                pushed_after = time.perf_counter() - killed
                break
            if time.perf_counter() - killed > 60:
                raise RuntimeError("no push within 60 s of the kill")
            await deferLater(reactor, HEALTH_POLL, lambda: None)
    finally:
        ringing.stop()
        if calls:
            cluster.pbx.hang_up(calls.pop())
    while owned_after is None:
        if await cluster.role(standby) == "owner":
            owned_after = time.perf_counter() - killed
    return pushed_after, owned_after


async def main(args: argparse.Namespace) -> None:
    await registrations(args)
    directory = tempfile.mkdtemp(prefix="mxproxy-ha-bench-")
    cluster = Cluster(directory)
    try:
        add_users(cluster, new_user, args.propagation_runs)
        nodes = [await cluster.start("a"), await cluster.start("b")]
        owner = await cluster.owner(nodes)
        await propagations(cluster, next(node for node in nodes if node is not owner),
                           args.propagation_runs)
        if await cluster.register(owner, "alice", "apns", BUNDLE, f"{1:064x}") != 204:
            raise RuntimeError("registration refused")
        pushes, takeovers = [], []
        for run in range(args.runs):
            standby = next(node for node in nodes if node is not owner)
            pushed, owned = await failover(cluster, owner, standby, args.call_interval_ms / 1000)
            pushes.append(pushed)
            takeovers.append(owned)
            print(f"run {run + 1}: first push by the new owner {pushed * 1000:.0f} ms after the "
                  f"kill, /healthz 'owner' after {owned * 1000:.0f} ms", flush=True)
            nodes = [standby, await cluster.start(f"r{run}")]
            owner = await cluster.owner(nodes)
            # The new standby settles in; then a kill anywhere in the standby's poll cycle.
            await deferLater(reactor, SETTLE + random.uniform(0, POLL), lambda: None)
        print(f"kill -9 of the owner to the first push by the new owner, {args.runs} runs: "
              f"median {statistics.median(pushes) * 1000:.0f} ms, "
              f"max {max(pushes) * 1000:.0f} ms")
        print(f"kill -9 to /healthz 'owner' on the standby: median "
              f"{statistics.median(takeovers) * 1000:.0f} ms, max {max(takeovers) * 1000:.0f} ms")
    finally:
        await cluster.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--propagation-runs", type=int, default=9)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--call-interval-ms", type=float, default=100.0)
    args = parser.parse_args()
    failures: list[Any] = []
    done = Deferred.fromCoroutine(main(args))
    done.addErrback(failures.append)
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
    if failures:
        failures[0].printTraceback()
        raise SystemExit(1)


if __name__ == "__main__":
    run()
