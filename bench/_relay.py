"""A delaying TCP relay: the wide-area network between mxproxy and an MX, on loopback.

On loopback every round trip is free, so a benchmark there cannot show what a round trip saved
is worth. The relay puts a WAN's round-trip time ``R`` between a client (the proxy) and a
server (the simulator), and models it thus:

* Across a WAN a TCP connect costs one round trip before the client may send (SYN out, SYN-ACK
  back); its first bytes then take R/2, reaching the server 1.5 R after the connect began,
  when the server's ``accept`` completes too (the final ACK), and the server's first bytes
  reach the client R/2 after that. Here the client's connect to the relay completes at once,
  so the relay stands in for the handshake: what the client sends is held until R after the
  accept (when its connect would have returned), what the server sends until 1.5 R (when its
  accept would have), and either is then delivered R/2 later. A connect and one exchange cost
  2 R end to end, as across the WAN, whoever speaks first (``python bench/_relay.py``
  measures it). The upstream connection opens at once, so that it is ready by then.
* After that every chunk, either way, is delivered R/2 after it arrived, in arrival order, and
  a close travels like data. TLS runs end to end through the relay, which sees bytes only; a
  TLS handshake therefore costs what its flights cost (one round trip for TLS 1.3).

Not modelled: the client's ``connect()`` itself returns at once (a client that timed the
connect alone would see 0 where the WAN costs R; what matters here is the time to the first
answer, which is the same); bandwidth, loss and congestion windows (the payloads measured are
small requests and answers, whose cost is latency); and the relay ends TCP on each side, so a
sender's Nagle algorithm sees loopback ACKs (mxproxy sets TCP_NODELAY on its MX links anyway).

Usage (the benchmarks start it as a child process, see :class:`Relay`):

  python bench/_relay.py [--rtt-ms R]
      the check: connect + one echo through the relay, then one more echo, against the model
  python bench/_relay.py --serve --upstream-port P [--rtt-ms R]
      relay connections on an ephemeral loopback port to 127.0.0.1:P; prints ``READY {json}``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import _harness as h

DEFAULT_RTT_MS = 40.0
CHECK_ROUNDS = 5


@dataclass
class Tally:
    """A relay's connections and WAN round trips so far: a connect is one, and so is each
    answer the client acted on, i.e. server bytes that followed bytes delivered to the server
    and were followed by more bytes from the client. An answer the client never followed up
    is not counted, as the client did not wait for it: the TLS ``close_notify`` answering a
    logout (the client closes once it has it; its user has long had the response). Counted
    lazily, so a round's tally holds the previous round's last answers instead of its own."""

    connections: int = 0
    round_trips: int = 0


class _Pipe:
    """One direction of a relayed connection: each chunk is written to the far side ``delay``
    after it arrived (and not before ``opens``), in order; ``None`` stands for a close.
    ``delivered()`` is told of every chunk written."""

    def __init__(self, clock: Any, delay: float, opens: float,
                 delivered: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._delay = delay
        self._delivered = delivered
        self._opens = opens
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._timer: Any = None
        self._sink: Any = None  # the far side's transport, once connected
        self._closed = False

    def put(self, data: bytes | None) -> None:
        if self._closed:
            return
        self._queue.append((max(self._clock.seconds(), self._opens) + self._delay, data))
        self._arm()

    def attach(self, sink: Any) -> None:
        self._sink = sink
        self._arm()

    def _arm(self) -> None:
        if self._timer is None and self._queue and self._sink is not None:
            wait = max(0.0, self._queue[0][0] - self._clock.seconds())
            self._timer = self._clock.callLater(wait, self._deliver)

    def _deliver(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        while self._queue and self._queue[0][0] <= now:
            data = self._queue.popleft()[1]
            if data is None:
                self._closed = True
                self._queue.clear()
                self._sink.loseConnection()
                return
            self._sink.write(data)
            self._delivered()
        self._arm()


def relay_factory(reactor: Any, upstream_port: int, rtt: float, tally: Tally) -> Any:
    """The server factory of a relay to ``127.0.0.1:upstream_port`` with round trip ``rtt``,
    adding up its connections in ``tally``."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Factory, Protocol

    class Upstream(Protocol):
        def __init__(self, downstream: Downstream) -> None:
            self._downstream = downstream

        def dataReceived(self, data: bytes) -> None:
            self._downstream.server_sent()
            self._downstream.toward_client.put(data)

        def connectionLost(self, reason: Any = None) -> None:
            self._downstream.toward_client.put(None)

    class Downstream(Protocol):
        server_owes = False  # bytes reached the server since its last answer
        answered = False  # the server answered since the client last sent

        def connectionMade(self) -> None:
            transport: Any = self.transport
            transport.setTcpNoDelay(True)
            accepted = reactor.seconds()
            tally.connections += 1
            tally.round_trips += 1  # the connect
            # The client's bytes leave when its connect would have returned (R), the server's
            # when its accept would have (1.5 R): see the module's docstring.
            self.toward_server = _Pipe(reactor, rtt / 2, accepted + rtt, self._delivered)
            self.toward_client = _Pipe(reactor, rtt / 2, accepted + 1.5 * rtt)
            self.toward_client.attach(transport)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", upstream_port)
            connectProtocol(endpoint, Upstream(self)).addCallbacks(self._connected, self._refused)

        def _delivered(self) -> None:
            self.server_owes = True

        def server_sent(self) -> None:
            self.answered = self.answered or self.server_owes
            self.server_owes = False

        def _connected(self, upstream: Any) -> None:
            upstream.transport.setTcpNoDelay(True)
            self.toward_server.attach(upstream.transport)

        def _refused(self, _failure: Any) -> None:
            self.toward_client.put(None)

        def dataReceived(self, data: bytes) -> None:
            if self.answered:
                tally.round_trips += 1
                self.answered = False
            self.toward_server.put(data)

        def connectionLost(self, reason: Any = None) -> None:
            self.toward_server.put(None)

    return Factory.forProtocol(Downstream)


