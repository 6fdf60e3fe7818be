"""The call routes over real loopback sockets against the simulator: the user's SIP password,
their calls, and call control with every error status."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock

from mxproxy.calls import Call
from mxproxy.csta.events import CallEvent
from mxproxy.testing.mxsim import PBX
from tests.test_api import ALICE, APITestCase, loads

CALLER = "+12125550142"
BOB = ("bob", "bob-secret")


def company() -> PBX:
    pbx = PBX(sn="TEST1")
    pbx.add_server_login("server", "server-secret")
    pbx.add_user("alice", "alice-secret", "3001", first_name="Alice", last_name="Able",
                 soft_phone_pwd="sip-Secret-7")
    pbx.add_user("bob", "bob-secret", "3002", first_name="Bob")
    return pbx


class CallRoutesTestCase(APITestCase):
    async def start(self, **kwargs: Any) -> None:
        await self.daemon(company(), **kwargs)
        self.alice = self.pbx.user("alice").jid
        self.bob = self.pbx.user("bob").jid

    def state(self, jid: str, call_id: int, wanted: str | None) -> Deferred[None]:
        """Fires once the proxy's call state has the user's call in state ``wanted`` (None:
        ended for them); the proxy learns it from the server link, after the MX's answer."""
        reached: Deferred[None] = Deferred()

        def current() -> str | None:
            call = self.d.calls.call(jid, call_id)
            return call.state if call is not None else None

        def observe(user: str, event: CallEvent, before: Call | None,
                    after: Call | None) -> None:
            if not reached.called and current() == wanted:
                reached.callback(None)

        if current() == wanted:
            reached.callback(None)
        else:
            self.d.calls.on_call_event(observe)
        return reached

    async def calls(self, auth: tuple[str, str] = ALICE) -> list[dict[str, Any]]:
        response, body = await self.get("/calls", auth=auth)
        self.assertEqual(response.code, 200, body)
        calls: list[dict[str, Any]] = loads(body)["calls"]
        return calls

    async def post(self, path: str, fields: Any = None,
                   auth: tuple[str, str] = ALICE) -> tuple[Any, bytes]:
        return await self.send("POST", path, {} if fields is None else fields, auth=auth)

    async def ok(self, result: tuple[Any, bytes]) -> Any:
        response, body = result
        self.assertEqual(response.code, 200, body)
        return loads(body)

    async def ringing(self, jid: str | None = None, ext: str = "3001") -> int:
        """A call from outside rings ``ext``, its user's calls followed; its call id."""
        await self.calls(ALICE if ext == "3001" else BOB)  # starts the monitor
        call = self.pbx.place_call(CALLER, ext, calling_name="Carl Caller")
        await self.state(jid or self.alice, call.call_id, "ringing")
        return call.call_id


class UserTests(CallRoutesTestCase):
    async def test_the_login_reply_with_the_sip_password_never_cached(self) -> None:
        await self.start()
        response, body = await self.get("/user")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(loads(body), {"jid": self.alice, "ext": "3001", "sn": "TEST1",
                                       "softPhonePwd": "sip-Secret-7",
                                       "apiVersion": loads(body)["apiVersion"]})
        self.assertIsInstance(loads(body)["apiVersion"], int)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    async def test_wrong_password(self) -> None:
        await self.start()
        self.assertError(await self.get("/user", auth=("alice", "nope")), 403)


