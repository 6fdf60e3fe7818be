"""The simulator's new-voicemail event: a message left through the control API reaches the
monitors of the user's extension as ``MailIncomingReadyEvent`` (mx-protocol.md §3.9.5)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from mxproxy.csta.events import MailIncomingReady
from tests.test_mxsim import ControlAPITestCase


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
