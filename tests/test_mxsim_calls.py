"""The simulator's call control (mx-protocol.md §4.1-4.2): the call state machine, the wire
formats of its answers and events (read back with the proxy's own parsers), its refusals, and
the control API's call routes.

Sessions are in-memory (:class:`tests.test_mxsim.WireClient`) on a ``task.Clock``; the
control API runs over real loopback HTTP.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from mxproxy.csta import events
from mxproxy.csta.errors import CallStateError, CSTAError, UnknownCall
from mxproxy.csta.frame import EVENT_ID
from mxproxy.csta.messages import TransferResult, csta_error, parse_event
from mxproxy.csta.records import XMLRecord
from mxproxy.csta.xml import local_name, text
from mxproxy.testing.mxsim import Call, demo_pbx
from mxproxy.testing.mxsim.model import WrongState
from tests.test_mxsim import ControlAPITestCase, SimulatorTestCase, WireClient, hashed, login_xml

CALLER = "+12125550142"


def connection(tag: str, call_id: int, device: str) -> str:
    return f"<{tag}><callID>{call_id}</callID><deviceID>{device}</deviceID></{tag}>"


def answer_xml(call_id: int, device: str = "3001") -> str:
    return f"<AnswerCall>{connection('callToBeAnswered', call_id, device)}</AnswerCall>"


def clear_xml(call_id: int, device: str = "3001") -> str:
    return f"<ClearConnection>{connection('connectionToBeCleared', call_id, device)}" \
           "</ClearConnection>"


def hold_xml(call_id: int, device: str = "3001") -> str:
    return f"<HoldCall>{connection('callToBeHeld', call_id, device)}</HoldCall>"


def retrieve_xml(call_id: int, device: str = "3001") -> str:
    return f"<RetrieveCall>{connection('callToBeRetrieved', call_id, device)}</RetrieveCall>"


def transfer_xml(call_id: int, to: str, device: str = "3001") -> str:
    return (f"<SingleStepTransferCall>{connection('activeCall', call_id, device)}"
            f"<transferredTo>{to}</transferredTo></SingleStepTransferCall>")


def deflect_xml(call_id: int, to: str, device: str = "3001") -> str:
    return (f"<DeflectCall>{connection('callToBeDiverted', call_id, device)}"
            f"<newDestination>{to}</newDestination></DeflectCall>")


def assign_xml(name: str) -> str:
    return f'<AssignDevice><deviceID type="device">{name}</deviceID></AssignDevice>'


def assign(client: WireClient, name: str) -> None:
    """Bind ``name`` on the client's session (answered by an event only)."""
    client.send(assign_xml(name))
    client.messages()


def command(client: WireClient, body: str) -> tuple[str, list[XMLRecord | None]]:
    """Send ``body``: the name of its same-id answer, then the events the client got."""
    invoke_id = client.send(body)
    (answer_id, answer), *rest = client.messages()
    assert answer_id == invoke_id and all(i == EVENT_ID for i, _ in rest), (answer, rest)
    return local_name(answer), [parse_event(element) for _, element in rest]


def typed(client: WireClient) -> list[XMLRecord | None]:
    """The events a client got since the last look, read as the proxy reads them."""
    received = client.messages()
    assert all(invoke_id == EVENT_ID for invoke_id, _ in received), received
    return [parse_event(element) for _, element in received]


