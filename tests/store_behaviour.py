"""The token store's behaviour, the same on every back end: a mixin that a TestCase per back end
runs (tests/test_tokens.py on SQLite, tests/test_store_postgres.py on PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any, cast

from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from mxproxy.store import Device, StoreClosed, StoreUnavailable, TokenStoreError
from mxproxy.store.threaded import Note, ThreadedStore

TOKEN = "a1b2c3" + "0" * 54 + "wxyz"
ALICE = "ABC12:43884850000000001"
BOB = "ABC12:43884850000000002"
BUNDLE = "com.example.phone"

HEX = "0a1b2c" * 10 + "3d4e"
MIXED = "0A1b2C" * 10 + "3d4E"
"""One APNs token (64 hex digits), in lower and in mixed case."""

LOG_NAMESPACE = "mxproxy.store"


def token(index: int) -> str:
    return f"{index:064x}"


def store_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if "mxproxy-tokens" in thread.name]


def logged(test: TestCase, namespace: str = LOG_NAMESPACE) -> list[str]:
    """Every line logged from now on under ``namespace``, formatted."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event["log_namespace"].startswith(namespace):
            lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class StoreBehaviour:
    """What every back end does: mixed into a TestCase per back end, which says how to make an
    empty store and how to look at it from outside."""

    check_violation = ""
    """What the back end's error for a CHECK constraint says."""
    devices_table = ""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = self.fresh()

    def fresh(self, **options: Any) -> ThreadedStore:
        """A new, empty store on ``self.clock``, closed at cleanup."""
        raise NotImplementedError

    def reopen(self) -> ThreadedStore:
        """Another store on what :attr:`store` holds (after it closed)."""
        raise NotImplementedError

    def sql(self, query: str) -> list[tuple[object, ...]]:
        """Read the database with a connection of our own, as an operator's shell would."""
        raise NotImplementedError

    async def test_register_list_remove(self) -> None:
        self.assertIsNone(await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN))
        self.assertEqual(await self.store.devices(ALICE),
                         [Device("apns", BUNDLE, False, TOKEN, ALICE, 1000.0, 1000.0)])
        self.assertTrue(await self.store.has_devices(ALICE))
        self.assertFalse(await self.store.has_devices(BOB))
        self.assertTrue(await self.store.remove("apns", BUNDLE, False, TOKEN))
        self.assertFalse(await self.store.remove("apns", BUNDLE, False, TOKEN))
        self.assertEqual(await self.store.devices(ALICE), [])
        self.assertFalse(await self.store.has_devices(ALICE))

    async def test_registering_again_refreshes_the_registration_time(self) -> None:
        await self.store.register(ALICE, "gfcm", "phone", False, TOKEN)
        self.clock.advance(60)
        self.assertIsNone(await self.store.register(ALICE, "gfcm", "phone", False, TOKEN))
        [device] = await self.store.devices(ALICE)
        self.assertEqual((device.created, device.registered), (1000.0, 1060.0))

    async def test_a_token_moves_to_its_new_user(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [alices] = await self.store.devices(ALICE)
        await self.store.record_error(alices, 1001.0, "TooManyRequests")
        self.clock.advance(5)
        self.assertEqual(await self.store.register(BOB, "apns", BUNDLE, False, TOKEN), ALICE)
        self.assertEqual(await self.store.devices(ALICE), [])
        self.assertFalse(await self.store.has_devices(ALICE))
        self.assertEqual(await self.store.devices(BOB),
                         [Device("apns", BUNDLE, False, TOKEN, BOB, 1005.0, 1005.0)])

    async def test_provider_bundle_and_sandbox_are_separate_keys(self) -> None:
        keys = [("apns", BUNDLE, False), ("apns", BUNDLE, True), ("apns", "other", False),
                ("gfcm", BUNDLE, False)]
        for provider, bundle, sandbox in keys:
            self.assertIsNone(await self.store.register(ALICE, provider, bundle, sandbox, TOKEN))
        self.assertIsNone(await self.store.register(BOB, "apns", BUNDLE, True, token(2)))
        # Taking the sandbox token leaves alice's production registration alone.
        self.assertEqual(await self.store.register(BOB, "apns", BUNDLE, True, TOKEN), ALICE)
        alices = await self.store.devices(ALICE)
        self.assertEqual([(d.provider, d.bundle, d.sandbox) for d in alices],
                         [("apns", BUNDLE, False), ("apns", "other", False),
                          ("gfcm", BUNDLE, False)])
        self.assertEqual({d.token for d in await self.store.devices(BOB)}, {TOKEN, token(2)})
        self.assertTrue(await self.store.remove("apns", BUNDLE, True, TOKEN))
        self.assertEqual(len(await self.store.devices(ALICE)), 3)

    async def test_the_21st_device_replaces_the_first(self) -> None:
        lines = logged(self)
        for n in range(21):
            await self.store.register(ALICE, "apns", BUNDLE, False, token(n))
            self.clock.advance(1)
        stored = {device.token for device in await self.store.devices(ALICE)}
        self.assertEqual(stored, {token(n) for n in range(1, 21)})
        self.assertEqual(lines, [f"apns/{BUNDLE} 000000…0000 of {ALICE} removed: at most 20 "
                                 "devices per user (push.maxDevicesPerUser), the least recently"
                                 " registered goes"])

    async def test_the_cap_replaces_the_least_recently_registered_device(self) -> None:
        store = self.fresh(max_devices_per_user=3)
        lines = logged(self)
        for n in (1, 2, 3, 1):  # the first registered again: now the most recent
            await store.register(ALICE, "apns", BUNDLE, False, token(n))
            self.clock.advance(1)
        await store.register(ALICE, "apns", BUNDLE, False, token(4))
        self.assertEqual({device.token for device in await store.devices(ALICE)},
                         {token(1), token(3), token(4)})
        # A device moving to a user at the cap replaces one too; its old owner keeps the rest.
        await store.register(BOB, "gfcm", "phone", False, token(8))
        await store.register(BOB, "gfcm", "phone", False, token(9))
        self.clock.advance(1)
        self.assertEqual(await store.register(ALICE, "gfcm", "phone", False, token(9)), BOB)
        self.assertEqual({device.token for device in await store.devices(ALICE)},
                         {token(1), token(4), token(9)})
        self.assertEqual([device.token for device in await store.devices(BOB)], [token(8)])
        removed = [line for line in lines if "removed" in line]
        self.assertEqual(removed, [
            f"apns/{BUNDLE} 000000…0002 of {ALICE} removed: at most 3 devices per user "
            "(push.maxDevicesPerUser), the least recently registered goes",
            f"apns/{BUNDLE} 000000…0003 of {ALICE} removed: at most 3 devices per user "
            "(push.maxDevicesPerUser), the least recently registered goes"])

    async def test_an_apns_token_is_one_device_whatever_its_case(self) -> None:
        upper = HEX.upper()
        await self.store.register(ALICE, "apns", BUNDLE, False, upper)
        self.clock.advance(1)
        self.assertIsNone(await self.store.register(ALICE, "apns", BUNDLE, False, HEX))
        self.assertEqual(await self.store.devices(ALICE),
                         [Device("apns", BUNDLE, False, HEX, ALICE, 1000.0, 1001.0)])
        self.assertEqual(await self.store.register(BOB, "apns", BUNDLE, False, MIXED), ALICE)
        self.assertFalse(await self.store.remove("apns", BUNDLE, False, upper, user=ALICE))
        self.assertTrue(await self.store.remove("apns", BUNDLE, False, upper, user=BOB))
        self.assertEqual(await self.store.count(), 0)

    async def test_an_fcm_token_keeps_its_case(self) -> None:
        fcm = "fcm-Token:APA91b" + "xY" * 20
        await self.store.register(ALICE, "gfcm", "phone", False, fcm)
        self.assertIsNone(await self.store.register(ALICE, "gfcm", "phone", False, fcm.lower()))
        self.assertEqual({device.token for device in await self.store.devices(ALICE)},
                         {fcm, fcm.lower()})
        self.assertFalse(await self.store.remove("gfcm", "phone", False, fcm.upper()))
        self.assertTrue(await self.store.remove("gfcm", "phone", False, fcm))

    async def test_remove_for_a_user_spares_other_owners(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        self.assertFalse(await self.store.remove("apns", BUNDLE, False, TOKEN, user=BOB))
        self.assertTrue(await self.store.has_devices(ALICE))
        self.assertTrue(await self.store.remove("apns", BUNDLE, False, TOKEN, user=ALICE))
        self.assertFalse(await self.store.has_devices(ALICE))

    async def test_users_of_one_mx(self) -> None:
        owners = ["AB:2", "AB:1", "ABC:3", "A:4", "AB;5", "XAB:6", "AB:1"]
        for index, owner in enumerate(owners):
            await self.store.register(owner, "gfcm", "phone", False, token(index))
        self.assertEqual(await self.store.users("AB"), ["AB:1", "AB:2"])
        self.assertEqual(await self.store.users("ABC"), ["ABC:3"])
        self.assertEqual(await self.store.users("A"), ["A:4"])
        self.assertEqual(await self.store.users("B"), [])

    async def test_record_success_and_error(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(ALICE)
        self.assertTrue(await self.store.record_success(device, 1010.5))
        self.assertTrue(await self.store.record_error(device, 1020.0, "BadDeviceToken"))
        [recorded] = await self.store.devices(ALICE)
        self.assertEqual((recorded.last_success, recorded.last_error, recorded.last_error_reason),
                         (1010.5, 1020.0, "BadDeviceToken"))
        await self.store.remove("apns", BUNDLE, False, TOKEN)
        self.assertFalse(await self.store.record_success(device, 1030.0))
        self.assertFalse(await self.store.record_error(device, 1030.0, "Unregistered"))

    async def test_notes_made_while_a_batch_is_written_form_the_next_batch(self) -> None:
        self.store = self.fresh(max_devices_per_user=50)
        batches: list[int] = []
        statements = self.store._statements
        write = statements.notes

        def counting(connection: Any, notes: list[Note]) -> list[bool]:
            batches.append(len(notes))
            return write(connection, notes)

        self.patch(statements, "notes", counting)
        for index in range(50):
            await self.store.register(ALICE, "apns", BUNDLE, False, token(index))
        devices = await self.store.devices(ALICE)
        await self.store.remove("apns", BUNDLE, False, token(7))  # its note finds no row
        noted = [self.store.record_success(device, 2000.0 + n) for n, device in
                 enumerate(devices)]
        self.assertEqual(await gatherResults(noted),
                         [device.token != token(7) for device in devices])
        self.assertEqual(batches, [1, 49])  # the first alone, the rest while it was written
        recorded = {device.token: device.last_success for device in
                    await self.store.devices(ALICE)}
        self.assertEqual(recorded, {device.token: 2000.0 + n for n, device in enumerate(devices)
                                    if device.token != token(7)})

    async def test_notes_still_queued_are_written_before_the_store_closes(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(ALICE)
        first = self.store.record_success(device, 1.0)
        second = self.store.record_error(device, 2.0, "Timeout")  # waits for the first batch
        closed = self.store.close()
        self.assertEqual([await first, await second], [True, True])
        await closed
        reopened = self.reopen()
        [recorded] = await reopened.devices(ALICE)
        self.assertEqual((recorded.last_success, recorded.last_error), (1.0, 2.0))
        with self.assertRaises(StoreClosed):
            await self.store.record_success(device, 3.0)

    async def test_prune(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(ALICE)
        self.assertTrue(await self.store.prune(device))
        self.assertFalse(await self.store.prune(device))
        self.assertEqual(await self.store.devices(ALICE), [])

    async def test_prune_spares_a_token_registered_after_it_went_invalid(self) -> None:
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(ALICE)
        self.assertFalse(await self.store.prune(device, unless_registered_after=999.0))
        self.assertTrue(await self.store.has_devices(ALICE))
        self.assertTrue(await self.store.prune(device, unless_registered_after=1000.0))
        self.assertFalse(await self.store.has_devices(ALICE))

    async def test_two_hundred_concurrent_registrations_all_land(self) -> None:
        self.store = self.fresh(max_devices_per_user=200)
        users = [f"ABC12:{index % 7}" for index in range(200)]
        await gatherResults([self.store.register(user, "apns", BUNDLE, False, token(index))
                             for index, user in enumerate(users)])
        stored: set[tuple[str, str]] = set()
        for user in await self.store.users("ABC12"):
            stored.update((user, device.token) for device in await self.store.devices(user))
        self.assertEqual(stored, {(user, token(index)) for index, user in enumerate(users)})

    async def test_a_failed_statement_fails_its_call_only(self) -> None:
        failed = self.store.register(ALICE, "mpns", BUNDLE, False, TOKEN)
        following = self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        error = await self.assertFailure(failed, TokenStoreError)
        self.assertIn(self.check_violation, str(error))
        self.assertNotIsInstance(error, StoreUnavailable)
        self.assertIsNone(self.store.write_failure)
        self.assertIsNone(await following)
        self.assertEqual(len(await self.store.devices(ALICE)), 1)

    async def test_moves_and_prunes_are_logged_with_the_token_masked(self) -> None:
        lines = logged(self)
        await self.store.register(ALICE, "apns", BUNDLE, False, TOKEN)
        await self.store.register(BOB, "apns", BUNDLE, False, TOKEN)
        [device] = await self.store.devices(BOB)
        await self.store.prune(device)
        self.assertEqual(len(lines), 2)
        self.assertIn(f"a1b2c3…wxyz (apns/{BUNDLE}) moved from {ALICE} to {BOB}", lines[0])
        self.assertIn(f"a1b2c3…wxyz (apns/{BUNDLE}) of {BOB} pruned", lines[1])
        self.assertNotIn(TOKEN, "".join(lines))

    async def test_close_finishes_queued_calls_then_refuses(self) -> None:
        registered = [self.store.register(ALICE, "apns", BUNDLE, False, token(index))
                      for index in range(20)]
        closed = self.store.close()
        await self.assertFailure(self.store.devices(ALICE), StoreClosed)
        await gatherResults(registered)
        await closed
        await self.store.close()
        self.assertEqual(store_threads(), [])
        self.assertEqual(self.sql(f"SELECT count(*) FROM {self.devices_table}"), [(20,)])



