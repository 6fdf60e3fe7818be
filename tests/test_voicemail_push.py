"""New voicemail pushes, over real sockets: the simulator leaves a message, its
MailIncomingReadyEvent reaches the server link's monitor, and the user's devices get an alert
(never a VoIP push, never the audio) at the fake APNs and FCM."""

from __future__ import annotations

import base64
import json

from mxproxy.push.dispatcher import VOICEMAIL_TTL
from tests.test_push import BUNDLE, VOIP, PushTestCase, apns_token, fcm_token

AUDIO = bytes(range(256)) * 40  # a "recording" whose bytes would show in any payload


class VoicemailPushTests(PushTestCase):
    async def devices(self) -> None:  # type: ignore[override]
        await self.start()
        await self.register("alice", "apns", VOIP, apns_token(1))
        await self.register("alice", "apns", BUNDLE, apns_token(2))
        await self.register("alice", "gfcm", BUNDLE, fcm_token("a"))

    async def test_an_alert_with_who_and_how_long_and_no_audio(self) -> None:
        await self.devices()
        mail = self.pbx.leave_voicemail("alice", AUDIO, from_number="3002",
                                        from_name="Bob Brown", duration=72)
        [push] = await self.apns.wait_for(1)
        [arrival] = await self.fcm.wait_for(1)
        await self.dispatcher.settled()
        fields = {"type": "voicemail", "mx": "dev", "id": str(mail.mail_id), "from": "3002",
                  "fromName": "Bob Brown", "duration": 72}
        self.assertEqual((push.token, push.headers["apns-push-type"]), (apns_token(2), "alert"))
        # Kept a day for a phone that is offline, as FCM keeps it (a call's push: now or never).
        self.assertEqual(int(push.headers["apns-expiration"]),
                         int(self.clock.seconds()) + VOICEMAIL_TTL)
        self.assertEqual(arrival.message["android"]["ttl"], f"{VOICEMAIL_TTL}s")
        self.assertEqual(push.payload, {**fields, "aps": {
            "alert": {"title": "New voicemail from Bob Brown", "body": "1:12"},
            "sound": "default"}})
        message = arrival.message
        self.assertEqual(message["data"], {key: str(value) for key, value in fields.items()})
        self.assertEqual(message["notification"],
                         {"title": "New voicemail from Bob Brown", "body": "1:12"})
        wire = json.dumps([push.payload, message]).encode()
        for form in (AUDIO[:64], base64.b64encode(AUDIO[:48]), AUDIO[:32].hex().encode()):
            self.assertNotIn(form, wire)
        self.assertEqual(len(self.apns.received), 1, "no VoIP push for a voicemail")

    async def test_an_unknown_caller_is_named_by_number(self) -> None:
        await self.devices()
        self.pbx.leave_voicemail("alice", AUDIO, from_number="+12125550142", duration=5)
        [push] = await self.apns.wait_for(1)
        self.assertEqual(push.payload["aps"]["alert"]["title"],
                         "New voicemail from +12125550142")

    async def test_read_mail_and_recordings_push_nothing(self) -> None:
        await self.devices()
        self.pbx.leave_voicemail("alice", AUDIO, from_number="3002", read=True)
        self.pbx.leave_voicemail("alice", AUDIO, from_number="3002", media_type="Recording")
        self.pbx.leave_voicemail("bob", AUDIO, from_number="3001")  # bob has no device
        received = self.handled("MailIncomingReadyEvent")
        self.pbx.leave_voicemail("alice", AUDIO, from_number="3003", duration=3)
        await received
        [push] = await self.apns.wait_for(1)
        await self.dispatcher.settled()
        self.assertEqual(push.payload["from"], "3003")
        self.assertEqual((len(self.apns.received), len(self.fcm.received)), (1, 1))
