"""Crash-test child (not a test module): registers tokens as fast as it can until killed.

Usage: ``python tests/crash_registrar.py <db path>``. Issues every registration at once so they
queue on the store thread, and prints ``ACK <token>`` (flushed) as each one's Deferred fires,
i.e. after its commit; ``DONE`` if it was never killed. ``CrashTests`` kills it mid-way.
"""

from __future__ import annotations

import sys

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults

from mxproxy.store.sqlite import SQLiteStore

COUNT = 1000
USERS = 10
SN = "CRASH1"


def token(index: int) -> str:
    return f"{index:064x}"


def acknowledge(_: object, registered: str) -> None:
    sys.stdout.write(f"ACK {registered}\n")
    sys.stdout.flush()


async def register_all(reactor: object, path: str) -> None:
    store = SQLiteStore.open(path, reactor=reactor, max_devices_per_user=COUNT)
    registrations = [
        store.register(f"{SN}:user{index % USERS}", "apns", "com.example.phone", False,
                       token(index)).addCallback(acknowledge, token(index))
        for index in range(COUNT)]
    await gatherResults(registrations)
    await store.close()
    sys.stdout.write("DONE\n")
    sys.stdout.flush()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(register_all(reactor, sys.argv[1])))
