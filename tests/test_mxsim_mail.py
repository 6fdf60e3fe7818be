"""The simulator's mail: the new-voicemail event (a message left through the control API or
``PBX.leave_voicemail`` reaches the monitors of the user's extension as
``MailIncomingReadyEvent``, mx-protocol.md §3.9.5), ``StartRecording``/``StopRecording`` (§4.3,
``RecordingStateEvent`` of §3.7), ``Mail*`` commands on the mailbox their ``mediaType`` names,
the service list, and the control API's routes for them.

Sessions are in-memory (:class:`tests.test_mxsim.WireClient`) on a ``task.Clock``, read back
with the proxy's own parsers; the control API runs over real loopback HTTP.
"""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

from twisted.internet.defer import inlineCallbacks

from mxproxy.csta import events
from mxproxy.csta.errors import CallStateError, CSTAError, UnknownCall
from mxproxy.csta.events import MailIncomingReady
from mxproxy.csta.frame import EVENT_ID
from mxproxy.csta.messages import ServiceList, VoiceMailList, csta_error
from mxproxy.csta.xml import attr, local_name, text
from mxproxy.testing.mxsim.audio import MAX_BEEP_SECONDS, SAMPLE_RATE
from mxproxy.testing.mxsim.model import Call
from tests.test_mxsim import NOW, ControlAPITestCase, SimulatorTestCase, WireClient
from tests.test_mxsim_calls import CALLER, answer_xml, assign, typed


def recording_xml(command: str, call_id: int, device: str = "3001") -> str:
    return (f"<{command}><Call><callID>{call_id}</callID><deviceID>{device}</deviceID></Call>"
            f"</{command}>")


def mail_xml(command: str, mail_id: int, media_type: str = "", extra: str = "") -> str:
    media = f"<mediaType>{media_type}</mediaType>" if media_type else ""
    child = "faxSessionID" if command == "MailReceiveIncoming" else "mailId"
    return f"<{command}><{child}>{mail_id}</{child}>{extra}{media}</{command}>"


def list_xml(media_type: str = "") -> str:
    media = f"<mediaType>{media_type}</mediaType>" if media_type else ""
    return f"<MailGetListIncoming><userID>3001</userID>{media}</MailGetListIncoming>"


def seconds_of(audio: bytes) -> float:
    with wave.open(io.BytesIO(audio)) as reader:
        return reader.getnframes() / reader.getframerate()