async def serve_relay(reactor: Any, upstream_port: int, rtt: float) -> dict[str, Any]:
    """The relay child: listens, and prints its :class:`Tally` as a ``TALLY`` line on SIGUSR1."""
    tally = Tally()
    port = reactor.listenTCP(0, relay_factory(reactor, upstream_port, rtt, tally),
                             interface="127.0.0.1")

    def report() -> None:
        print("TALLY " + json.dumps(asdict(tally)), flush=True)

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(report))
    return {"port": port.getHost().port}


class Relay:
    """A relay process to ``upstream_port``, started among ``children``."""

    def __init__(self, children: h.Children, upstream_port: int, rtt_ms: float) -> None:
        self._proc, ready = children.start(
            os.path.basename(__file__), "--serve", "--upstream-port", str(upstream_port),
            "--rtt-ms", str(rtt_ms))
        self.port = int(ready["port"])

    def tally(self) -> dict[str, float]:
        """The relay's :class:`Tally` so far."""
        self._proc.send_signal(signal.SIGUSR1)
        return h.read_tagged(self._proc, "TALLY", h.READY_TIMEOUT, "relay")


# -- the check ---------------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := self.request.recv(65536):
            self.request.sendall(data)


def check(rtt_ms: float, rounds: int = CHECK_ROUNDS) -> str:
    """Time a connect plus one echo, then one more echo, through a relay to an echo server;
    the line that compares their medians with the model (2 RTT, 1 RTT)."""
    first: list[float] = []
    again: list[float] = []
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) as echo, \
            h.Children() as children:
        echo.daemon_threads = True
        threading.Thread(target=echo.serve_forever, daemon=True).start()
        port = Relay(children, echo.server_address[1], rtt_ms).port
        for _ in range(rounds):
            began = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for times in (first, again):
                    sock.sendall(b"x")
                    if sock.recv(1) != b"x":
                        raise RuntimeError("the relay check's echo came back wrong")
                    times.append((time.perf_counter() - began) * 1000)
                    began = time.perf_counter()
        echo.shutdown()
    return (f"relay check ({rounds} connections, median): connect + one echo "
            f"{h.median(first):.1f} ms (model: 2 RTT = {2 * rtt_ms:g} ms), one more echo "
            f"{h.median(again):.1f} ms (1 RTT = {rtt_ms:g} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=DEFAULT_RTT_MS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rtt_ms < 0:
        parser.error("--rtt-ms must not be negative")
    if args.serve:
        h.serve(lambda reactor: serve_relay(reactor, args.upstream_port, args.rtt_ms / 1000))
    else:
        print(h.run("relay", check, args.rtt_ms))


if __name__ == "__main__":
    main()