class CallListTests(CallRoutesTestCase):
    async def test_the_calls_agree_with_the_simulator_at_each_step(self) -> None:
        """Ring alice, answer on her soft phone, hold, retrieve, transfer to bob, who deflects
        the call to voicemail; after each step GET calls says what the simulator says."""
        await self.start()
        self.assertEqual(await self.calls(), [])
        call_id = await self.ringing()
        [ringing] = await self.calls()
        self.assertEqual({k: ringing[k] for k in ("callId", "state", "direction", "peer",
                                                  "peerName")},
                         {"callId": call_id, "state": "ringing", "direction": "incoming",
                          "peer": CALLER, "peerName": "Carl Caller"})
        self.assertEqual(await self.ok(await self.get(f"/calls/{call_id}")), ringing)

        answered = await self.ok(await self.post(f"/calls/{call_id}/answer",
                                                 {"device": "alice-softphone"}))
        self.assertEqual(answered, {"callId": call_id, "device": "alice-softphone"})
        sim = self.pbx.call(call_id)
        self.assertEqual((sim.state, sim.answered_on), ("established", "alice-softphone"))
        await self.state(self.alice, call_id, "connected")
        self.assertEqual([c["state"] for c in await self.calls()], ["connected"])

        held = await self.ok(await self.post(f"/calls/{call_id}/hold"))
        self.assertEqual((held, sim.state), ({"callId": call_id, "state": "held"}, "held"))
        await self.state(self.alice, call_id, "held")
        self.assertEqual([c["state"] for c in await self.calls()], ["held"])

        back = await self.ok(await self.post(f"/calls/{call_id}/retrieve"))
        self.assertEqual((back, sim.state),
                         ({"callId": call_id, "state": "connected"}, "established"))
        await self.state(self.alice, call_id, "connected")
        self.assertEqual([c["state"] for c in await self.calls()], ["connected"])

        await self.calls(BOB)  # bob's calls are followed from now on
        moved = await self.ok(await self.post(f"/calls/{call_id}/transfer", {"to": "3002"}))
        self.assertEqual((moved["callId"], moved["to"]), (call_id, "3002"))
        self.assertEqual((sim.state, sim.callee), ("alerting", "3002"))
        await self.state(self.alice, call_id, None)
        await self.state(self.bob, call_id, "ringing")
        self.assertEqual(await self.calls(), [])
        self.assertEqual([c["state"] for c in await self.calls(BOB)], ["ringing"])
        self.assertError(await self.get(f"/calls/{call_id}"), 404, "ended")

        sent_on = await self.ok(await self.post(f"/calls/{call_id}/deflect", {"to": "*86"},
                                                auth=BOB))
        self.assertEqual(sent_on, {"callId": call_id, "to": "*86"})
        self.assertEqual(self.pbx.calls, {})
        await self.state(self.bob, call_id, None)
        self.assertEqual(await self.calls(BOB), [])

    async def test_a_user_without_devices_is_followed_for_ten_minutes(self) -> None:
        clock = Clock()
        await self.start(clock=clock)
        self.assertEqual(await self.calls(), [])
        self.assertEqual((self.d.calls.monitors.monitored(self.alice), len(self.d.calls.monitors)),
                         ("3001", 1))
        clock.advance(599)
        await self.calls()  # each use renews the lease
        clock.advance(599)
        self.assertEqual(self.d.calls.monitors.monitored(self.alice), "3001")
        stopped = self.pbx.wait_for("MonitorStop")
        clock.advance(1)
        await stopped
        self.assertEqual(len(self.d.calls.monitors), 0)

    async def test_hang_up(self) -> None:
        await self.start()
        call_id = await self.ringing()
        await self.ok(await self.post(f"/calls/{call_id}/answer", {"device": "alice-softphone"}))
        response, body = await self.send("DELETE", f"/calls/{call_id}")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(loads(body)["callId"], call_id)
        self.assertIsInstance(loads(body)["cause"], str)
        self.assertEqual(self.pbx.calls, {})
        await self.state(self.alice, call_id, None)
        self.assertEqual(await self.calls(), [])

    async def test_an_unknown_or_impossible_call_id(self) -> None:
        await self.start()
        self.assertError(await self.get("/calls/404"), 404, "no call 404")
        for path in ("/calls/abc", "/calls/-1", "/calls/1234567890123456789"):
            self.assertError(await self.get(path), 404)
        self.assertError(await self.post("/calls/abc/answer", {"device": "x"}), 404)
        self.assertEqual([c for c in self.pbx.received if c.name == "AnswerCall"], [])


