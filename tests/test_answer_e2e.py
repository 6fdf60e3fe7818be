"""The call loop end to end, over real sockets: devices registered through the API, a call from
the simulator pushed to the fake APNs and FCM, answered through the API with the id the push
carried, and the user's other device told to stop ringing."""

from __future__ import annotations

import json

from tests.test_push import ALICE, BUNDLE, CALLER, PushTestCase, apns_token, fcm_token


class AnswerFromThePushTests(PushTestCase):
    async def register_device(self, kind: str, token: str) -> None:
        response, body = await self.d.request(
            "POST", f"/token/{kind}/{BUNDLE}", ALICE, body=json.dumps({"token": token}).encode(),
            headers={"Content-Type": "application/json"})
        self.assertEqual(response.code, 204, body)

    async def test_answer_on_the_phone_that_rang_and_the_tablet_stops(self) -> None:
        await self.start()
        phone, tablet = fcm_token("phone"), apns_token(7)  # an Android phone, an iPad
        await self.register_device("gfcm", phone)
        await self.register_device("apns", tablet)
        await self.until(lambda: self.d.calls.monitors.monitored(self.pbx.user("alice").jid),
                         "alice's calls monitored")

        self.pbx.place_call(CALLER, "3001", calling_name="Carl Caller")
        [ringing] = await self.fcm.wait_for(1)
        data = ringing.message["data"]
        self.assertEqual(data["mx"], "dev")
        call_id = int(data["callId"])

        response, body = await self.d.request(
            "POST", f"/calls/{call_id}/answer", ALICE,
            body=json.dumps({"device": "alice-softphone", "token": phone}).encode(),
            headers={"Content-Type": "application/json"})
        self.assertEqual((response.code, json.loads(body)),
                         (200, {"callId": call_id, "device": "alice-softphone"}))
        call = self.pbx.call(call_id)
        self.assertEqual((call.state, call.answered_on), ("established", "alice-softphone"))

        pushes = await self.apns.wait_for(2)
        await self.dispatcher.settled()
        self.assertEqual([push.token for push in pushes], [tablet, tablet])
        self.assertEqual({k: pushes[1].payload[k] for k in ("event", "reason", "callId")},
                         {"event": "callEnded", "reason": "answeredElsewhere",
                          "callId": call_id})
        self.assertEqual(len(self.fcm.received), 1, "the answering phone is not told")