class CallControlTestCase(SimulatorTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.carol = self.pbx.add_user("carol", "carol-pw", "3003", first_name="Carol")
        self.alice_phone, self.alice_ref = self.monitored("alice", "3001")
        self.bob_phone, self.bob_ref = self.monitored("bob", "3002")

    def ring(self, calling: str = CALLER, called: str = "3001") -> Call:
        call = self.pbx.place_call(calling, called, calling_name="Pat Caller")
        self.alice_phone.messages(), self.bob_phone.messages()
        return call

    def refusal(self, client: WireClient, body: str) -> tuple[type[CSTAError], str, str]:
        """The kind the proxy makes of the refusal, its ECMA value, and its text."""
        reply = client.reply(body)
        self.assertEqual(local_name(reply), "CSTAErrorCode")
        error = csta_error(reply)
        value = text(reply, "stateIncompatibility") or text(reply, "operation")
        return type(error), value, error.text

    def answered(self, call: Call) -> None:
        """Alice answers on her soft phone; her monitors' events are consumed."""
        assign(self.alice_phone, "alice-softphone")
        self.assertEqual(local_name(self.alice_phone.reply(answer_xml(call.call_id))),
                         "AnswerCallResponse")
        self.alice_phone.messages(), self.bob_phone.messages()


class AssignDeviceTests(CallControlTestCase):
    def test_known_device_is_bound_and_named_in_an_event_without_a_same_id_reply(self) -> None:
        self.alice_phone.send(assign_xml("alice-softphone"), invoke_id=41)
        self.assertEqual(typed(self.alice_phone),
                         [events.AssignDeviceInfo(device_id="alice-softphone")])
        self.assertEqual(self.alice_phone.session.device, "alice-softphone")

    def test_another_name_is_refused_by_naming_the_device_still_bound(self) -> None:
        """§4.2: the client learns of a refusal by a different name in AssignDeviceInfo."""
        for name, bound in (("bob-softphone", "3001"), ("alice-softphone", "alice-softphone"),
                            ("nonsense", "alice-softphone"), ("", "alice-softphone")):
            self.alice_phone.send(assign_xml(name))
            self.assertEqual(typed(self.alice_phone), [events.AssignDeviceInfo(device_id=bound)],
                             name)
        self.assertEqual(self.alice_phone.session.device, "alice-softphone")

    def test_each_user_has_a_soft_phone_and_may_have_more(self) -> None:
        self.assertEqual(self.alice.devices, ["alice-softphone"])
        dave = self.pbx.add_user("dave", "pw", "3004", devices=["dave-ios", "dave-android"])
        self.assertEqual(dave.devices, ["dave-ios", "dave-android"])

    def test_demo_users_have_a_soft_phone_and_its_password_in_the_login_reply(self) -> None:
        pbx = demo_pbx(self.clock)
        for login in ("alice", "bob", "carol"):
            user = pbx.user(login)
            self.assertEqual(user.devices, [f"{login}-softphone"])
            reply = WireClient(pbx).reply(login_xml(login, hashed(login)))
            self.assertEqual(reply.get("softPhonePwd"), user.soft_phone_pwd)
            self.assertTrue(user.soft_phone_pwd)


class AnswerTests(CallControlTestCase):
    def test_answer_on_the_bound_device_replies_then_tells_both_parties(self) -> None:
        caller_phone, _ = self.monitored("cti", "3002")
        call = self.ring("3002")
        caller_phone.messages()
        assign(self.alice_phone, "alice-softphone")
        self.alice_phone.send(answer_xml(call.call_id), invoke_id=7)
        (reply_id, reply), (event_id, event) = self.alice_phone.messages()
        self.assertEqual((reply_id, local_name(reply), event_id), (7, "AnswerCallResponse",
                                                                   EVENT_ID))
        expected = events.Established(
            monitor_cross_ref_id=self.alice_ref, call_id=call.call_id, device_id="3001",
            global_call_id=call.global_call_id, cause="normal", answering_device="3001",
            answering_display_name="Alice Johnson", calling_device="3002",
            calling_display_name="Pat Caller", called_device="3001",
            last_redirection_device="3002", local_connection_info="connected",
            call_type_flags=170917889)
        self.assertEqual(parse_event(event), expected)
        for client in (self.bob_phone, caller_phone):
            (event,) = typed(client)
            assert isinstance(event, events.Established)
            self.assertEqual((event.call_id, event.answering_device), (call.call_id, "3001"))
        self.assertEqual((call.state, call.answered_by, call.answered_on),
                         ("established", "3001", "alice-softphone"))

    def test_without_a_bound_device_the_call_is_answered_at_the_extension(self) -> None:
        call = self.ring()
        self.assertEqual(local_name(self.alice_phone.reply(answer_xml(call.call_id))),
                         "AnswerCallResponse")
        self.assertEqual((call.state, call.answered_on), ("established", ""))

    def test_of_two_answers_exactly_one_wins(self) -> None:
        call = self.ring()
        other_phone = self.client("alice")
        self.alice_phone.send(answer_xml(call.call_id), invoke_id=3)
        other_phone.send(answer_xml(call.call_id), invoke_id=3)
        first = [local_name(e) for i, e in self.alice_phone.messages() if i == 3]
        (second,) = [e for i, e in other_phone.messages() if i == 3]
        self.assertEqual(first, ["AnswerCallResponse"])
        self.assertEqual(csta_error(second).__class__, CallStateError)
        self.assertEqual(text(second, "stateIncompatibility"), "noCallToAnswer")

    def test_refusals(self) -> None:
        ringing_at_bob = self.ring(called="3002")
        cases = [
            (answer_xml(ringing_at_bob.call_id), (CallStateError, "noCallToAnswer",
                                                   f"call {ringing_at_bob.call_id} is not "
                                                   "ringing at 3001")),
            (answer_xml(ringing_at_bob.call_id, "3002"),
             (CSTAError, "privilegeViolationOnSpecifiedDevice",
              "3002 is not this session's device")),
            (answer_xml(99), (UnknownCall, "invalidCallID", "no call 99")),
        ]
        for body, expected in cases:
            self.assertEqual(self.refusal(self.alice_phone, body), expected, body)
        self.assertEqual(ringing_at_bob.state, "alerting")

    def test_malformed_commands_are_refused_not_fatal(self) -> None:
        call = self.ring()
        for body in ("<AnswerCall><callToBeAnswered><callID>x1</callID><deviceID>3001</deviceID>"
                     "</callToBeAnswered></AnswerCall>", "<HoldCall/>",
                     "<DeflectCall><callToBeDiverted><callID>99999999999999999999</callID>"
                     "</callToBeDiverted></DeflectCall>", "<AssignDevice/>"):
            answers = [e for i, e in self.alice_phone.request(body) if i != EVENT_ID]
            self.assertIn([local_name(e) for e in answers], ([], ["CSTAErrorCode"]), body)
        self.assertTrue(self.alice_phone.connected)
        self.assertEqual(call.state, "alerting")

    def test_a_server_session_controls_any_extension(self) -> None:
        call = self.ring()
        server = self.client("cti")
        self.assertEqual(local_name(server.reply(answer_xml(call.call_id))), "AnswerCallResponse")
        self.assertEqual(call.answered_by, "3001")


class ClearTests(CallControlTestCase):
    def test_clear_connection_ends_the_call_for_both_and_logs_it(self) -> None:
        call = self.ring("3002")
        self.answered(call)
        self.alice_phone.send(clear_xml(call.call_id), invoke_id=9)
        (reply_id, reply), (_, event) = self.alice_phone.messages()
        self.assertEqual((reply_id, local_name(reply)), (9, "ClearConnectionResponse"))
        expected = events.ConnectionCleared(
            monitor_cross_ref_id=self.alice_ref, call_id=call.call_id, device_id="3001",
            cause="normalClearing", releasing_device="3001", local_connection_info="null")
        self.assertEqual(parse_event(event), expected)
        (bob_event,) = typed(self.bob_phone)
        self.assertIsInstance(bob_event, events.ConnectionCleared)
        self.assertNotIn(call.call_id, self.pbx.calls)
        self.assertEqual([(r.direction, r.missed) for r in self.alice.call_log],
                         [("incoming", False)])
        self.assertEqual([r.direction for r in self.bob.call_log], ["outgoing"])

    def test_rejecting_a_ringing_call_logs_it_missed(self) -> None:
        call = self.ring()
        self.assertEqual(local_name(self.alice_phone.reply(clear_xml(call.call_id))),
                         "ClearConnectionResponse")
        self.assertTrue(self.alice.call_log[0].missed)

    def test_refusals(self) -> None:
        call = self.ring(called="3002")
        self.assertEqual(self.refusal(self.alice_phone, clear_xml(call.call_id)),
                         (CallStateError, "noConnectionToClear",
                          f"3001 has no connection in call {call.call_id}"))
        self.assertEqual(self.refusal(self.alice_phone, clear_xml(77)),
                         (UnknownCall, "invalidCallID", "no call 77"))

    def test_an_ended_call_is_unknown(self) -> None:
        """Its id is released: every command on it is ``invalidCallID``."""
        call = self.ring()
        self.pbx.hang_up(call)
        for body in (answer_xml(call.call_id), clear_xml(call.call_id), hold_xml(call.call_id)):
            self.assertEqual(self.refusal(self.alice_phone, body)[0], UnknownCall, body)


class HoldTests(CallControlTestCase):
    def test_hold_and_retrieve_tell_both_parties(self) -> None:
        call = self.ring("3002")
        self.answered(call)
        answer, alice_events = command(self.alice_phone, hold_xml(call.call_id))
        self.assertEqual((answer, call.state, call.held_by), ("HoldCallResponse", "held", "3001"))
        for seen, cross_ref in ((alice_events, self.alice_ref),
                                (typed(self.bob_phone), self.bob_ref)):
            self.assertEqual(seen, [events.Held(
                monitor_cross_ref_id=cross_ref, call_id=call.call_id, device_id="3001",
                cause="normal", holding_device="3001", local_connection_info="hold",
                call_type_flags=170917889)])
        self.assertEqual(local_name(self.alice_phone.reply(retrieve_xml(call.call_id))),
                         "RetrieveCallResponse")
        self.assertEqual(call.state, "established")
        self.assertEqual(typed(self.bob_phone), [events.Retrieved(
            monitor_cross_ref_id=self.bob_ref, call_id=call.call_id, device_id="3001",
            cause="normal", retrieving_device="3001", local_connection_info="connected",
            call_type_flags=170917889)])

    def test_refusals(self) -> None:
        call = self.ring()
        self.assertEqual(self.refusal(self.alice_phone, hold_xml(call.call_id))[:2],
                         (CallStateError, "noActiveCall"))
        self.assertEqual(self.refusal(self.alice_phone, retrieve_xml(call.call_id))[:2],
                         (CallStateError, "noHeldCall"))
        self.answered(call)
        self.alice_phone.reply(hold_xml(call.call_id))
        self.assertEqual(self.refusal(self.alice_phone, hold_xml(call.call_id))[:2],
                         (CallStateError, "noActiveCall"))
        self.assertEqual(self.refusal(self.alice_phone, hold_xml(55))[:2],
                         (UnknownCall, "invalidCallID"))
        self.assertEqual(call.state, "held")


class TransferTests(CallControlTestCase):
    def test_transfer_moves_the_call_and_the_target_rings(self) -> None:
        call = self.ring()
        self.answered(call)
        self.alice_phone.send(transfer_xml(call.call_id, "3002"), invoke_id=12)
        (reply_id, reply), *alice_events = self.alice_phone.messages()
        self.assertEqual((reply_id, TransferResult.from_xml(reply)),
                         (12, TransferResult(call_id=call.call_id, device_id="3002")))
        transferred = events.Transferred(
            monitor_cross_ref_id=self.alice_ref, call_id=call.call_id, device_id="3001",
            cause="singleStepTransfer", transferring_device="3001", transferred_to_device="3002",
            local_connection_info="null")
        self.assertEqual([parse_event(e) for _, e in alice_events], [
            transferred, events.ConnectionCleared(
                monitor_cross_ref_id=self.alice_ref, call_id=call.call_id, device_id="3001",
                cause="singleStepTransfer", releasing_device="3001",
                local_connection_info="null")])
        bob_transferred, delivered = typed(self.bob_phone)
        self.assertIsInstance(bob_transferred, events.Transferred)
        assert isinstance(delivered, events.Delivered)
        self.assertEqual((delivered.call_id, delivered.alerting_device, delivered.calling_device,
                          delivered.last_redirection_device, delivered.cause),
                         (call.call_id, "3002", CALLER, "3001", "singleStepTransfer"))
        self.assertEqual((call.state, call.ends), ("alerting", (CALLER, "3002")))
        self.assertEqual([(r.direction, r.missed) for r in self.alice.call_log],
                         [("incoming", False)])
        self.pbx.answer(call)
        self.assertEqual(typed(self.alice_phone), [])  # she has left the call
        self.assertEqual(len(typed(self.bob_phone)), 1)

    def test_the_caller_transferring_leaves_the_callee_as_caller(self) -> None:
        call = self.ring("3002")
        self.answered(call)
        self.assertEqual(local_name(self.bob_phone.reply(transfer_xml(call.call_id, "3003",
                                                                      "3002"))),
                         "SingleStepTransferCallResponse")
        self.assertEqual((call.calling, call.calling_name, call.callee, call.state),
                         ("3001", "Alice Johnson", "3003", "alerting"))

    def test_transfer_to_voicemail_ends_the_call(self) -> None:
        call = self.ring()
        self.answered(call)
        self.alice_phone.reply(transfer_xml(call.call_id, "*86"))
        self.assertNotIn(call.call_id, self.pbx.calls)

    def test_refusals(self) -> None:
        call = self.ring()
        self.assertEqual(self.refusal(self.alice_phone, transfer_xml(call.call_id, "3002"))[:2],
                         (CallStateError, "noActiveCall"))
        self.answered(call)
        for target in ("4444", "3001", CALLER, ""):
            self.assertEqual(self.refusal(self.alice_phone, transfer_xml(call.call_id, target)),
                             (CSTAError, "invalidDestination",
                              f"cannot send call {call.call_id} to {target!r}"), target)
        self.assertEqual(call.state, "established")


class DeflectTests(CallControlTestCase):
    def test_deflect_diverts_a_ringing_call_to_another_party(self) -> None:
        caller_phone, _ = self.monitored("carol", "3003")
        call = self.ring("3003")
        caller_phone.messages()
        self.assertEqual(command(self.alice_phone, deflect_xml(call.call_id, "3002")),
                         ("DeflectCallResponse", [events.Diverted(
            monitor_cross_ref_id=self.alice_ref, call_id=call.call_id, device_id="3001",
            cause="redirected", diverting_device="3001", new_destination="3002",
            last_redirection_device="3001", local_connection_info="null",
            call_type_flags=170917889)]))
        for client in (self.bob_phone, caller_phone):
            diverted, delivered = typed(client)
            self.assertIsInstance(diverted, events.Diverted)
            assert isinstance(delivered, events.Delivered)
            self.assertEqual((delivered.alerting_device, delivered.called_device,
                              delivered.last_redirection_device, delivered.cause),
                             ("3002", "3001", "3001", "redirected"))
        self.assertEqual([(r.direction, r.missed) for r in self.alice.call_log],
                         [("incoming", True)])

    def test_deflect_to_voicemail_ends_the_call(self) -> None:
        caller_phone, _ = self.monitored("bob", "3002")
        call = self.ring("3002")
        caller_phone.messages()
        self.alice_phone.reply(deflect_xml(call.call_id, "*86"))
        self.assertNotIn(call.call_id, self.pbx.calls)
        diverted, cleared = typed(caller_phone)
        self.assertIsInstance(diverted, events.Diverted)
        assert isinstance(cleared, events.ConnectionCleared)
        self.assertEqual(cleared.releasing_device, "*86")
        self.assertEqual([(r.direction, r.missed) for r in self.alice.call_log],
                         [("incoming", True)])
        self.assertEqual([r.direction for r in self.bob.call_log], ["outgoing"])

    def test_refusals(self) -> None:
        call = self.ring()
        self.assertEqual(self.refusal(self.alice_phone, deflect_xml(call.call_id, "4444"))[:2],
                         (CSTAError, "invalidDestination"))
        self.answered(call)
        self.assertEqual(self.refusal(self.alice_phone, deflect_xml(call.call_id, "3002"))[:2],
                         (CallStateError, "invalidObjectState"))


class WalkThroughTests(CallControlTestCase):
    """The demo's story on the switch itself: ring, answer, hold, retrieve, transfer, deflect."""

    def test_story(self) -> None:
        call = self.ring()
        self.pbx.answer(call, on="alice-softphone", pickup=False)
        self.pbx.hold(call, "3001")
        self.pbx.retrieve(call, "3001")
        self.pbx.transfer(call, "3001", "3002")
        self.assertRaises(WrongState, self.pbx.hold, call, "3002")
        self.pbx.deflect(call, "3002", "*86")
        self.assertEqual(self.pbx.calls, {})
        self.assertEqual([(r.direction, r.missed) for r in self.bob.call_log],
                         [("incoming", True)])


class ControlAPICallTests(ControlAPITestCase):
    """The call routes of the control API over loopback HTTP."""

    @inlineCallbacks
    def test_walk_through(self) -> Any:
        watcher, _ = self.monitored("bob", "3002")
        status, created = yield self.call("POST", "/calls", {"from": CALLER, "to": "3001"})
        path = f"/calls/{created['callId']}"
        status, listed = yield self.call("GET", "/calls")
        self.assertEqual((status, [c["state"] for c in listed["calls"]]), (200, ["alerting"]))
        self.assertEqual(listed["calls"][0]["ringing"], "3001")
        steps: list[tuple[str, Any, str]] = [
            ("answer", {}, "established"), ("hold", {"device": "3001"}, "held"),
            ("retrieve", {"device": "3001"}, "established"),
            ("transfer", {"device": "3001", "to": "3002"}, "alerting"),
            ("deflect", {"to": "*86"}, "cleared")]
        for step, body, state in steps:
            status, answer = yield self.call("POST", f"{path}/{step}", body)
            self.assertEqual((status, answer["state"]), (200, state), step)
        status, listed = yield self.call("GET", "/calls")
        self.assertEqual(listed, {"calls": []})
        self.assertEqual([type(e).__name__ for e in typed(watcher)],
                         ["Transferred", "Delivered", "Diverted"])

    @inlineCallbacks
    def test_a_call_shows_where_it_was_answered(self) -> Any:
        client, _ = self.monitored("alice", "3001")
        assign(client, "alice-softphone")
        call = self.pbx.place_call(CALLER, "3001")
        client.reply(answer_xml(call.call_id))
        status, shown = yield self.call("GET", f"/calls/{call.call_id}")
        self.assertEqual((status, shown), (200, {
            "callId": call.call_id, "globalCallId": call.global_call_id, "from": CALLER,
            "to": "3001", "state": "established", "parties": [CALLER, "3001"], "ringing": "",
            "answeredBy": "3001", "answeredOn": "alice-softphone", "heldBy": "",
            "recordedBy": []}))
        status, state = yield self.call("GET", "/state")
        self.assertEqual(state["sessions"][0]["device"], "alice-softphone")

    @inlineCallbacks
    def test_errors(self) -> Any:
        call = self.pbx.place_call(CALLER, "3001")
        path = f"/calls/{call.call_id}"
        cases = [("GET", "/calls/8", None, 404), ("GET", "/calls/x", None, 404),
                 ("POST", f"{path}/hold", {"device": "3001"}, 409),
                 ("POST", f"{path}/hold", {}, 400),
                 ("POST", f"{path}/deflect", {"to": "4444"}, 400),
                 ("POST", f"{path}/transfer", {"device": "3001", "to": "3002"}, 409),
                 ("POST", "/calls/8/retrieve", {"device": "3001"}, 404)]
        for method, route, body, expected in cases:
            status, answer = yield self.call(method, route, body)
            self.assertEqual(status, expected, (route, body, answer))
            self.assertIsInstance(answer["error"], str)
        self.assertEqual(call.state, "alerting")