class AnswerTests(CallRoutesTestCase):
    async def test_after_it_was_answered_elsewhere(self) -> None:
        await self.start()
        call_id = await self.ringing()
        self.pbx.answer(call_id)  # on her desk phone
        await self.state(self.alice, call_id, "connected")
        self.assertError(await self.post(f"/calls/{call_id}/answer",
                                         {"device": "alice-softphone"}),
                         409, f"call {call_id} is no longer ringing")

    async def test_after_another_user_answered_it(self) -> None:
        """The MX refuses: the call exists, but rings alice no more."""
        await self.start()
        call_id = await self.ringing()
        self.pbx.answer(call_id, device="3002")
        await self.state(self.alice, call_id, None)
        self.assertError(await self.post(f"/calls/{call_id}/answer",
                                         {"device": "alice-softphone"}),
                         409, f"call {call_id} is no longer ringing")

    async def test_after_the_caller_hung_up(self) -> None:
        """The MX has forgotten the call; the proxy remembers it ended."""
        await self.start()
        call_id = await self.ringing()
        self.pbx.hang_up(call_id)
        await self.state(self.alice, call_id, None)
        self.assertError(await self.post(f"/calls/{call_id}/answer",
                                         {"device": "alice-softphone"}),
                         409, f"call {call_id} is no longer ringing")

    async def test_two_answers_at_once_one_wins(self) -> None:
        await self.start()
        call_id = await self.ringing()
        results = await gatherResults([
            Deferred.fromCoroutine(self.post(f"/calls/{call_id}/answer",
                                             {"device": "alice-softphone"}))
            for _ in range(2)])
        self.assertEqual(sorted(response.code for response, _ in results), [200, 409])
        self.assertEqual(self.pbx.call(call_id).state, "established")

    async def test_an_unknown_call_is_asked_of_the_mx(self) -> None:
        await self.start()
        self.assertError(await self.post("/calls/777/answer", {"device": "alice-softphone"}),
                         404, "the MX knows no such call")

    async def test_a_device_the_mx_does_not_bind(self) -> None:
        await self.start()
        call_id = await self.ringing()
        self.assertError(await self.post(f"/calls/{call_id}/answer", {"device": "bob-desk"}),
                         400, "did not bind the device")
        self.assertEqual(self.pbx.call(call_id).state, "alerting")

    async def test_bad_bodies(self) -> None:
        await self.start()
        for fields, text in (({}, '"device" is required'),
                             ({"device": ""}, '"device" is required'),
                             ({"device": "a\x00b"}, "control characters"),
                             ({"device": "x" * 129}, "longer than 128"),
                             ({"device": "alice-softphone", "token": 5}, '"token"')):
            self.assertError(await self.post("/calls/1/answer", fields), 400, text)
        self.assertEqual([c for c in self.pbx.received if c.name == "AssignDevice"], [])


class ControlErrorTests(CallRoutesTestCase):
    async def test_hold_of_a_ringing_call_is_a_conflict(self) -> None:
        await self.start()
        call_id = await self.ringing()
        self.assertError(await self.post(f"/calls/{call_id}/hold"), 409, "is not connected")
        self.assertEqual(self.pbx.call(call_id).state, "alerting")

    async def test_retrieve_of_a_call_not_held(self) -> None:
        await self.start()
        call_id = await self.ringing()
        await self.ok(await self.post(f"/calls/{call_id}/answer", {"device": "alice-softphone"}))
        self.assertError(await self.post(f"/calls/{call_id}/retrieve"), 409)

    async def test_hang_up_of_an_unknown_call(self) -> None:
        await self.start()
        self.assertError(await self.send("DELETE", "/calls/404"), 404, "no such call")

    async def test_transfer_and_deflect_need_a_destination(self) -> None:
        await self.start()
        call_id = await self.ringing()
        for action in ("transfer", "deflect"):
            self.assertError(await self.post(f"/calls/{call_id}/{action}", {}), 400,
                             '"to" is required')

    async def test_deflect_to_a_number_the_mx_refuses(self) -> None:
        await self.start()
        call_id = await self.ringing()
        self.assertError(await self.post(f"/calls/{call_id}/deflect", {"to": "12"}), 400,
                         "the MX refused the command")
        self.assertEqual(self.pbx.call(call_id).state, "alerting")

    async def test_the_mx_not_answering_is_504(self) -> None:
        clock = Clock()
        await self.start(clock=clock)
        call_id = self.pbx.place_call(CALLER, "3001").call_id
        self.pbx.faults.no_reply = frozenset({"HoldCall"})
        pending = Deferred.fromCoroutine(self.post(f"/calls/{call_id}/hold"))
        await self.pbx.wait_for("HoldCall")
        clock.advance(7)
        self.assertError(await pending, 504)


class ModeTests(CallRoutesTestCase):
    async def test_remote_and_local(self) -> None:
        await self.start()
        response, body = await self.send("PUT", "/mode", {"mode": "remote",
                                                         "device": "+12125550100",
                                                         "ringDelay": 2})
        self.assertEqual(response.code, 204, body)
        [mode] = [c for c in self.pbx.received if c.name == "iq:mode"]
        self.assertEqual((mode.element.get("mode"), mode.element.get("ringdelay"),
                          mode.element.get("vmdelay")), ("remote", "2", "30"))
        response, body = await self.send("PUT", "/mode", {"mode": "local"})
        self.assertEqual(response.code, 204, body)

    async def test_bad_modes(self) -> None:
        await self.start()
        for fields, text in (({}, '"mode"'), ({"mode": "away"}, '"mode"'),
                             ({"mode": "remote"}, '"device" is required'),
                             ({"mode": "local", "vmDelay": 301}, '"vmDelay"')):
            self.assertError(await self.send("PUT", "/mode", fields), 400, text)
        self.assertEqual([c for c in self.pbx.received if c.name == "iq:mode"], [])

