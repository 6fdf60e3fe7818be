"""Shared fixtures for integration tests: a simulator on loopback, torn down with the test."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mxproxy.csta.client import MXAddress
from mxproxy.csta.protocol import CSTAProtocol
from mxproxy.testing.mxsim import PBX, listen


def serve(test: TestCase, pbx: PBX, tls: Any = None) -> MXAddress:
    """Listen for ``pbx`` on an ephemeral loopback port; everything is closed at cleanup."""
    port: IListeningPort = listen(pbx, port=0, interface="127.0.0.1", tls=tls, reactor=reactor)

    async def stop() -> None:
        await port.stopListening()
        await drop_sessions(pbx)

    test.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return MXAddress("127.0.0.1", port.getHost().port, tls=tls is not None)


async def drop_sessions(pbx: PBX) -> None:
    """Cut every simulator session and wait until the sockets are really gone."""
    closing = [session.when_closed() for session in pbx.sessions]
    pbx.drop()
    await DeferredList(closing)


def close_on_cleanup(test: TestCase, protocol: CSTAProtocol) -> None:
    async def close() -> None:
        closed = protocol.when_closed()
        protocol.close()
        await closed

    test.addCleanup(lambda: Deferred.fromCoroutine(close()))


def next_turn() -> Deferred[None]:
    """Let the reactor run the callbacks already due (no waiting on the wall clock)."""
    return deferLater(reactor, 0, lambda: None)
