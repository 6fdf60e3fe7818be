"""Several real ``twistd mxproxy`` daemons on one real PostgreSQL, for the acceptance tests of
ownership (tests.test_ha) and its benchmark (bench/ha_failover.py). Not a test module.

Everything real, each part where it would be in production: PostgreSQL is a server of its own
(tests.pgserver, stopped and started by the tests); each daemon is a child process started as
a service manager would (``twistd --nodaemon mxproxy --config --db postgresql://... --host
--admin-listen``) and may be SIGKILLed; the MX simulator and the fake APNs and FCM run in this
process, so that what every daemon sends them is seen in one place, and they outlive any
daemon as a real MX and Apple do. Ports are the kernel's: each daemon's are read from its
"serving ... on" log lines.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mxproxy.testing.fakeapns import ReceivedRequest
from mxproxy.testing.mxsim import PBX, listen
from tests import pgserver
from tests.crash_daemon import BUNDLE, MX_LOGIN, MX_NAME, MX_PASSWORD, Fakes, start_fakes
from tests.test_json_logs import TwistdProcess

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOIP = f"{BUNDLE}.voip"
SN = "HAMX1"
CALLER = "+15555550100"
USERS = {"alice": ("alice-secret", "3001"), "bob": ("bob-secret", "3002")}
POLL = 0.1
"""Seconds between two looks at a condition that nothing announces (a daemon's health)."""


class Node:
    """One daemon: its process, its API and admin addresses once it listens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.process = TwistdProcess()
        self.api = ""
        self.admin = ""

    async def listening(self) -> None:
        self.api = _address(await self.process.until(b"serving HTTP on"))
        self.admin = _address(await self.process.until(b"serving the admin endpoint"))

    @property
    def running(self) -> bool:
        return not self.process.ended.called

    def log(self) -> str:
        return b"\n".join(self.process.lines + [self.process.errors]).decode("utf-8", "replace")


def _address(line: bytes) -> str:
    return "http://" + line.decode().rsplit(" on ", 1)[1].strip()


class Cluster:
    """A PostgreSQL server, the simulated MX, the fake providers and the daemons; ``close``
    stops everything (SIGKILL for the daemons: what they left must not matter)."""

    def __init__(self, directory: str, fsync: bool = False) -> None:
        """``fsync``: PostgreSQL's (see :class:`tests.pgserver.PostgresServer`)."""
        self.directory = directory
        self.postgres = pgserver.PostgresServer(fsync)
        self.postgres.start()
        self.db = self.postgres.url(self.postgres.create_database())
        self.pbx = PBX(SN, clock=reactor)
        self.pbx.add_server_login(MX_LOGIN, MX_PASSWORD)
        for login, (password, ext) in USERS.items():
            self.pbx.add_user(login, password, ext)
        self._mx = listen(self.pbx, port=0, interface="127.0.0.1", reactor=reactor)
        self.fakes: Fakes = start_fakes(reactor, directory)
        mx = f"127.0.0.1:{self._mx.getHost().port}"  # type: ignore[attr-defined]
        config = {"mx": {MX_NAME: {"addr": mx, "login": MX_LOGIN, "password": MX_PASSWORD,
                                   "tls": False}}}
        config.update(self.fakes.config)
        self.config = os.path.join(directory, "mxproxy.json")
        with open(self.config, "w", encoding="utf-8") as file:
            json.dump(config, file)
        self.nodes: list[Node] = []
        self._http = HTTPConnectionPool(reactor, persistent=False)
        self._agent = Agent(reactor, pool=self._http)

    async def close(self) -> None:
        for node in self.nodes:
            if node.running:
                node.process.signal("KILL")
                await node.process.ended
        for port in [self._mx, *self.fakes.ports]:
            await port.stopListening()
        closing = [session.when_closed() for session in self.pbx.sessions]
        self.pbx.drop()
        for closed in closing:
            await closed
        self.postgres.remove()

    # -- daemons ------------------------------------------------------------------------------

    async def start(self, name: str) -> Node:
        """A daemon, once it listens (its MX link may still be coming up)."""
        node = Node(name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        reactor.spawnProcess(node.process, TWISTD, [
            TWISTD, "--nodaemon", "--pidfile=", "mxproxy", "--config", self.config,
            "--db", self.db, "--host", "127.0.0.1:0",
            "--admin-listen", "tcp:0:interface=127.0.0.1"], env=env, path=self.directory)
        self.nodes.append(node)
        await node.listening()
        return node

    def kill(self, node: Node) -> Deferred[BaseException]:
        node.process.signal("KILL")
        return node.process.ended

    # -- HTTP ---------------------------------------------------------------------------------

    async def request(self, method: str, url: str, auth: tuple[str, str] | None = None,
                      body: Any = None) -> tuple[int, bytes]:
        headers = Headers()
        if auth is not None:
            credentials = base64.b64encode(":".join(auth).encode())
            headers.addRawHeader(b"Authorization", b"Basic " + credentials)
        producer = None
        if body is not None:
            headers.addRawHeader(b"Content-Type", b"application/json")
            producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
        response = await self._agent.request(method.encode(), url.encode(), headers, producer)
        return response.code, await readBody(response)

    async def health(self, node: Node) -> tuple[int, dict[str, Any]]:
        code, body = await self.request("GET", f"{node.admin}/healthz")
        return code, json.loads(body)

    async def role(self, node: Node) -> str | None:
        """The node's role for the MX, None while its link is not up."""
        _, report = await self.health(node)
        link = report["mx"][MX_NAME]
        return link["role"] if link["link"] == "up" else None

    async def register(self, node: Node, login: str, provider: str, bundle: str,
                       token: str) -> int:
        """POST /mx/<mx>/token/<provider>/<bundle> on ``node``; the status."""
        code, _ = await self.request(
            "POST", f"{node.api}/mx/{MX_NAME}/token/{provider}/{bundle}",
            (login, USERS[login][0]), {"token": token})
        return code

    async def answer(self, node: Node, login: str, call_id: int, token: str) -> int:
        """POST /mx/<mx>/calls/<id>/answer on ``node``, on ``login``'s softphone, by the app
        with push token ``token``; the status."""
        code, _ = await self.request(
            "POST", f"{node.api}/mx/{MX_NAME}/calls/{call_id}/answer",
            (login, USERS[login][0]), {"device": f"{login}-softphone", "token": token})
        return code

    # -- waiting ------------------------------------------------------------------------------

    async def until(self, condition: Callable[[], Any], what: str,
                    deadline: float = 30.0) -> float:
        """Poll ``condition`` (a coroutine function or a plain one) until it is true; the
        seconds it took. Fails after ``deadline`` seconds with ``what`` and the daemons' logs."""
        start = reactor.seconds()
        while True:
            found = condition()
            if isinstance(found, Deferred) or hasattr(found, "__await__"):
                found = await found
            if found:
                return reactor.seconds() - start
            if reactor.seconds() - start > deadline:
                logs = "\n\n".join(f"--- {node.name}:\n{node.log()[-6000:]}"
                                   for node in self.nodes)
                raise AssertionError(f"timed out after {deadline:g} s waiting for {what}\n{logs}")
            await deferLater(reactor, POLL, lambda: None)

    async def owner(self, among: list[Node], deadline: float = 30.0) -> Node:
        """Once exactly one of ``among`` owns the MX and the others stand by: that one."""
        found: list[Node] = []

        async def settled() -> bool:
            roles = [await self.role(node) for node in among]
            found[:] = [node for node, role in zip(among, roles, strict=True)
                        if role == "owner"]
            return len(found) == 1 and all(role == "standby" for role in roles
                                           if role != "owner")

        await self.until(settled, "one owner among " + ", ".join(n.name for n in among),
                         deadline)
        return found[0]

    # -- pushes -------------------------------------------------------------------------------

    def call_pushes(self, call_id: int) -> dict[str, int]:
        """How many "incoming call" pushes each device token got for ``call_id``."""
        counts: dict[str, int] = {}
        for request in self.fakes.apns.received:
            if _is_call(request, call_id):
                counts[request.token] = counts.get(request.token, 0) + 1
        for arrival in self.fakes.fcm.received:
            message = arrival.message
            data = message.get("data", {})
            if data.get("callId") == str(call_id) and data.get("event") != "callEnded":
                counts[message["token"]] = counts.get(message["token"], 0) + 1
        return counts

    def ended_pushes(self, call_id: int) -> int:
        return sum(self.ended_pushes_by_token(call_id).values())

    def ended_pushes_by_token(self, call_id: int) -> dict[str, int]:
        """How many "call ended" APNs pushes each device token got for ``call_id``."""
        counts: dict[str, int] = {}
        for request in self.fakes.apns.received:
            payload = request.payload or {}
            if payload.get("callId") == call_id and payload.get("event") == "callEnded":
                counts[request.token] = counts.get(request.token, 0) + 1
        return counts


def _is_call(request: ReceivedRequest, call_id: int) -> bool:
    payload = request.payload or {}
    return payload.get("callId") == call_id and payload.get("event") != "callEnded"
