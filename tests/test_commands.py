"""Tests for mxproxy.csta.commands against the request samples of mx-protocol.md."""

from __future__ import annotations

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.csta import commands
from mxproxy.csta.xml import Element, parse, serialize

PASSWORD_HASH = "DrYcf2Tzg+SII1Hlnb4VlXutH+A=\n"


def canonical(element: Element) -> bytes:
    """C14N form: attribute order, empty-element spelling and character references no longer
    matter, everything else (names, namespaces, text, attribute values) does."""
    return etree.tostring(element, method="c14n")


class CommandShapeTests(SynchronousTestCase):
    """Each builder's output, sent and parsed back, is the documented sample."""

    def assertSample(self, element: Element, sample: bytes) -> None:
        self.assertEqual(canonical(parse(serialize(element))), canonical(parse(sample)))

    def test_user_login(self) -> None:
        """The exact Go output of mxproxy HEAD (§2.1)."""
        element = commands.login_request(
            "testuser", PASSWORD_HASH, platform="iPhone", version="7.0", loginCapab="Audio",
            mediaCapab="Voicemail|CallRec", push_ntf="false")
        self.assertSample(element, (
            b'<loginRequest type="User" platform="iPhone" version="7.0" loginCapab="Audio" '
            b'mediaCapab="Voicemail|CallRec" push_ntf="false"><userName>testuser</userName>'
            b"<pwd>DrYcf2Tzg+SII1Hlnb4VlXutH+A=&#xA;</pwd></loginRequest>"))

    def test_server_login(self) -> None:
        self.assertSample(
            commands.login_request("cti-server", PASSWORD_HASH, kind="Server"),
            b'<?xml version="1.0" encoding="UTF-8"?>\n'
            b'<loginRequest type="Server"><userName>cti-server</userName>'
            b"<pwd>DrYcf2Tzg+SII1Hlnb4VlXutH+A=&#xA;</pwd></loginRequest>")

    def test_login_password_verbatim(self) -> None:
        """The trailing LF of the hash survives; a clear-text retry password is not touched."""
        hashed = parse(serialize(commands.login_request("u", PASSWORD_HASH)))
        self.assertEqual(hashed.findtext("pwd"), PASSWORD_HASH)
        clear = parse(serialize(commands.login_request("u", " Secret-123 ")))
        self.assertEqual(clear.findtext("pwd"), " Secret-123 ")

    def test_login_escapes_user(self) -> None:
        sent = parse(serialize(commands.login_request('a<b&"c', "p")))
        self.assertEqual(sent.findtext("userName"), 'a<b&"c')

    def test_addressbook_page(self) -> None:
        self.assertSample(commands.addressbook_page(0),
                          b'<iq type="get" id="addressbook" index="0"></iq>')
        self.assertEqual(commands.addressbook_page(3).get("index"), "3")

    def test_monitor_ab(self) -> None:
        self.assertSample(commands.monitor_start_ab(), b"<MonitorStartAb/>")
        self.assertSample(commands.monitor_stop_ab(), b"<MonitorStopAb/>")

    def test_calllog_whole(self) -> None:
        self.assertSample(commands.calllog(None),
                          b'<iq type="get" id="calllog" timestamp="-1"></iq>')

    def test_calllog_since(self) -> None:
        self.assertSample(commands.calllog(1503223469),
                          b'<iq type="get" id="calllog" timestamp="1503223469"></iq>')

    def test_set_mode(self) -> None:
        """The exact Go output of the early proxy (§3.3)."""
        self.assertSample(
            commands.set_mode("remote", "+15555550100", 1, 30),
            b'<iq type="set" id="mode" mode="remote" ringdelay="1" vmdelay="30">'
            b"<address>+15555550100</address></iq>")

    def test_set_mode_local_without_address(self) -> None:
        self.assertSample(commands.set_mode("local", "", 20, 10),
                          b'<iq type="set" id="mode" mode="local" ringdelay="20" vmdelay="10"/>')

    def test_make_call(self) -> None:
        self.assertSample(
            commands.make_call("3095", "1099"),
            b'<MakeCall><callingDevice typeOfNumber="deviceID">3095</callingDevice>'
            b"<calledDirectoryNumber>1099</calledDirectoryNumber></MakeCall>")

    def test_monitor_start(self) -> None:
        self.assertSample(
            commands.monitor_start("3095"),
            b"<MonitorStart><monitorObject><deviceObject>3095</deviceObject></monitorObject>"
            b"</MonitorStart>")

    def test_monitor_stop(self) -> None:
        self.assertSample(commands.monitor_stop(12),
                          b"<MonitorStop><monitorCrossRefID>12</monitorCrossRefID></MonitorStop>")

    def test_mail_list(self) -> None:
        self.assertSample(commands.mail_list("3095"),
                          b"<MailGetListIncoming><userID>3095</userID></MailGetListIncoming>")

    def test_mail_list_of_recordings(self) -> None:
        """§3.9.2: the optional ``mediaType`` some versions sent."""
        self.assertSample(commands.mail_list("3095", media_type=commands.RECORDING),
                          b"<MailGetListIncoming><userID>3095</userID>"
                          b"<mediaType>Recording</mediaType></MailGetListIncoming>")

    def test_mail_receive_first(self) -> None:
        self.assertSample(
            commands.mail_receive("81", next_chunk=False),
            b"<MailReceiveIncoming><faxSessionID>81</faxSessionID></MailReceiveIncoming>")

    def test_mail_receive_next(self) -> None:
        self.assertSample(
            commands.mail_receive("81", next_chunk=True),
            b"<MailReceiveIncoming><faxSessionID>81</faxSessionID><nextChunk></nextChunk>"
            b"</MailReceiveIncoming>")

    def test_mail_receive_recording(self) -> None:
        self.assertSample(
            commands.mail_receive("81", next_chunk=True, media_type="Recording"),
            b"<MailReceiveIncoming><faxSessionID>81</faxSessionID><nextChunk/>"
            b"<mediaType>Recording</mediaType></MailReceiveIncoming>")

    def test_mail_cancel(self) -> None:
        self.assertSample(commands.mail_cancel("81"),
                          b"<MailCancelReceive><mailId>81</mailId></MailCancelReceive>")

    def test_mail_delete(self) -> None:
        self.assertSample(commands.mail_delete("81"),
                          b"<MailDeleteIncoming><mailId>81</mailId></MailDeleteIncoming>")

    def test_mail_set_status(self) -> None:
        self.assertSample(
            commands.mail_set_status("81", True, media_type="VoiceMail"),
            b"<MailSetStatus><mailId>81</mailId><read>true</read><mediaType>VoiceMail</mediaType>"
            b"</MailSetStatus>")
        self.assertSample(commands.mail_set_status("81", False),
                          b"<MailSetStatus><mailId>81</mailId><read>false</read></MailSetStatus>")

    def test_update_vm_note(self) -> None:
        self.assertSample(
            commands.update_vm_note("81", "call back tomorrow"),
            b"<UpdateVmNote><mailId>81</mailId><note>call back tomorrow</note></UpdateVmNote>")

    def test_call_control(self) -> None:
        """The samples of §4.1, each built from (call id, own extension[, target])."""
        cases = [
            (commands.answer_call(21, "3095"),
             b"<AnswerCall><callToBeAnswered><callID>21</callID><deviceID>3095</deviceID>"
             b"</callToBeAnswered></AnswerCall>"),
            (commands.clear_connection(21, "3095"),
             b"<ClearConnection><connectionToBeCleared><callID>21</callID><deviceID>3095"
             b"</deviceID></connectionToBeCleared></ClearConnection>"),
            (commands.hold_call(21, "3095"),
             b"<HoldCall><callToBeHeld><callID>21</callID><deviceID>3095</deviceID>"
             b"</callToBeHeld></HoldCall>"),
            (commands.retrieve_call(21, "3095"),
             b"<RetrieveCall><callToBeRetrieved><callID>21</callID><deviceID>3095</deviceID>"
             b"</callToBeRetrieved></RetrieveCall>"),
            (commands.single_step_transfer(21, "3095", "3044"),
             b"<SingleStepTransferCall><activeCall><callID>21</callID><deviceID>3095</deviceID>"
             b"</activeCall><transferredTo>3044</transferredTo></SingleStepTransferCall>"),
            (commands.deflect_call(21, "3095", "3044"),
             b"<DeflectCall><callToBeDiverted><callID>21</callID><deviceID>3095</deviceID>"
             b"</callToBeDiverted><newDestination>3044</newDestination></DeflectCall>"),
        ]
        for element, sample in cases:
            self.assertSample(element, sample)

    def test_recording(self) -> None:
        """The samples of §4.3, without the optional ``groupID``."""
        self.assertSample(commands.start_recording(25, "3095"),
                          b"<StartRecording><Call><callID>25</callID><deviceID>3095</deviceID>"
                          b"</Call></StartRecording>")
        self.assertSample(commands.stop_recording(25, "3095"),
                          b"<StopRecording><Call><callID>25</callID><deviceID>3095</deviceID>"
                          b"</Call></StopRecording>")

    def test_assign_device(self) -> None:
        """§4.2; the name is escaped like any text."""
        self.assertSample(commands.assign_device("alice-softphone"),
                          b'<AssignDevice><deviceID type="device">alice-softphone</deviceID>'
                          b"</AssignDevice>")
        sent = parse(serialize(commands.assign_device("a<b&c")))
        self.assertEqual(sent.findtext("deviceID"), "a<b&c")

    def test_logout(self) -> None:
        self.assertSample(commands.logout(), b"<logout/>")

    def test_no_namespace(self) -> None:
        """The MX has accepted un-namespaced requests since the ``mx`` library (§3.4)."""
        built = [commands.login_request("u", "p"), commands.make_call("1", "2"),
                 commands.monitor_start("1"), commands.mail_receive("1", True),
                 commands.single_step_transfer(1, "2", "3"), commands.assign_device("d")]
        for element in built:
            for node in element.iter():
                self.assertIsNone(etree.QName(node).namespace, node.tag)

    def test_canonical_form_is_strict(self) -> None:
        """The comparison used above does tell different requests apart."""
        self.assertNotEqual(canonical(commands.mail_cancel("81")),
                            canonical(commands.mail_delete("81")))
        self.assertNotEqual(canonical(commands.mail_receive("81", True)),
                            canonical(commands.mail_receive("81", False)))
