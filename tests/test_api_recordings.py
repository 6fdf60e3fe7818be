"""The recordings of a user's calls through the voicemail routes (``?media=Recording``), end
to end: HTTP client → API → pooled sessions → simulator, on loopback; the event stream tells
which mailbox a changed mail is in."""

from __future__ import annotations

from twisted.internet.task import Clock

from mxproxy.testing.mxsim.model import Voicemail
from tests.test_api import ALICE, company, loads
from tests.test_api_events import EventStreamTestCase

CALLER = "+12125550142"


class RecordingTests(EventStreamTestCase):
    async def recorded(self, seconds: int = 3) -> Voicemail:
        """A call of alice's, recorded for ``seconds`` (beeps of that length: several chunks)."""
        clock = Clock()
        self.pbx = company(clock=clock, chunk_size=1000)
        await self.daemon(self.pbx)
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.answer(call)
        self.pbx.start_recording(call, "3001")
        clock.advance(seconds)
        self.pbx.stop_recording(call, "3001")
        (recording,) = self.pbx.user("alice").recordings.values()
        return recording

    async def test_listed_apart_from_the_voicemail(self) -> None:
        recording = await self.recorded()
        voicemail = self.pbx.leave_voicemail("alice", b"RIFF", from_number="3002",
                                             duration=1)
        response, body = await self.get("/voicemail?media=Recording")
        self.assertEqual(response.code, 200)
        [listed] = loads(body)["voicemails"]
        self.assertEqual((listed["id"], listed["from"], listed["duration"]),
                         (str(recording.mail_id), CALLER, 3))
        response, body = await self.get("/voicemail?media=VoiceMail")
        self.assertEqual([m["id"] for m in loads(body)["voicemails"]], [str(voicemail.mail_id)])
        response, body = await self.get("/voicemail")
        self.assertEqual([m["id"] for m in loads(body)["voicemails"]], [str(voicemail.mail_id)])

    async def test_download_is_byte_identical_to_the_simulators_file(self) -> None:
        recording = await self.recorded()
        response, body = await self.get(f"/voicemail/{recording.mail_id}?media=Recording")
        self.assertEqual((response.code, body), (200, recording.content))
        self.assertGreater(len(recording.content), 40 * 1000)  # 49 chunks of the MX's
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"audio/wave"])
        self.assertError(await self.get(f"/voicemail/{recording.mail_id}"), 404)
        response, body = await self.d.request(
            "HEAD", f"/voicemail/{recording.mail_id}?media=Recording", ALICE)
        self.assertEqual((response.code, body), (200, b""))
        cancel = [c for c in self.pbx.received if c.name == "MailCancelReceive"][-1]
        self.assertEqual(cancel.element.findtext("mediaType"), "Recording")
        self.assertEqual(self.pbx.logins["alice"], 1, "the session stayed usable")

    async def test_patch_and_delete(self) -> None:
        recording = await self.recorded()
        path = f"/voicemail/{recording.mail_id}?media=Recording"
        response, _ = await self.send("PATCH", path, {"note": "the quote", "read": True})
        self.assertEqual(response.code, 204)
        self.assertEqual((recording.note, recording.read), ("the quote", True))
        self.assertError(await self.send("PATCH", f"/voicemail/{recording.mail_id}",
                                         {"read": False}), 404)
        response, _ = await self.send("DELETE", f"/voicemail/{recording.mail_id}")
        self.assertEqual(response.code, 204)  # no such voicemail: nothing deleted
        self.assertIn(recording.mail_id, self.pbx.user("alice").recordings)
        response, _ = await self.send("DELETE", path)
        self.assertEqual(response.code, 204)
        self.assertEqual(self.pbx.user("alice").recordings, {})

    async def test_another_media_is_400_without_a_word_to_the_mx(self) -> None:
        recording = await self.recorded()
        before = len(self.pbx.received)
        for method, path in (("GET", "/voicemail?media=Fax"),
                             ("GET", f"/voicemail/{recording.mail_id}?media=recording"),
                             ("DELETE", f"/voicemail/{recording.mail_id}?media=")):
            self.assertError(await self.d.request(method, path, ALICE), 400, "media")
        self.assertEqual(len(self.pbx.received), before)

    async def test_the_event_stream_names_the_recordings_mailbox(self) -> None:
        recording = await self.recorded()
        stream = await self.stream()
        path = f"/voicemail/{recording.mail_id}?media=Recording"
        response, _ = await self.send("PATCH", path, {"read": True})
        self.assertEqual(response.code, 204)
        response, _ = await self.send("DELETE", path)
        events = await stream.until(2)
        self.assertEqual([data for _, _, data in events], [
            {"id": str(recording.mail_id), "mediaType": "Recording", "event": "updated",
             "read": True},
            {"id": str(recording.mail_id), "mediaType": "Recording", "event": "deleted"}])


class RecordingRouteTests(EventStreamTestCase):
    async def connected(self) -> int:
        """A call of alice's from outside, answered by the far end's peer (alice), on a
        simulator whose clock the test moves; its call id."""
        self.sim_clock = Clock()
        self.pbx = company(clock=self.sim_clock, chunk_size=1000)
        await self.daemon(self.pbx)
        call = self.pbx.place_call(CALLER, "3001")
        self.pbx.answer(call)
        return call.call_id

    async def test_start_stop_then_the_recording_downloads_byte_identical(self) -> None:
        call_id = await self.connected()
        stream = await self.stream()
        self.assertEqual(loads((await self.send("POST", f"/calls/{call_id}/recording", {}))[1]),
                         {"callId": call_id, "recording": True})
        self.assertEqual(list(self.pbx.call(call_id).recordings), ["3001"])
        self.sim_clock.advance(3)
        response, body = await self.send("DELETE", f"/calls/{call_id}/recording")
        self.assertEqual((response.code, loads(body)), (200, {"callId": call_id,
                                                              "recording": False}))
        (recording,) = self.pbx.user("alice").recordings.values()
        self.assertEqual(recording.duration, 3)
        while "voicemail" not in stream.kinds():
            await stream.wait()
        events = [data for kind, _, data in stream.events if kind == "voicemail"]
        self.assertEqual((events[0]["id"], events[0]["event"], events[0]["mediaType"]),
                         (str(recording.mail_id), "new", "Recording"))
        response, body = await self.get(f"/voicemail/{recording.mail_id}?media=Recording")
        self.assertEqual((response.code, body), (200, recording.content))

    async def test_refusals(self) -> None:
        call_id = await self.connected()
        self.assertError(await self.send("DELETE", f"/calls/{call_id}/recording"), 409,
                         "does not record")
        self.assertEqual((await self.send("POST", f"/calls/{call_id}/recording", {}))[0].code,
                         200)
        self.assertError(await self.send("POST", f"/calls/{call_id}/recording", {}), 409,
                         "already")
        self.assertError(await self.send("POST", "/calls/999/recording", {}), 404)
        self.assertError(await self.send("POST", "/calls/x1/recording", {}), 404)
        ringing = self.pbx.place_call(CALLER, "3001")
        self.assertError(await self.send("POST", f"/calls/{ringing.call_id}/recording", {}),
                         409, "not connected")
        self.assertError(await self.send("POST", f"/calls/{call_id}/recording", {},
                                         auth=("alice", "wrong")), 403)
