"""Push latency: MX DeliveredEvent to the APNs request, one call at a time and in a burst.

What is measured, both on one clock (``time.perf_counter()`` in the process that holds the MX
simulator and the fake APNs):

1. single calls, one at a time: from the moment the simulator has written a call's
   DeliveredEvent to its connection to the moment the fake APNs has a push request for that call,
   for ``--calls`` calls (after ``--warmup`` calls not counted; the first one opens the APNs
   connection). Each call is hung up once its pushes arrived, and the next call starts when the
   "call ended" push for it arrived too, so calls never overlap. Reported for the
   first push of a call and for the last one (every device told); the targets (p50 <= 5 ms,
   p99 <= 25 ms) are judged on the last one.
2. a burst: one call to each of ``--users`` users, all rung in one go (one DeliveredEvent each,
   written back to back in one reactor turn of the simulator); from the first DeliveredEvent
   written until every push (``--users`` x 2) has reached the fake APNs (target <= 2 s).

Devices: every user registered two iOS devices on APNs with token authentication (a ``.p8``
key), both production: a PushKit token on ``<bundle>.voip`` (VoIP push) and an app token on
``<bundle>`` (alert push). Both go through the proxy's one APNs client, as in production.

Processes, all on loopback with ephemeral ports and the real reactor:

- ``sim``: the MX simulator and the fake APNs together (real TLS, HTTP/2, JWT checked), so that
  both timestamps come from one clock. Instrumented by subclassing, mxproxy itself unchanged: the
  PBX stamps each DeliveredEvent once ``ring`` has handed it to the connection, the fake APNs
  stamps each request as it records it in ``received``. During the measurement the PBX finds
  monitors in an index built once they are all running, so its own O(monitors) scan per event is
  not charged to the proxy.
- ``proxy``: mxproxy built by ``service.makeService`` from a real configuration file (MX link,
  APNs token key, fake APNs host and CA), the token store in a temporary directory.
  ``PushSystem.attach`` is wrapped in that process only to get hold of the DeviceRegistry, through
  which the devices are registered at set-up, before the proxy says it is ready.
- this script: starts both, waits until the simulator sees a monitor on every user's extension,
  then lets the simulator run the measurement and prints the figures.

``--stages`` wraps five methods in the proxy process to stamp each call's way through it (bytes
read, event dispatched, devices loaded, pushes handed to the APNs client, pushes on an HTTP/2
stream) and prints the breakdown; ``--max-in-flight N`` sets ``push.maxInFlight`` (512 when
unset) in the proxy's configuration; ``--profile DIR`` runs cProfile on the reactor thread of
both children during the bursts only and prints where their CPU time went (the burst is then
slower than without).

``--baseline REV`` compares instead: the proxy runs with the mxproxy package of git revision
REV (extracted into a temporary directory) and with this tree's, alternately for ``--rounds``
rounds, everything else unchanged; it prints each burst's time and the ratio of the medians
(target: at most 10% longer than the baseline). For example, after a change to push delivery:
``python bench/push_latency.py --calls 0 --bursts 3 --baseline main --rounds 5``.

Usage: python bench/push_latency.py [--users N] [--calls N] [--warmup N] [--bursts N]
                                    [--burst-timeout S] [--max-in-flight N] [--tls]
                                    [--stages] [--profile DIR] [--baseline REV [--rounds N]]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import _harness as h

TARGET_P50_MS, TARGET_P99_MS, TARGET_BURST_S = 5.0, 25.0, 2.0
TARGET_RATIO = 1.10  # --baseline: the burst may take at most 10% longer than the baseline's
BUNDLE = "com.example.softphone"
VOIP_BUNDLE = BUNDLE + ".voip"
KEY_ID, TEAM_ID = "BENCHKEY01", "BENCHTEAM1"
DEVICES = 2  # per user: one VoIP, one alert
WAIT_TIMEOUT = 10.0  # seconds for the pushes of one single call
MONITOR_TIMEOUT = 60.0
SETTLE = 0.5  # seconds left to the proxy after the last push before it is stopped
QUIET = 3.0  # a burst is over, incomplete, when no push arrived for this long
PROFILER = cProfile.Profile()  # --profile: the reactor thread of either child, bursts only
KEY_FILE, CA_FILE = "AuthKey_bench.p8", "fakeapns-ca.pem"


def extension(index: int) -> str:
    return str(20000 + index)


def caller(index: int) -> str:
    return f"+1212{index:07d}"  # an outside number: no monitor on the calling side


def token(index: int, bundle: str) -> str:
    """The device token of user ``index`` for ``bundle`` (64 hex digits, as Apple's)."""
    return hashlib.sha256(f"{bundle}/{index}".encode()).hexdigest()


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(min(rank, len(ordered))) - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": percentile(ordered, 0.50), "p90": percentile(ordered, 0.90),
            "p99": percentile(ordered, 0.99), "max": ordered[-1] if ordered else float("nan")}


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by process ``pid``: its main thread, and its
    other threads together (for the proxy: the token store's SQLite thread)."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan"), float("nan")
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        used = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        if int(task) == pid:
            main += used
        else:
            others += used
    return main, others


# -- the simulator process: MX simulator + fake APNs, one clock --------------------------------


def sim_classes() -> tuple[type, type]:
    """The instrumented PBX and fake APNs (imported late: importing never installs a reactor)."""
    from mxproxy.testing.fakeapns import FakeAPNs
    from mxproxy.testing.mxsim import PBX

    class StampedPBX(PBX):
        """Records when each call's DeliveredEvent was written (after ``ring``'s writes)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sent: dict[int, float] = {}
            self._index: dict[str, list[Any]] | None = None

        def ring(self, call: Any) -> None:
            super().ring(call)
            self.sent[call.call_id] = time.perf_counter()

        def monitors_of(self, device: str) -> list[Any]:
            if self._index is not None:
                return list(self._index.get(device, ()))
            return super().monitors_of(device)

        def freeze_monitors(self) -> None:
            """Look monitors up in an index from now on (they do not change while measuring)."""
            index: dict[str, list[Any]] = {}
            for session in self.sessions:
                for cross_ref, device in session.monitors.items():
                    index.setdefault(device, []).append((session, cross_ref))
            self._index = index

    class StampedList(list[Any]):
        """``FakeAPNs.received`` that tells its owner the moment each request is recorded."""

        def __init__(self, on_append: Callable[[Any, float], None]) -> None:
            super().__init__()
            self._on_append = on_append

        def append(self, item: Any) -> None:
            stamp = time.perf_counter()
            super().append(item)
            self._on_append(item, stamp)

    class TimedAPNs(FakeAPNs):
        """The fake APNs, counting arrivals per kind (call / callEnded) and per call id."""

        def __init__(self, reactor: Any, **kwargs: Any) -> None:
            super().__init__(clock=reactor, **kwargs)
            self.reactor = reactor
            self.received = StampedList(self._arrived)
            self.arrivals: dict[int, list[tuple[float, str]]] = {}  # call id -> (time, token)
            self.totals: Counter[str] = Counter()
            self.refused: Counter[str] = Counter()
            self._refusal: Any = None
            self._waiting: tuple[str, int, Any] | None = None

        def _validate(self, *args: Any) -> Any:
            self._refusal = super()._validate(*args)
            return self._refusal

        def _arrived(self, request: Any, stamp: float) -> None:
            if self._refusal is not None:
                self.refused[self._refusal.reason or str(self._refusal.status)] += 1
            payload = request.payload if isinstance(request.payload, dict) else {}
            kind = "ended" if payload.get("event") == "callEnded" else "call"
            self.totals[kind] += 1
            if kind == "call" and isinstance(payload.get("callId"), int):
                self.arrivals.setdefault(payload["callId"], []).append((stamp, request.token))
            self._check()

        def until(self, kind: str, total: int, timeout: float) -> Any:
            """Fires once ``total`` pushes of ``kind`` have arrived in all; TimeoutError after
            ``timeout`` seconds. One wait at a time."""
            from twisted.internet.defer import Deferred

            waiter: Deferred[None] = Deferred()
            self._waiting = (kind, total, waiter)
            waiter.addTimeout(timeout, self.reactor)
            self._check()
            return waiter

        def _check(self) -> None:
            if self._waiting is None:
                return
            kind, total, waiter = self._waiting
            if waiter.called:
                self._waiting = None
            elif self.totals[kind] >= total:
                self._waiting = None
                # Not from inside the fake's request handling: the next call starts afresh.
                self.reactor.callLater(0, lambda: waiter.called or waiter.callback(None))

    return StampedPBX, TimedAPNs


async def serve_sim(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from twisted.internet.defer import Deferred

    from mxproxy.testing import fakeapns

    pbx_class, apns_class = sim_classes()
    pbx = pbx_class(sn="BENCHPUSH", clock=reactor)
    for index in range(args.users):
        pbx.add_user(f"bench{index}", f"secret-{index}", extension(index),
                     first_name="Bench", last_name=str(index))
    mx_port = h.listen_mx(reactor, pbx, tls=args.tls)

    key = ec.generate_private_key(ec.SECP256R1())
    apns = apns_class(reactor)
    apns.add_token_key(KEY_ID, TEAM_ID, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for index in range(args.users):
        apns.register_device(token(index, VOIP_BUNDLE), VOIP_BUNDLE)
        apns.register_device(token(index, BUNDLE), BUNDLE)
    listening = fakeapns.listen(apns, reactor=reactor)
    apns_port: int = listening.getHost().port  # type: ignore[attr-defined]
    with open(os.path.join(args.work, KEY_FILE), "wb") as p8:
        p8.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(os.path.join(args.work, CA_FILE), "wb") as pem:
        pem.write(fakeapns.server_authority().cert_pem)

    def go(*_: object) -> None:
        reactor.callFromThread(lambda: Deferred.fromCoroutine(run_sim(reactor, args, pbx, apns)))

    signal.signal(signal.SIGUSR1, go)
    return {"mx_port": mx_port, "apns_port": apns_port}


async def run_sim(reactor: Any, args: argparse.Namespace, pbx: Any, apns: Any) -> None:
    """The measurement, started by the parent (SIGUSR1) once the proxy is ready; ends with one
    ``RESULT {json}`` line."""
    from twisted.internet.task import deferLater

    result: dict[str, Any] = {"single_first": [], "single_last": [], "bursts": [],
                              "phases": {}}
    try:
        with open(os.path.join(args.work, "proxy.pid")) as pid_file:
            args.proxy_pid = int(pid_file.read())
        await wait_for_monitors(reactor, pbx, args.users)
        pbx.freeze_monitors()
        for number in range(args.warmup + args.calls):
            call_id, first, last = await single_call(pbx, apns, number % args.users)
            if number >= args.warmup:
                result["single_first"].append(first)
                result["single_last"].append(last)
                result["phases"][call_id] = "single"
        for number in range(1, args.bursts + 1):
            outcome = await burst(pbx, apns, args)
            result["bursts"].append(outcome)
            result["phases"].update(dict.fromkeys(outcome.pop("call_ids"), f"burst {number}"))
        # Let the proxy record the last outcomes before it is stopped: its token store closes
        # at the first shutdown trigger, and a push answered after that logs a failure.
        await deferLater(reactor, SETTLE, lambda: None)
    except Exception as error:  # reported to the parent, which fails the run
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        if args.profile:
            PROFILER.dump_stats(os.path.join(args.profile, "sim.prof"))
    result.update(refused=dict(apns.refused), peak_streams=apns.peak_streams,
                  connections=apns.connections_made, pushes=sum(apns.totals.values()),
                  sent={call_id: pbx.sent[call_id] for call_id in result["phases"]},
                  arrivals={call_id: sorted(stamp for stamp, _ in apns.arrivals.get(call_id, ()))
                            for call_id in result["phases"]})
    print("RESULT " + json.dumps(result), flush=True)


async def wait_for_monitors(reactor: Any, pbx: Any, users: int) -> None:
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + MONITOR_TIMEOUT
    while True:
        watched = {device for session in pbx.sessions for device in session.monitors.values()}
        missing = [index for index in range(users) if extension(index) not in watched]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} users have no monitor after "
                               f"{MONITOR_TIMEOUT:g} s")
        await deferLater(reactor, 0.05, lambda: None)


async def single_call(pbx: Any, apns: Any, index: int) -> tuple[int, float, float]:
    """One call to user ``index``, hung up once its pushes arrived; (call id, first push
    latency, last push latency)."""
    calls, ended = apns.totals["call"], apns.totals["ended"]
    call = pbx.place_call(caller(index), extension(index))
    await apns.until("call", calls + DEVICES, WAIT_TIMEOUT)
    times = sorted(stamp for stamp, _ in apns.arrivals[call.call_id])
    if len(times) != DEVICES:
        raise RuntimeError(f"call {call.call_id}: {len(times)} pushes instead of {DEVICES}")
    pbx.hang_up(call)
    await apns.until("ended", ended + 1, WAIT_TIMEOUT)  # the alert device is told, not VoIP
    sent = pbx.sent[call.call_id]
    return call.call_id, times[0] - sent, times[-1] - sent


async def wait_quietly(apns: Any, total: int, timeout: float) -> bool:
    """Wait until ``total`` call pushes arrived (True), or none arrived for ``QUIET`` seconds
    or ``timeout`` passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = apns.totals["call"]
        try:
            await apns.until("call", total, min(QUIET, max(0.0, deadline - time.monotonic())))
            return True
        except Exception:  # TimeoutError
            if apns.totals["call"] == seen:
                return False
    return False


async def burst(pbx: Any, apns: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One call to every user at once; returns the send span, the time until every push
    arrived, the latency of each push and the CPU both processes used meanwhile. The calls are
    hung up afterwards."""
    from twisted.internet.task import LoopingCall

    users = args.users
    calls = [pbx.create_call(caller(index), extension(index)) for index in range(users)]
    before, ended = apns.totals["call"], apns.totals["ended"]
    samples: list[tuple[float, float, tuple[float, float]]] = []

    def sample() -> None:  # CPU used so far, 20 times a second while the burst runs
        samples.append((time.perf_counter(), sum(cpu_seconds(os.getpid())),
                        cpu_seconds(args.proxy_pid)))

    sampler = LoopingCall(sample)
    sampler.start(0.05, now=True)
    if args.profile:  # both processes, for the burst only
        os.kill(args.proxy_pid, signal.SIGUSR2)
        PROFILER.enable()
    for call in calls:  # "simultaneous": back to back in one reactor turn
        pbx.ring(call)
    complete = await wait_quietly(apns, before + users * DEVICES, args.burst_timeout)
    if args.profile:
        PROFILER.disable()
        os.kill(args.proxy_pid, signal.SIGUSR2)
    sampler.stop()
    sample()
    last = max((stamp for call in calls for stamp, _ in apns.arrivals.get(call.call_id, ())),
               default=samples[-1][0])
    start, end = samples[0], next(entry for entry in samples if entry[0] >= last)
    cpu = {"wall": end[0] - start[0], "sim": end[1] - start[1],
           "proxy_main": end[2][0] - start[2][0], "proxy_threads": end[2][1] - start[2][1]}
    sent = [pbx.sent[call.call_id] for call in calls]
    latencies: list[float] = []
    arrived: list[float] = []
    duplicates = 0
    for call, stamp in zip(calls, sent, strict=True):
        pushes = apns.arrivals.get(call.call_id, [])
        duplicates += len(pushes) - len({tok for _, tok in pushes})
        latencies.extend(arrival - stamp for arrival, _ in pushes)
        arrived.extend(arrival for arrival, _ in pushes)
    first = min(sent)
    ordered = sorted(arrived)
    outcome = {"send_span": max(sent) - first, "arrived": len(arrived),
               "longest_pause": max((b - a for a, b in itertools.pairwise(ordered)), default=0.0),
               "expected": users * DEVICES, "complete": complete, "duplicates": duplicates,
               "first_arrival": min(arrived) - first if arrived else None,
               "total": max(arrived) - first if arrived else None, "latencies": latencies,
               "call_ids": [call.call_id for call in calls],
               "cpu": cpu}
    for call in calls:
        pbx.hang_up(call)
    # Let the "call ended" pushes go out before anything else is measured or the proxy stops
    # (a call whose push was dropped has nothing to end).
    try:
        await apns.until("ended", ended + users, args.burst_timeout if complete else 2.0)
    except Exception:
        pass
    return outcome


# -- the proxy process ---------------------------------------------------------------------------


def toggle_profiler(path: str) -> None:
    """SIGUSR2 in the proxy: start profiling its reactor thread, or stop and save to ``path``
    (the signal handler runs on the reactor thread, between two bytecodes)."""
    if getattr(PROFILER, "running", False):
        PROFILER.disable()
        PROFILER.running = False  # type: ignore[attr-defined]
        PROFILER.dump_stats(path)
    else:
        PROFILER.running = True  # type: ignore[attr-defined]
        PROFILER.enable()


def install_probes(reactor: Any, path: str) -> None:
    """``--stages``: wrap five mxproxy methods in this process to stamp, per call id, when the
    proxy read the bytes holding its DeliveredEvent, when the dispatcher got the typed event,
    when the user's devices came back from the token store, when each push was handed to the
    APNs client and when it got an HTTP/2 stream (its frames written to the TLS transport);
    written to ``path`` as JSON at shutdown. perf_counter is CLOCK_MONOTONIC on Linux, the
    simulator's clock too."""
    from mxproxy.csta.events import Delivered
    from mxproxy.csta.protocol import CSTAProtocol
    from mxproxy.push.apns import APNsClient
    from mxproxy.push.dispatcher import PushDispatcher
    from mxproxy.push.h2client import H2ClientConnection
    from mxproxy.store.threaded import ThreadedStore as TokenStore

    stages: dict[int, dict[str, Any]] = {}
    current = {"read": 0.0}
    ringing: dict[str, int] = {}  # user -> call id of the DeliveredEvent being handled
    data_received, call_event = CSTAProtocol.dataReceived, PushDispatcher.call_event
    devices, send, request = TokenStore.devices, APNsClient.send, H2ClientConnection.request

    def probe_data_received(self: Any, data: bytes) -> None:
        current["read"] = time.perf_counter()
        data_received(self, data)

    def probe_call_event(self: Any, mx: str, user: str, event: Any, *args: Any) -> Any:
        if isinstance(event, Delivered):
            stages[event.call_id] = {"read": current["read"], "dispatch": time.perf_counter()}
            ringing[user] = event.call_id
        return call_event(self, mx, user, event, *args)

    def probe_devices(self: Any, user: str) -> Any:
        call_id = ringing.pop(user, None)

        def stamp(result: Any) -> Any:
            if call_id in stages:
                stages[call_id]["devices"] = time.perf_counter()
            return result

        return devices(self, user).addBoth(stamp)

    def probe_send(self: Any, token: str, topic: str, push_type: str,
                   payload: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        entry = stages.get(payload.get("callId"))  # type: ignore[arg-type]
        if entry is not None and "event" not in payload:
            entry.setdefault("send", []).append(time.perf_counter())
        return send(self, token, topic, push_type, payload, *args, **kwargs)

    def probe_request(self: Any, headers: Any, body: bytes) -> Any:
        result = request(self, headers, body)
        try:
            payload = json.loads(body)
        except ValueError:
            return result
        entry = stages.get(payload.get("callId"))
        if entry is not None and "event" not in payload:
            entry.setdefault("stream", []).append(time.perf_counter())
        return result

    def dump() -> None:
        with open(path, "w") as file:
            json.dump(stages, file)

    CSTAProtocol.dataReceived = probe_data_received  # type: ignore[method-assign]
    PushDispatcher.call_event = probe_call_event  # type: ignore[method-assign, assignment]
    TokenStore.devices = probe_devices  # type: ignore[method-assign]
    APNsClient.send = probe_send  # type: ignore[method-assign]
    H2ClientConnection.request = probe_request  # type: ignore[method-assign]
    reactor.addSystemEventTrigger("before", "shutdown", dump)


async def serve_proxy(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """mxproxy as ``service.makeService`` builds it from the configuration file; the devices
    registered through its DeviceRegistry before it reports ready."""
    from twisted.internet.defer import DeferredSemaphore, gatherResults

    from mxproxy import service
    from mxproxy.options import MXProxyOptions
    from mxproxy.push.system import PushSystem

    if args.stages:
        install_probes(reactor, os.path.join(os.path.dirname(args.config), "stages.json"))
    captured: list[tuple[Any, Any]] = []
    attach = PushSystem.attach

    def capturing_attach(self: PushSystem, server: Any, *rest: Any) -> Any:
        registry = attach(self, server, *rest)  # a --baseline revision may take fewer
        captured.append((server, registry))
        return registry

    PushSystem.attach = capturing_attach  # type: ignore[method-assign]
    try:
        options = MXProxyOptions()
        options.parseOptions(["--config", args.config, "--db", args.db,
                              "--host", "127.0.0.1:0", "--admin-listen", "none"])
        root = service.makeService(options, reactor)
    finally:
        PushSystem.attach = attach  # type: ignore[method-assign]
    root.privilegedStartService()
    root.startService()
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    [(server, registry)] = captured
    await server.when_ready()

    jids = {contact.ext: contact.jid for contact in server.address_book}
    started = time.perf_counter()

    async def register(index: int) -> None:
        jid = jids[extension(index)]
        for bundle in (VOIP_BUNDLE, BUNDLE):
            await registry.register(jid, "apns", bundle, False, token(index, bundle))

    limit = DeferredSemaphore(64)
    await gatherResults([limit.run(register, index) for index in range(args.users)],
                        consumeErrors=True)
    seconds = time.perf_counter() - started
    if args.profile:  # toggled by the simulator around each burst
        signal.signal(signal.SIGUSR2, lambda *_: toggle_profiler(
            os.path.join(args.profile, "proxy.prof")))
    return {"devices": args.users * DEVICES, "registration_s": seconds,
            "code": os.path.dirname(os.path.dirname(os.path.abspath(service.__file__)))}


def write_config(work: str, mx_port: int, apns_port: int, tls: bool,
                 max_in_flight: int | None) -> str:
    """The proxy's configuration file: the simulator, the token key, the fake APNs and its CA."""
    push: dict[str, Any] = {"apnsHost": f"127.0.0.1:{apns_port}",
                            "apnsSandboxHost": f"127.0.0.1:{apns_port}", "ca": CA_FILE}
    if max_in_flight is not None:
        push["maxInFlight"] = max_in_flight
    config = {
        "mx": {"bench": {"addr": f"127.0.0.1:{mx_port}", "login": h.SERVER_LOGIN,
                         "password": h.SERVER_PASSWORD, "tls": tls}},
        "apns": {KEY_FILE: {"keyId": KEY_ID, "teamId": TEAM_ID,
                            "topics": [BUNDLE, VOIP_BUNDLE]}},
        "push": push,
    }
    path = os.path.join(work, "mxproxy.json")
    with open(path, "w") as file:
        json.dump(config, file, indent=2)
    return path


# -- the parent ----------------------------------------------------------------------------------


def figures(values: Sequence[float]) -> str:
    stats = summary([value * 1e3 for value in values])
    return (f"p50 {stats['p50']:6.2f} ms   p90 {stats['p90']:6.2f} ms   "
            f"p99 {stats['p99']:6.2f} ms   max {stats['max']:6.2f} ms")


def measure(args: argparse.Namespace) -> bool:
    if args.profile:
        args.profile = os.path.abspath(args.profile)
        os.makedirs(args.profile, exist_ok=True)
    args.load = os.getloadavg()[0]
    proxy, result, stages, log = run_once(args)
    completed = report(args, proxy, result)
    if stages is not None:
        report_stages(result, stages)
    report_log(log)
    if args.profile:
        print_profiles(args.profile)
    return completed


def run_once(args: argparse.Namespace, code: str | None = None
             ) -> tuple[dict[str, Any], dict[str, Any], dict[int, Any] | None, str]:
    """One measurement with fresh children and token store; the proxy imports mxproxy from
    ``code`` when given, else from where this script finds it. Returns the proxy's READY
    information, the simulator's RESULT, the ``--stages`` probes (or None) and the proxy's log.
    """
    script = os.path.basename(__file__)
    common = ["--users", str(args.users)]
    if args.profile:
        common += ["--profile", args.profile]
    timeout = 60 + (args.warmup + args.calls) * 0.05 + args.bursts * 2 * args.burst_timeout
    with tempfile.TemporaryDirectory(prefix="push-latency-") as work:
        log_path = os.path.join(work, "proxy.log")
        with h.Children() as children, open(log_path, "w") as proxy_log:
            sim_proc, sim = children.start(
                script, "--serve", "sim", "--work", work, "--calls", str(args.calls),
                "--warmup", str(args.warmup), "--bursts", str(args.bursts), "--burst-timeout",
                str(args.burst_timeout), *(["--tls"] if args.tls else []), *common)
            config = write_config(work, sim["mx_port"], sim["apns_port"], args.tls,
                                  args.max_in_flight)
            proxy_proc, proxy = children.start(
                script, "--serve", "proxy", "--config", config, "--db",
                os.path.join(work, "tokens.db"), *(["--stages"] if args.stages else []),
                *(["--code", code] if code else []), *common, stderr=proxy_log)
            with open(os.path.join(work, "proxy.pid"), "w") as pid_file:
                pid_file.write(str(proxy_proc.pid))
            sim_proc.send_signal(signal.SIGUSR1)
            result = h.read_tagged(sim_proc, "RESULT", timeout, "the simulator")
        # The children are gone: the proxy wrote its stages at shutdown.
        stages = None
        if args.stages:
            with open(os.path.join(work, "stages.json")) as file:
                stages = {int(call_id): entry for call_id, entry in json.load(file).items()}
        with open(log_path) as file:
            return proxy, result, stages, file.read()


def compare(args: argparse.Namespace) -> bool:
    """``--baseline REV``: the proxy with REV's mxproxy and with this tree's, alternately for
    ``--rounds`` rounds (each round starting with the other one), everything else (the
    simulator, the fake APNs, this script) this tree's; the medians of the burst times."""
    repo = os.path.dirname(h.HERE)
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", args.baseline],
                            capture_output=True, text=True, check=True).stdout.strip()
    baseline_name = f"{args.baseline} ({commit})"
    args.load = os.getloadavg()[0]
    print(f"push latency, bursts of {args.users} calls x {DEVICES} devices: mxproxy of "
          f"{baseline_name} against this tree's, {args.rounds} alternating rounds of "
          f"{args.bursts} burst(s); load average {args.load:.1f} on {os.cpu_count()} CPUs")
    totals: dict[str, list[float]] = {baseline_name: [], "this tree": []}
    latencies: dict[str, list[float]] = {name: [] for name in totals}
    cpu: dict[str, list[float]] = {name: [] for name in totals}  # the proxy's, per burst
    completed = True
    with tempfile.TemporaryDirectory(prefix="push-latency-baseline-") as checkout:
        archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", commit,
                                  "mxproxy"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(checkout, filter="data")
        code = {baseline_name: checkout, "this tree": None}
        for number in range(args.rounds):
            names = list(totals) if number % 2 == 0 else list(reversed(totals))
            for name in names:
                proxy, result, _, _ = run_once(args, code[name])
                if result.get("error"):
                    print(f"  round {number + 1} {name}: stopped early: {result['error']}")
                    completed = False
                    continue
                whole = [burst for burst in result["bursts"] if burst["complete"]]
                totals[name].extend(burst["total"] for burst in whole)
                latencies[name].extend(summary(burst["latencies"])["p50"] for burst in whole)
                cpu[name].extend(burst["cpu"]["proxy_main"] + burst["cpu"]["proxy_threads"]
                                 for burst in whole)
                print(f"  round {number + 1} {name:24s} burst(s) " + ", ".join(
                    f"{burst['total']:.3f} s (proxy CPU "
                    f"{burst['cpu']['proxy_main'] + burst['cpu']['proxy_threads']:.2f} s)"
                    if burst["complete"] else
                    f"incomplete ({burst['arrived']} of {burst['expected']} pushes within "
                    f"{args.burst_timeout:g} s)" for burst in result["bursts"])
                    + f"   (mxproxy of {proxy['code']})", flush=True)
    if not all(totals.values()):
        return False
    for name in totals:
        print(f"  {name:24s} median burst {h.median(totals[name]):.3f} s over "
              f"{len(totals[name])} complete, median per-push p50 "
              f"{h.median(latencies[name]) * 1e3:.0f} ms, median proxy CPU "
              f"{h.median(cpu[name]):.2f} s")
    ratio = h.median(totals["this tree"]) / h.median(totals[baseline_name])
    print(f"this tree / {baseline_name}: burst time {ratio:.2f} (target <= {TARGET_RATIO:.2f}: "
          f"{h.verdict(ratio <= TARGET_RATIO)}), proxy CPU "
          f"{h.median(cpu['this tree']) / h.median(cpu[baseline_name]):.2f}")
    return completed


def report_log(text: str) -> None:
    """The proxy's warnings and errors, counted by message (tokens and numbers blanked)."""
    import re

    counts: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.match(r"\S+ \[[^#\]]*#(\w+)\] (.*)", line)
        if match:
            message = re.sub(r"[0-9a-f]{6}…[0-9a-f]{4}", "<token>", match[2])
            counts[f"{match[1]}: {re.sub(r'[0-9]+', 'N', message)[:110]}"] += 1
    if counts:
        print(f"  proxy log ({sum(counts.values())} warnings and errors):")
        for message, count in counts.most_common(6):
            print(f"    {count:5d} x {message}")


def report_stages(result: dict[str, Any], stages: dict[int, dict[str, Any]]) -> None:
    """Where the time of each phase went, from the probes in the proxy (``--stages``)."""
    phases: dict[str, list[int]] = {}
    for call_id, phase in result["phases"].items():
        phases.setdefault(phase, []).append(int(call_id))
    sent = {int(key): value for key, value in result["sent"].items()}
    arrivals = {int(key): value for key, value in result["arrivals"].items()}
    steps = (("MX write -> proxy reads it", "sent", "read"),
             ("read -> dispatcher has the event", "read", "dispatch"),
             ("-> devices from the token store", "dispatch", "devices"),
             ("-> last push handed to APNs client", "devices", "send"),
             ("-> last push on an HTTP/2 stream", "send", "stream"),
             ("-> last push at the fake APNs", "stream", "arrived"))
    for phase, call_ids in phases.items():
        points: dict[str, list[float]] = {name: [] for name in
                                          ("sent", "read", "dispatch", "devices", "send",
                                           "stream", "arrived")}
        for call_id in call_ids:
            entry = stages.get(call_id)
            if not entry or "devices" not in entry or "stream" not in entry \
                    or not arrivals.get(call_id):
                continue
            for name, value in (("sent", sent[call_id]), ("read", entry["read"]),
                                ("dispatch", entry["dispatch"]), ("devices", entry["devices"]),
                                ("send", max(entry["send"])),
                                ("stream", max(entry["stream"])),
                                ("arrived", arrivals[call_id][-1])):
                points[name].append(value)
        if not points["sent"]:
            continue
        if phase == "single":
            print(f"  stages of a single call (median / p99 over {len(points['sent'])} calls):")
            for label, start, end in steps:
                gaps = sorted((b - a) * 1e3 for a, b in zip(points[start], points[end],
                                                              strict=True))
                print(f"    {label:38s} {percentile(gaps, 0.5):7.2f} ms "
                      f"{percentile(gaps, 0.99):7.2f} ms")
        else:
            origin = min(points["sent"])
            print(f"  {phase} timeline, ms after the first DeliveredEvent written "
                  f"(first / median / last of {len(points['sent'])} calls that were pushed):")
            for name, label in (("sent", "DeliveredEvent written"),
                                ("read", "proxy read it"), ("dispatch", "dispatcher had it"),
                                ("devices", "devices loaded"), ("send", "pushes handed over"),
                                ("stream", "pushes on HTTP/2 streams"),
                                ("arrived", "pushes at the fake APNs")):
                ordered = sorted((value - origin) * 1e3 for value in points[name])
                print(f"    {label:28s} {ordered[0]:8.1f} {percentile(ordered, 0.5):8.1f} "
                      f"{ordered[-1]:8.1f}")


def report(args: argparse.Namespace, proxy: dict[str, Any], result: dict[str, Any]) -> bool:
    """Print the figures and verdicts; False if the measurement did not complete."""
    limit = f"maxInFlight {args.max_in_flight}" if args.max_in_flight else "maxInFlight default"
    print(f"push latency: {args.users} users x {DEVICES} APNs devices (token auth, production: "
          f"one VoIP {VOIP_BUNDLE}, one alert {BUNDLE}); MX link {'TLS' if args.tls else 'TCP'};"
          f" {limit}")
    cpus = os.cpu_count() or 1
    print(f"  machine: {cpus} CPUs, load average {args.load:.1f} (1 min) before the run"
          + ("; other work was competing, figures are noisy" if args.load >= cpus else ""))
    print(f"  set-up: {proxy['devices']} devices registered through the DeviceRegistry in "
          f"{proxy['registration_s']:.1f} s; monitors running for all {args.users} users")
    completed = True
    single = result["single_last"]
    if single:
        print(f"(1) {len(single)} single calls one at a time ({args.warmup} warm-up calls not "
              "counted), DeliveredEvent written -> push request at the fake APNs:")
        print(f"      first push of a call:  {figures(result['single_first'])}")
        print(f"      last push (both):      {figures(single)}")
        stats = summary([value * 1e3 for value in single])
        met = stats["p50"] <= TARGET_P50_MS and stats["p99"] <= TARGET_P99_MS
        print(f"    target p50 <= {TARGET_P50_MS:g} ms and p99 <= {TARGET_P99_MS:g} ms: "
              f"{h.verdict(met)}")
    for number, outcome in enumerate(result["bursts"], 1):
        expected = outcome["expected"]
        print(f"(2) burst {number}: {args.users} calls rung at once, {expected} pushes expected; "
              f"DeliveredEvents written over {outcome['send_span'] * 1e3:.0f} ms")
        if outcome["total"] is None:
            print("      no push arrived")
            completed = False
            continue
        total = outcome["total"]
        print(f"      first push {outcome['first_arrival'] * 1e3:.1f} ms after the first "
              f"DeliveredEvent; {outcome['arrived']} pushes arrived, the last after "
              f"{total:.3f} s = {outcome['arrived'] / total:,.0f} pushes/s"
              + (f"; {outcome['duplicates']} duplicates" if outcome["duplicates"] else ""))
        print(f"      per push latency:      {figures(outcome['latencies'])}; longest pause "
              f"between two arrivals {outcome['longest_pause'] * 1e3:.0f} ms")
        cpu = outcome["cpu"]
        print(f"      CPU used over those {cpu['wall']:.2f} s: proxy reactor thread "
              f"{cpu['proxy_main']:.2f} s, its other threads {cpu['proxy_threads']:.2f} s; "
              f"simulator + fake APNs {cpu['sim']:.2f} s")
        met = outcome["complete"] and total <= TARGET_BURST_S
        missing = "" if outcome["complete"] else (
            f" ({expected - outcome['arrived']} pushes never arrived)")
        print(f"    target all {expected} pushes within {TARGET_BURST_S:g} s: "
              f"{h.verdict(met)}{missing}")
    print(f"  fake APNs: {result['pushes']} requests on {result['connections']} connection(s), "
          f"at most {result['peak_streams']} open streams at once"
          + (f"; refused: {result['refused']}" if result["refused"] else ""))
    if result.get("error"):
        print(f"  the measurement stopped early: {result['error']}")
        completed = False
    return completed


def print_profiles(directory: str) -> None:
    import pstats

    for name in ("proxy", "sim"):
        path = os.path.join(directory, f"{name}.prof")
        if not os.path.exists(path):
            print(f"  (no profile from the {name} process)")
            continue
        print(f"\n== {name} process, reactor thread during the burst(s) (cProfile, by own "
              "time) ==")
        pstats.Stats(path).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="users, 2 devices each")
    parser.add_argument("--calls", type=int, default=1000, help="single calls measured")
    parser.add_argument("--warmup", type=int, default=20, help="single calls not counted")
    parser.add_argument("--bursts", type=int, default=1, help="bursts of one call per user")
    parser.add_argument("--burst-timeout", type=float, default=10.0,
                        help="seconds to wait for every push of a burst")
    parser.add_argument("--max-in-flight", type=int,
                        help="push.maxInFlight in the proxy's configuration (default: unset)")
    parser.add_argument("--tls", action="store_true", help="TLS between proxy and MX")
    parser.add_argument("--stages", action="store_true",
                        help="probe the proxy and print where the time goes, stage by stage")
    parser.add_argument("--profile", metavar="DIR", help="cProfile both children into DIR")
    parser.add_argument("--baseline", metavar="REV",
                        help="compare this tree's mxproxy with that of git revision REV")
    parser.add_argument("--rounds", type=int, default=5,
                        help="with --baseline: runs of each, alternating")
    parser.add_argument("--serve", choices=("sim", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "sim":
        h.serve(lambda reactor: serve_sim(reactor, args))
    elif args.serve == "proxy":
        if args.code:  # --baseline: that revision's mxproxy, before any of it is imported
            sys.path.insert(0, args.code)
        h.serve(lambda reactor: serve_proxy(reactor, args))
    else:
        if min(args.users, args.warmup + 1, args.calls + 1, args.bursts + 1) < 1 \
                or args.calls + args.bursts < 1 or args.burst_timeout <= 0:
            parser.error("--users must be positive, --calls, --warmup and --bursts not "
                         "negative (and not --calls 0 with --bursts 0)")
        if args.max_in_flight is not None and args.max_in_flight < 1:
            parser.error("--max-in-flight must be positive")
        if args.baseline is not None and (args.stages or args.profile or args.rounds < 1
                                          or args.bursts < 1):
            parser.error("--baseline compares bursts: not with --stages or --profile, and "
                         "with --rounds and --bursts positive")
        if not h.run("push_latency", compare if args.baseline else measure, args):
            sys.exit(1)  # the measurement broke (a missed target is only reported)


if __name__ == "__main__":
    main()