class MailTestCase(SimulatorTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.alice_phone, self.alice_ref = self.monitored("alice", "3001")
        self.server = self.client("cti")
        self.server_ref = int(text(self.server.reply(
            "<MonitorStart><monitorObject><deviceObject>3001</deviceObject></monitorObject>"
            "</MonitorStart>"), "monitorCrossRefID"))
        self.bob_phone, _ = self.monitored("bob", "3002")

    def refusal(self, client: WireClient, body: str) -> tuple[type[CSTAError], str]:
        reply = client.reply(body)
        self.assertEqual(local_name(reply), "CSTAErrorCode")
        error = csta_error(reply)
        return type(error), text(reply, "stateIncompatibility") or text(reply, "operation")


class LeftVoicemailTests(MailTestCase):
    def test_every_monitor_of_the_extension_hears_of_it(self) -> None:
        """Server links and the user's sessions alike, with every field of §3.9.5."""
        mail = self.pbx.leave_voicemail("alice", b"RIFF", from_number="3002",
                                        from_name="Bob Williams", caller_name="Bob Williams",
                                        duration=7)
        for client, ref in ((self.alice_phone, self.alice_ref), (self.server, self.server_ref)):
            self.assertEqual(typed(client), [events.MailIncomingReady(
                monitor_cross_ref_id=ref, sender="3002", from_name="Bob Williams",
                caller_name="Bob Williams", to="3001", private="0", urgent="0",
                owner_id=self.alice.jid, owner_type="user", mail_id=str(mail.mail_id),
                media_type="VoiceMail", gcid="", received=NOW, duration=7, read=False,
                file_format="wav", note="")])
        self.assertEqual(self.bob_phone.messages(), [])
        self.assertEqual(self.alice.voicemails, {mail.mail_id: mail})

    def test_the_listing_and_download_show_it(self) -> None:
        mail = self.pbx.leave_voicemail("alice", bytes(40_000), from_number="3002")
        self.alice_phone.messages()
        listing = VoiceMailList.from_xml(self.alice_phone.reply(list_xml()))
        self.assertEqual([m.mail_id for m in listing.mails], [str(mail.mail_id)])
        chunk = self.alice_phone.reply(mail_xml("MailReceiveIncoming", mail.mail_id))
        self.assertEqual(attr(chunk, "totalChunks"), "2")


class MediaTypeTests(MailTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.voicemail = self.pbx.add_voicemail("alice", b"voice", from_number="3002")
        self.recording = self.pbx.add_voicemail("alice", b"recorded", from_number="3002",
                                                media_type="Recording")

    def listed(self, media_type: str = "") -> list[tuple[str, str]]:
        reply = VoiceMailList.from_xml(self.alice_phone.reply(list_xml(media_type)))
        return [(mail.mail_id, mail.media_type) for mail in reply.mails]

    def test_lists_are_apart(self) -> None:
        voicemail, recording = str(self.voicemail.mail_id), str(self.recording.mail_id)
        self.assertEqual(self.listed(), [(voicemail, "VoiceMail")])
        self.assertEqual(self.listed("VoiceMail"), [(voicemail, "VoiceMail")])
        self.assertEqual(self.listed("Recording"), [(recording, "Recording")])

    def test_each_mailbox_knows_its_own_ids_only(self) -> None:
        recording = self.recording.mail_id
        for body in (mail_xml("MailReceiveIncoming", recording),
                     mail_xml("MailReceiveIncoming", recording, "VoiceMail"),
                     mail_xml("MailReceiveIncoming", self.voicemail.mail_id, "Recording"),
                     mail_xml("MailSetStatus", recording, "", "<read>true</read>"),
                     mail_xml("UpdateVmNote", recording, "", "<note>x</note>")):
            self.assertEqual(local_name(self.alice_phone.reply(body)), "CSTAErrorCode", body)
        chunk = self.alice_phone.reply(mail_xml("MailReceiveIncoming", recording, "Recording"))
        self.assertEqual(base64.b64decode(text(chunk, "mediaContent")), b"recorded")
        for command, extra in (("MailSetStatus", "<read>true</read>"),
                               ("UpdateVmNote", "<note>keep</note>")):
            self.assertEqual(local_name(self.alice_phone.reply(
                mail_xml(command, recording, "Recording", extra))), f"{command}Response")
        self.assertEqual((self.recording.read, self.recording.note), (True, "keep"))

    def test_delete_reaches_the_named_mailbox_only(self) -> None:
        recording = self.recording.mail_id
        self.assertEqual(local_name(self.alice_phone.reply(
            mail_xml("MailDeleteIncoming", recording))), "MailDeleteIncomingResponse")
        self.assertIn(recording, self.alice.recordings)  # no such voicemail: nothing to do
        self.alice_phone.reply(mail_xml("MailDeleteIncoming", recording, "Recording"))
        self.assertEqual((list(self.alice.recordings), list(self.alice.voicemails)),
                         ([], [self.voicemail.mail_id]))

    def test_another_media_type_is_refused(self) -> None:
        for body in (list_xml("Fax"),
                     mail_xml("MailDeleteIncoming", self.voicemail.mail_id, "Fax")):
            self.assertIn("mediaType", text(self.alice_phone.reply(body), "privateErrorCode"))
        self.assertIn(self.voicemail.mail_id, self.alice.voicemails)


class RecordingTests(MailTestCase):
    def connected(self) -> Call:
        call = self.pbx.place_call(CALLER, "3001", calling_name="Pat Caller")
        assign(self.alice_phone, "alice-softphone")
        self.alice_phone.reply(answer_xml(call.call_id))
        self.alice_phone.messages(), self.server.messages()
        return call

    def command(self, name: str, call_id: int, device: str = "3001") -> list[Any]:
        """Send ``name``: its same-id answer's name, then the typed events alice's phone got."""
        invoke_id = self.alice_phone.send(recording_xml(name, call_id, device))
        (answer_id, answer), *rest = self.alice_phone.messages()
        self.assertEqual((answer_id, local_name(answer)), (invoke_id, f"{name}Response"))
        self.assertTrue(all(i == EVENT_ID for i, _ in rest))
        return [events.RecordingState.from_xml(e) if local_name(e) == "RecordingStateEvent"
                else events.MailIncomingReady.from_xml(e) for _, e in rest]

    def state(self, call: Call, active: bool, ref: int | None = None) -> events.RecordingState:
        return events.RecordingState(
            monitor_cross_ref_id=self.alice_ref if ref is None else ref, call_id=call.call_id,
            device_id="3001", rec_is_available=True, rec_is_active=active)

    def test_start_and_stop_file_a_recording_with_its_event(self) -> None:
        call = self.connected()
        self.assertEqual(self.command("StartRecording", call.call_id),
                         [self.state(call, True)])
        self.assertEqual(typed(self.server), [self.state(call, True, self.server_ref)])
        self.clock.advance(42)
        state, ready = self.command("StopRecording", call.call_id)
        self.assertEqual(state, self.state(call, False))
        (recording,) = self.alice.recordings.values()
        assert isinstance(ready, events.MailIncomingReady)
        self.assertEqual((ready.mail_id, ready.media_type, ready.sender, ready.from_name,
                          ready.duration, ready.gcid, ready.received, ready.read),
                         (str(recording.mail_id), "Recording", CALLER, "Pat Caller", 42,
                          call.global_call_id, NOW + 42, False))
        self.assertEqual(seconds_of(recording.content), 42.0)
        self.assertEqual(self.alice.voicemails, {})
        self.assertEqual([local_name(e) for _, e in self.server.messages()],
                         ["RecordingStateEvent", "MailIncomingReadyEvent"])
        self.assertEqual(self.bob_phone.messages(), [])  # the far end is not told
        self.assertEqual(call.state, "established")

    def test_a_long_recording_keeps_its_duration_with_bounded_audio(self) -> None:
        call = self.connected()
        self.pbx.start_recording(call, "3001")
        self.clock.advance(MAX_BEEP_SECONDS * 10)
        self.pbx.stop_recording(call, "3001")
        (recording,) = self.alice.recordings.values()
        self.assertEqual((recording.duration, seconds_of(recording.content)),
                         (MAX_BEEP_SECONDS * 10, MAX_BEEP_SECONDS))
        self.assertEqual(len(recording.content), 44 + MAX_BEEP_SECONDS * SAMPLE_RATE * 2)

    def test_the_root_shape_of_the_discrepancy_paragraph(self) -> None:
        self.pbx.variants.recording_state = "root"
        call = self.connected()
        self.alice_phone.send(recording_xml("StartRecording", call.call_id))
        (_, event), = self.alice_phone.messages()[1:]
        self.assertEqual((text(event, "callID"), local_name(event[1])), (str(call.call_id),
                                                                          "callID"))
        self.assertEqual(events.RecordingState.from_xml(event), self.state(call, True))

    def test_hanging_up_ends_the_recording(self) -> None:
        call = self.connected()
        self.command("StartRecording", call.call_id)
        self.pbx.hang_up(call, CALLER)
        self.assertEqual([local_name(e) for _, e in self.alice_phone.messages()],
                         ["RecordingStateEvent", "MailIncomingReadyEvent",
                          "ConnectionClearedEvent"])
        (recording,) = self.alice.recordings.values()
        self.assertEqual(recording.from_number, CALLER)

    def test_a_transfer_ends_the_recording_of_the_party_that_stays(self) -> None:
        call = self.connected()
        self.command("StartRecording", call.call_id)
        self.pbx.transfer(call, CALLER, "3002")  # the caller hands alice over to bob
        (recording,) = self.alice.recordings.values()
        self.assertEqual((recording.from_number, call.recordings), (CALLER, {}))

    def test_refusals(self) -> None:
        ringing = self.pbx.place_call(CALLER, "3001")
        self.alice_phone.messages()
        connected = self.connected()
        self.assertEqual(self.refusal(self.alice_phone, recording_xml("StartRecording", 404)),
                         (UnknownCall, "invalidCallID"))
        self.assertEqual(self.refusal(self.alice_phone,
                                      recording_xml("StartRecording", ringing.call_id)),
                         (CallStateError, "noActiveCall"))
        self.assertEqual(self.refusal(self.alice_phone,
                                      recording_xml("StopRecording", connected.call_id)),
                         (CallStateError, "invalidObjectState"))
        self.assertEqual(self.refusal(self.alice_phone, recording_xml(
            "StartRecording", connected.call_id, "3002")),
            (CSTAError, "privilegeViolationOnSpecifiedDevice"))
        self.command("StartRecording", connected.call_id)
        self.assertEqual(self.refusal(self.alice_phone,
                                      recording_xml("StartRecording", connected.call_id)),
                         (CallStateError, "invalidObjectState"))
        self.assertEqual(self.refusal(self.alice_phone, "<StopRecording/>")[0], CSTAError)
        self.assertEqual(list(connected.recordings), ["3001"])


class ServiceListTests(MailTestCase):
    def test_the_voicemail_service_is_where_deflections_end(self) -> None:
        services = ServiceList.from_xml(self.alice_phone.reply("<GetServiceList/>")).services
        voicemail = next(s for s in services if s.service_type == "VM")
        self.assertEqual(voicemail.ext, "*86")
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.deflect(call, "3001", voicemail.ext)
        self.assertEqual(self.pbx.calls, {})


class MailControlAPITests(ControlAPITestCase):
    @inlineCallbacks
    def test_services(self) -> Any:
        status, listed = yield self.call("GET", "/services")
        self.assertEqual((status, listed["services"][0]),
                         (200, {"id": "3458764513956069001", "name": "voicemail", "type": "VM",
                                "ext": "*86", "homeSystem": self.pbx.services[0].home_system}))
        status, changed = yield self.call("PUT", "/services", {"services": [
            {"name": "voicemail", "type": "VM", "ext": "*87"}]})
        self.assertEqual((status, [(s["ext"], s["id"]) for s in changed["services"]]),
                         (200, [("*87", "3458764513956069001")]))
        client = self.client("alice")
        (service,) = ServiceList.from_xml(client.reply("<GetServiceList/>")).services
        self.assertEqual(service.ext, "*87")
        for body in ({"services": [{"name": "x"}]}, {"services": ["x"]},
                     {"services": [{"id": "-1", "name": "x", "type": "VM", "ext": "1"}]}):
            status, _ = yield self.call("PUT", "/services", body)
            self.assertEqual(status, 400, body)
        self.assertEqual(self.pbx.services[0].extension, "*87")

    @inlineCallbacks
    def test_calls_show_who_records_and_the_shape_is_a_variant(self) -> Any:
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.answer(call)
        self.pbx.start_recording(call, "3001")
        status, shown = yield self.call("GET", f"/calls/{call.call_id}")
        self.assertEqual((status, shown["recordedBy"]), (200, ["3001"]))
        self.pbx.stop_recording(call, "3001")
        status, state = yield self.call("GET", "/state")
        self.assertEqual([(u["voicemails"], u["recordings"]) for u in state["users"]],
                         [(0, 1), (0, 0)])
        self.pbx.start_recording(call, "3001")
        status, variants = yield self.call("POST", "/variants", {"recordingState": "root"})
        self.assertEqual((status, self.pbx.variants.recording_state), (200, "root"))
        status, _ = yield self.call("POST", "/variants", {"recordingState": "inside"})
        self.assertEqual(status, 400)


class LeaveVoicemailTests(ControlAPITestCase):
    @inlineCallbacks
    def test_the_monitors_of_the_extension_hear_of_it(self) -> Any:
        client, cross_ref = self.monitored("alice", "3001")
        status, left = yield self.call("POST", "/users/alice/voicemail",
                                       {"from": "3002", "fromName": "Bob Brown", "duration": 12})
        self.assertEqual(status, 201)
        (_, element), = client.messages()
        event = MailIncomingReady.from_xml(element)
        alice = self.pbx.user("alice")
        self.assertEqual((event.monitor_cross_ref_id, event.mail_id, event.media_type,
                          event.sender, event.from_name, event.to, event.duration, event.read,
                          event.owner_id, event.file_format),
                         (cross_ref, left["mailId"], "VoiceMail", "3002", "Bob Brown", "3001",
                          12, False, alice.jid, "wav"))
        mail = alice.voicemails[int(left["mailId"])]
        self.assertTrue(mail.content.startswith(b"RIFF"))

    @inlineCallbacks
    def test_refusals(self) -> Any:
        status, _ = yield self.call("POST", "/users/nobody/voicemail", {"from": "3002"})
        self.assertEqual(status, 404)
        for body in ({}, {"from": "3002", "duration": 0}, {"from": "3002", "duration": "5"}):
            status, _ = yield self.call("POST", "/users/alice/voicemail", body)
            self.assertEqual(status, 400, body)
        self.assertEqual(self.pbx.user("alice").voicemails, {})
