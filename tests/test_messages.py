"""Tests for mxproxy.csta.messages and mxproxy.csta.events, on the samples of mx-protocol.md."""

from __future__ import annotations

import json
import operator
import re
from typing import Any, TypeVar

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.csta import errors, events, messages
from mxproxy.csta.records import XMLRecord, integer, string
from mxproxy.csta.xml import ECMA_CSTA_NS, XMLError, parse

# --- samples, verbatim from mx-protocol.md (long lines split between tags) ---

LOGIN_RESPONSE = (
    b'<loginResponce Code="0" sn="ABC12" apiversion="11" ext="3095" userId="43884850000000001" '
    b'softPhonePwd="aBcDeFgHiJkLmNoPqRsTuVwXyZ012345" proto="TLS" mxport="5061" '
    b'clientport="1234">Login OK</loginResponce>'
)
LOGIN_FAILED = (
    b'<loginFailed Code="1" sn="ABC12" apiversion="11">Invalid user name or password</loginFailed>'
)
ABLIST = b"""<ablist size="2" index="0">
  <abentry jid="43884850000000001" presence="Available" presenceNote="">
    <firstName>Test</firstName><lastName>User</lastName>
    <businessPhone>3095</businessPhone>
    <homePhone>+15555550101</homePhone><cellPhone>+15555550102</cellPhone>
    <email>test.user@example.invalid</email>
    <homeSystem>43884850000000099</homeSystem>
    <did>+15555550103</did><exchangeId></exchangeId>
  </abentry>
  <abentry jid="43884850000000002">
    <firstName>Other</firstName><lastName>User</lastName><businessPhone>3044</businessPhone>
  </abentry>
</ablist>"""
AB_ADD = (
    b'<AbAddUserEvent><abentry jid="43884850000000003"><firstName>New</firstName>'
    b'<lastName>User</lastName><businessPhone>3101</businessPhone></abentry></AbAddUserEvent>'
)
AB_UPDATE = (
    b'<AbUpdateUserEvent><abentry jid="43884850000000001"><firstName>Test</firstName>'
    b'<lastName>User</lastName><businessPhone>3095</businessPhone></abentry></AbUpdateUserEvent>'
)
AB_DELETE = b"<AbDeleteUserEvent><userId>43884850000000003</userId></AbDeleteUserEvent>"
CALLLOGINFO = b"""<callloginfo>
  <callinfo missed="true" direction="incoming">
    <record_id>973</record_id>
    <gcid>ABC12-00-0000D-3B9</gcid>
    <connectTimestamp>1503223469</connectTimestamp>
    <disconnectTimestamp>1503223472</disconnectTimestamp>
    <callingPartyNo>3044</callingPartyNo>
    <originalCalledPartyNo>3095</originalCalledPartyNo>
    <firstName>Other</firstName><lastName>User</lastName><extension>3044</extension>
    <serviceName></serviceName><serviceExtension></serviceExtension>
    <callType>1</callType><legType>1</legType><selfLegType>9</selfLegType>\
<monitorType>0</monitorType>
  </callinfo>
  <callinfo direction="outgoing">
    <record_id>975</record_id><gcid>ABC12-00-0000D-3BB</gcid>
    <disconnectTimestamp>1503258153</disconnectTimestamp>
    <callingPartyNo>+15555550100</callingPartyNo>\
<originalCalledPartyNo>+15555550199</originalCalledPartyNo>
    <callType>1</callType><legType>1</legType><selfLegType>1</selfLegType>
  </callinfo>
</callloginfo>"""
MAKE_CALL_RESPONSE = (
    b"<MakeCallResponse><callingDevice><callID>25</callID><deviceID>3095</deviceID>"
    b"</callingDevice><calledDevice>1099</calledDevice></MakeCallResponse>"
)
MONITOR_START_RESPONSE = (
    b"<MonitorStartResponse><monitorCrossRefID>12</monitorCrossRefID><actualMonitorMediaClass>"
    b"<voice>true</voice></actualMonitorMediaClass></MonitorStartResponse>"
)
DELIVERED = b"""<DeliveredEvent>
  <monitorCrossRefID>12</monitorCrossRefID>
  <connection><callID>21</callID><deviceID>3095</deviceID>\
<globalCallID>1234567890123456789</globalCallID></connection>
  <alertingDevice><deviceIdentifier>3095</deviceIdentifier></alertingDevice>
  <alertingDisplayName>Test User</alertingDisplayName>
  <networkCallingDevice><deviceIdentifier>3044</deviceIdentifier></networkCallingDevice>
  <callingDevice><deviceIdentifier>3044</deviceIdentifier></callingDevice>
  <callingDisplayName>Other User</callingDisplayName>
  <calledDevice><deviceIdentifier>3095</deviceIdentifier></calledDevice>
  <lastRedirectionDevice><deviceIdentifier>3044</deviceIdentifier></lastRedirectionDevice>
  <localConnectionInfo>alerting</localConnectionInfo>
  <cause>normal</cause>
  <cmdsAllowed>0</cmdsAllowed>
  <callTypeFlags>170917889</callTypeFlags>
  <cad name="Account" type="string">42</cad>
</DeliveredEvent>"""
ESTABLISHED = (
    b"<EstablishedEvent><monitorCrossRefID>12</monitorCrossRefID><establishedConnection>"
    b"<callID>21</callID><deviceID>3095</deviceID><globalCallID>1234567890123456789</globalCallID>"
    b"</establishedConnection><answeringDevice><deviceIdentifier>3095</deviceIdentifier>"
    b"</answeringDevice><answeringDisplayName>Test User</answeringDisplayName><callingDevice>"
    b"<deviceIdentifier>3044</deviceIdentifier></callingDevice><callingDisplayName>Other User"
    b"</callingDisplayName><calledDevice><deviceIdentifier>3095</deviceIdentifier></calledDevice>"
    b"<cause>normal</cause><cmdsAllowed>0</cmdsAllowed><callTypeFlags>0</callTypeFlags>"
    b"</EstablishedEvent>"
)
CLEARED = (
    b"<ConnectionClearedEvent><monitorCrossRefID>12</monitorCrossRefID><droppedConnection>"
    b"<callID>21</callID><deviceID>3095</deviceID></droppedConnection><releasingDevice>"
    b"<deviceIdentifier>3044</deviceIdentifier></releasingDevice><cause>normalClearing</cause>"
    b"</ConnectionClearedEvent>"
)
HELD = (
    b"<HeldEvent><monitorCrossRefID>12</monitorCrossRefID><heldConnection><callID>21</callID>"
    b"<deviceID>3095</deviceID></heldConnection><holdingDevice><deviceIdentifier>3095"
    b"</deviceIdentifier></holdingDevice><localConnectionInfo>hold</localConnectionInfo>"
    b"<cause>normal</cause></HeldEvent>"
)
RETRIEVED = (
    b"<RetrievedEvent><monitorCrossRefID>12</monitorCrossRefID><retrievedConnection>"
    b"<callID>21</callID><deviceID>3095</deviceID></retrievedConnection><retrievingDevice>"
    b"<deviceIdentifier>3095</deviceIdentifier></retrievingDevice><localConnectionInfo>connected"
    b"</localConnectionInfo><cause>normal</cause></RetrievedEvent>"
)
ORIGINATED = (
    b"<OriginatedEvent><monitorCrossRefID>12</monitorCrossRefID><originatedConnection>"
    b"<callID>25</callID><deviceID>3095</deviceID></originatedConnection><callingDevice>"
    b"<deviceIdentifier>3095</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>"
    b"1099</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo>"
    b"<cause>normal</cause></OriginatedEvent>"
)
RECORDING_STATE = (
    b"<RecordingStateEvent><monitorCrossRefID>12</monitorCrossRefID><connection><callID>21"
    b"</callID><deviceID>3095</deviceID></connection><RecIsAvailable>true</RecIsAvailable>"
    b"<RecIsActive>false</RecIsActive></RecordingStateEvent>"
)
CALL_PARK_INFO = (
    b"<callParkInfo><monitorCrossRefID>12</monitorCrossRefID><parkID>7</parkID></callParkInfo>"
)
CSTA_ERROR = b"<CSTAErrorCode><privateErrorCode>URM Denied</privateErrorCode></CSTAErrorCode>"
MAIL_LIST = b"""<MailGetListIncomingResponse rowCount="2">
  <mail from="3044" fromName="Other User" callerName="Other User" to="3095" ownerType="user">
    <mailId>81</mailId><mediaType>VoiceMail</mediaType><received>1502210275</received>
    <duration>7</duration><read>false</read><note></note>
  </mail>
  <mail from="+15555550177" to="3095" ownerType="user">
    <mailId>82</mailId><received>1502213652</received><duration>29</duration>\
<read>true</read><note>call back</note>
  </mail>
</MailGetListIncomingResponse>"""
CHUNK = b"""\
<MailReceiveIncomingResponse mailId="81" chunkNumber="1" totalChunks="3" chunkSize="32768">
  <fileFormat>wav</fileFormat>
  <documentName>u00043884850000000001/m0081.wav</documentName>
  <mediaContent>UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=</mediaContent>
</MailReceiveIncomingResponse>"""
MAIL_READY = b"""\
<MailIncomingReadyEvent from="3044" fromName="Other User" callerName="Other User" \
to="3095" private="0" urgent="0" ownerId="43884850000000001" ownerType="user">
  <monitorCrossRefID>12</monitorCrossRefID><mailId>83</mailId><mediaType>VoiceMail</mediaType>
  <gcid>ABC12-00-0000D-3C1</gcid><received>1503300000</received><duration>12</duration>
  <read>false</read><fileFormat>wav</fileFormat><note></note>
</MailIncomingReadyEvent>"""
PRESENCE_AFTER_LOGIN = b'<presence from="0" status="Available" mxStatus=""></presence>'

WAV_HEADER = (b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00"
              b"\x80>\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00")


def default_namespaced(sample: bytes) -> bytes:
    """``sample`` with the ECMA-323 ed4 namespace declared as the default on its root."""
    return re.sub(rb"^(\s*<\w+)", rb'\1 xmlns="' + ECMA_CSTA_NS.encode() + b'"', sample, count=1)


def prefixed(sample: bytes) -> bytes:
    """``sample`` with every element in the ECMA-323 namespace under the ``csta:`` prefix."""
    tagged = re.sub(rb"<(/?)(\w+)", rb"<\1csta:\2", sample)
    return re.sub(rb"^(\s*<csta:\w+)", rb'\1 xmlns:csta="' + ECMA_CSTA_NS.encode() + b'"', tagged,
                  count=1)


R = TypeVar("R", bound=XMLRecord)


def read(kind: type[R], sample: bytes) -> R:
    return kind.from_xml(parse(sample))


class NamespaceTests(SynchronousTestCase):
    """Namespaced and plain samples read the same (the MX and older clients use both)."""

    samples: list[tuple[type[XMLRecord], bytes]] = [
        (messages.LoginResponse, LOGIN_RESPONSE),
        (messages.LoginFailure, LOGIN_FAILED),
        (messages.AddressBookPage, ABLIST),
        (messages.AbUpdate, AB_ADD),
        (messages.AbDelete, AB_DELETE),
        (messages.CallLogBlock, CALLLOGINFO),
        (messages.MakeCallResult, MAKE_CALL_RESPONSE),
        (messages.MonitorStarted, MONITOR_START_RESPONSE),
        (messages.VoiceMailList, MAIL_LIST),
        (messages.Chunk, CHUNK),
        (events.Delivered, DELIVERED),
        (events.Established, ESTABLISHED),
        (events.ConnectionCleared, CLEARED),
        (events.Held, HELD),
        (events.Retrieved, RETRIEVED),
        (events.Originated, ORIGINATED),
        (events.RecordingState, RECORDING_STATE),
        (events.CallParkInfo, CALL_PARK_INFO),
        (events.MailIncomingReady, MAIL_READY),
        (events.Presence, PRESENCE_AFTER_LOGIN),
    ]

    def test_helpers_really_namespace(self) -> None:
        """The variants used below do put the elements in the ECMA-323 namespace."""
        for variant in (default_namespaced, prefixed):
            root = parse(variant(HELD))
            self.assertEqual(root.tag, f"{{{ECMA_CSTA_NS}}}HeldEvent")
            self.assertEqual(root[1][0].tag, f"{{{ECMA_CSTA_NS}}}callID")

    def test_variants_read_alike(self) -> None:
        for kind, sample in self.samples:
            plain = read(kind, sample)
            self.assertNotEqual(plain, kind(), kind.__name__)
            self.assertEqual(read(kind, default_namespaced(sample)), plain, kind.__name__)
            self.assertEqual(read(kind, prefixed(sample)), plain, kind.__name__)

    def test_error_text_namespaced(self) -> None:
        for variant in (default_namespaced, prefixed):
            self.assertEqual(messages.csta_error_text(parse(variant(CSTA_ERROR))), "URM Denied")


class LoginTests(SynchronousTestCase):
    def test_response(self) -> None:
        response = read(messages.LoginResponse, LOGIN_RESPONSE)
        self.assertEqual(response, messages.LoginResponse(
            code=0, sn="ABC12", ext="3095", user_id="43884850000000001",
            soft_phone_pwd="aBcDeFgHiJkLmNoPqRsTuVwXyZ012345", apiversion=11, text="Login OK"))

    def test_soft_phone_password_kept_out_of_repr(self) -> None:
        """Messages get logged; the SIP password must not be."""
        self.assertNotIn("aBcDeFgHiJk", repr(read(messages.LoginResponse, LOGIN_RESPONSE)))

    def test_server_login_without_extension(self) -> None:
        response = read(messages.LoginResponse, b'<loginResponce Code="0" sn="ABC12" userId="0"/>')
        self.assertEqual((response.ext, response.user_id, response.apiversion), ("", "0", 0))

    def test_bad_apiversion(self) -> None:
        error = self.assertRaises(XMLError, read, messages.LoginResponse,
                                  b'<loginResponce Code="0" apiversion="eleven"/>')
        self.assertIn("apiversion", str(error))

    def test_failure(self) -> None:
        self.assertEqual(read(messages.LoginFailure, LOGIN_FAILED), messages.LoginFailure(
            code=1, sn="ABC12", apiversion=11, text="Invalid user name or password"))

    def test_failure_lower_case_code(self) -> None:
        """Some clients wrote ``code``; reading it too costs nothing."""
        self.assertEqual(read(messages.LoginFailure, b'<loginFailed code="4"/>').code, 4)

    def test_failure_bad_code(self) -> None:
        self.assertRaises(XMLError, read, messages.LoginFailure, b'<loginFailed Code="x"/>')


class AddressBookTests(SynchronousTestCase):
    def test_page(self) -> None:
        page = read(messages.AddressBookPage, ABLIST)
        assert isinstance(page, messages.AddressBookPage)
        self.assertEqual((page.size, page.index), (2, 0))
        self.assertEqual(page.contacts, (
            messages.Contact(
                jid="43884850000000001", first_name="Test", last_name="User", ext="3095",
                home_phone="+15555550101", cell_phone="+15555550102",
                email="test.user@example.invalid", home_system="43884850000000099",
                did="+15555550103", exchange_id="", presence="Available", presence_note=""),
            messages.Contact(jid="43884850000000002", first_name="Other", last_name="User",
                             ext="3044"),
        ))

    def test_contact_json(self) -> None:
        """§6.4 keys; ``homeSystem`` a string so a 17-digit JID survives JavaScript."""
        full, minimal = read(messages.AddressBookPage, ABLIST).contacts
        self.assertEqual(full.to_json(), {
            "firstName": "Test", "lastName": "User", "ext": "3095", "homePhone": "+15555550101",
            "cellPhone": "+15555550102", "email": "test.user@example.invalid",
            "homeSystem": "43884850000000099", "did": "+15555550103"})
        self.assertEqual(minimal.to_json(), {"firstName": "Other", "lastName": "User",
                                             "ext": "3044"})

    def test_contact_json_keeps_names_when_empty(self) -> None:
        self.assertEqual(messages.Contact(jid="1").to_json(),
                         {"firstName": "", "lastName": "", "ext": ""})

    def test_long_jid_stays_exact(self) -> None:
        jid = "184467440737095516150001"
        page = read(messages.AddressBookPage,
                    b'<ablist size="1" index="0"><abentry jid="%s"/></ablist>' % jid.encode())
        self.assertEqual(page.contacts[0].jid, jid)

    def test_empty_page(self) -> None:
        self.assertEqual(read(messages.AddressBookPage, b"<ablist/>"),
                         messages.AddressBookPage(size=0, index=0, contacts=()))

    def test_bad_size(self) -> None:
        self.assertRaises(XMLError, read, messages.AddressBookPage,
                          b'<ablist size="many" index="0"/>')

    def test_add_and_update_are_upserts(self) -> None:
        self.assertEqual(messages.parse_event(parse(AB_ADD)), messages.AbUpdate(
            messages.Contact(jid="43884850000000003", first_name="New", last_name="User",
                             ext="3101")))
        self.assertEqual(messages.parse_event(parse(AB_UPDATE)), messages.AbUpdate(
            messages.Contact(jid="43884850000000001", first_name="Test", last_name="User",
                             ext="3095")))

    def test_update_without_entry(self) -> None:
        self.assertEqual(read(messages.AbUpdate, b"<AbUpdateUserEvent/>").contact,
                         messages.Contact())

    def test_delete(self) -> None:
        self.assertEqual(messages.parse_event(parse(AB_DELETE)),
                         messages.AbDelete(jid="43884850000000003"))


class CallLogTests(SynchronousTestCase):
    def test_block(self) -> None:
        block = read(messages.CallLogBlock, CALLLOGINFO)
        assert isinstance(block, messages.CallLogBlock)
        self.assertEqual(block.entries, (
            messages.CallInfo(
                missed=True, direction="incoming", record_id=973, gcid="ABC12-00-0000D-3B9",
                connect=1503223469, disconnect=1503223472, calling_party_no="3044",
                original_called_party_no="3095", first_name="Other", last_name="User",
                ext="3044", service_name="", service_extension="", call_type=1, leg_type=1,
                self_leg_type=9, monitor_type=0),
            messages.CallInfo(
                direction="outgoing", record_id=975, gcid="ABC12-00-0000D-3BB",
                disconnect=1503258153, calling_party_no="+15555550100",
                original_called_party_no="+15555550199", call_type=1, leg_type=1,
                self_leg_type=1),
        ))

    def test_json(self) -> None:
        """Exactly the §6.4 sample, and the same omissions for the second entry."""
        missed, outgoing = read(messages.CallLogBlock, CALLLOGINFO).entries
        self.assertEqual(missed.to_json(), {
            "missed": True, "direction": "incoming", "recordId": 973,
            "gcid": "ABC12-00-0000D-3B9", "connect": 1503223469, "disconnect": 1503223472,
            "callingPartyNo": "3044", "originalCalledPartyNo": "3095", "firstName": "Other",
            "lastName": "User", "ext": "3044", "callType": 1, "legType": 1, "selfLegType": 9})
        self.assertEqual(outgoing.to_json(), {
            "direction": "outgoing", "recordId": 975, "gcid": "ABC12-00-0000D-3BB",
            "disconnect": 1503258153, "callingPartyNo": "+15555550100",
            "originalCalledPartyNo": "+15555550199", "callType": 1, "legType": 1,
            "selfLegType": 1})

    def test_json_key_order(self) -> None:
        """Same order as the original's output (§6.4)."""
        missed = read(messages.CallLogBlock, CALLLOGINFO).entries[0]
        self.assertEqual(
            json.dumps(missed.to_json(), separators=(",", ":")),
            '{"missed":true,"direction":"incoming","recordId":973,"gcid":"ABC12-00-0000D-3B9",'
            '"connect":1503223469,"disconnect":1503223472,"callingPartyNo":"3044",'
            '"originalCalledPartyNo":"3095","firstName":"Other","lastName":"User","ext":"3044",'
            '"callType":1,"legType":1,"selfLegType":9}')

    def test_json_of_empty_entry_keeps_identity(self) -> None:
        self.assertEqual(messages.CallInfo().to_json(), {
            "direction": "", "recordId": 0, "gcid": "", "callingPartyNo": "",
            "originalCalledPartyNo": ""})

    def test_empty_block(self) -> None:
        self.assertEqual(messages.parse_event(parse(b"<callloginfo/>")),
                         messages.CallLogBlock(entries=()))

    def test_missed_outside_parse_bool(self) -> None:
        error = self.assertRaises(XMLError, read, messages.CallLogBlock,
                                  b'<callloginfo><callinfo missed="yes"/></callloginfo>')
        self.assertIn("missed", str(error))

    def test_parse_bool_spellings(self) -> None:
        for spelling, expected in [("1", True), ("T", True), ("TRUE", True), ("0", False),
                                   ("f", False), ("False", False)]:
            element = parse(b'<callinfo missed="%s"/>' % spelling.encode())
            self.assertEqual(messages.CallInfo.from_xml(element).missed, expected, spelling)

    def test_bad_record_id(self) -> None:
        error = self.assertRaises(
            XMLError, read, messages.CallLogBlock,
            b"<callloginfo><callinfo><record_id>9x</record_id></callinfo></callloginfo>")
        self.assertIn("record_id", str(error))

    def test_integer_spellings(self) -> None:
        """What int() reads, around white space included; empty is zero."""
        for spelling, expected in [("42", 42), (" 42\n", 42), ("+7", 7), ("-3", -3),
                                   ("", 0), ("  ", 0)]:
            element = parse(b"<callinfo><record_id>%s</record_id></callinfo>"
                            % spelling.encode())
            self.assertEqual(messages.CallInfo.from_xml(element).record_id, expected, spelling)

    def test_integer_too_long_is_an_xml_error(self) -> None:
        """Over int()'s 4,300 digits: the field's XMLError, as for any other bad number."""
        error = self.assertRaises(
            XMLError, read, messages.CallLogBlock,
            b"<callloginfo><callinfo><record_id>%s</record_id></callinfo></callloginfo>"
            % (b"9" * 5000))
        self.assertIn("record_id", str(error))

    def test_first_of_repeated_elements_wins(self) -> None:
        """Whatever the spelling of the repeats; an empty element reads as a missing one."""
        entry = messages.CallInfo.from_xml(parse(
            f'<callinfo xmlns:c="{ECMA_CSTA_NS}"><c:gcid>A</c:gcid><gcid>B</gcid>'
            "<record_id>7</record_id><record_id>8</record_id><firstName/>"
            "<callType></callType></callinfo>".encode()))
        self.assertEqual((entry.gcid, entry.record_id, entry.first_name, entry.call_type),
                         ("A", 7, "", 0))


@attrs.frozen
class Lengths(XMLRecord):
    """A record whose element ``duration`` is read by a field of its own and as one spelling
    of another."""

    duration: int = integer("duration")
    length: int = integer("Duration", "duration")


@attrs.frozen
class Devices(XMLRecord):
    """Two references inside elements of their own (read in the pass over the children), and
    two that share an element (the second read by a search)."""

    calling: str = string("callingDevice/deviceIdentifier")
    called: str = string("calledDevice/deviceIdentifier")
    party: str = string("party/id")
    party_name: str = string("party/name")


class RecordReadingTests(SynchronousTestCase):
    def test_an_element_read_by_two_fields(self) -> None:
        self.assertEqual(Lengths.from_xml(parse(b"<x><duration>5</duration>"
                                                b"<Duration>7</Duration></x>")), Lengths(5, 7))
        self.assertEqual(Lengths.from_xml(parse(b"<x><duration>5</duration></x>")),
                         Lengths(5, 5))
        self.assertEqual(Lengths.from_xml(parse(
            f'<x xmlns="{ECMA_CSTA_NS}"><duration>5</duration></x>'.encode())), Lengths(5, 5))


    def test_an_element_inside_a_child(self) -> None:
        """As a one-element field is read: whatever its namespace, the first present in
        document order (a first ``callingDevice`` without one does not hide a later one),
        empty when absent."""
        element = parse(
            f'<x xmlns:c="{ECMA_CSTA_NS}"><callingDevice><other>9</other></callingDevice>'
            "<c:callingDevice><!-- a comment --><c:deviceIdentifier> 3001 </c:deviceIdentifier>"
            "</c:callingDevice><callingDevice><deviceIdentifier>3009</deviceIdentifier>"
            "</callingDevice><party><id>7</id><name>Pat</name></party></x>".encode())
        self.assertEqual(Devices.from_xml(element), Devices("3001", "", "7", "Pat"))


class CallControlTests(SynchronousTestCase):
    def test_make_call(self) -> None:
        result = read(messages.MakeCallResult, MAKE_CALL_RESPONSE)
        self.assertEqual(result, messages.MakeCallResult(call_id=25, device_id="3095",
                                                         called="1099"))
        self.assertEqual(result.to_json(),
                         {"callId": 25, "deviceId": "3095", "called": "1099"})

    def test_make_call_bad_call_id(self) -> None:
        self.assertRaises(XMLError, read, messages.MakeCallResult,
                          b"<MakeCallResponse><callingDevice><callID>a</callID></callingDevice>"
                          b"</MakeCallResponse>")

    def test_monitor_started(self) -> None:
        self.assertEqual(read(messages.MonitorStarted, MONITOR_START_RESPONSE),
                         messages.MonitorStarted(cross_ref_id=12))

    def test_monitor_started_empty(self) -> None:
        self.assertEqual(read(messages.MonitorStarted, b"<MonitorStartResponse/>"),
                         messages.MonitorStarted(cross_ref_id=0))


class DeliveredTests(SynchronousTestCase):
    def test_fields(self) -> None:
        self.assertEqual(read(events.Delivered, DELIVERED), events.Delivered(
            monitor_cross_ref_id=12, call_id=21, device_id="3095",
            global_call_id="1234567890123456789", cause="normal", alerting_device="3095",
            alerting_display_name="Test User", network_calling_device="3044",
            calling_device="3044", calling_display_name="Other User", called_device="3095",
            last_redirection_device="3044", local_connection_info="alerting", cmds_allowed=0,
            call_type_flags=170917889, cad=(("Account", "string", "42"),)))

    def test_push_payload(self) -> None:
        """Exactly the §6.5 sample."""
        delivered = read(events.Delivered, DELIVERED)
        self.assertEqual(delivered.push_payload(1501101426), {
            "callId": 21, "deviceId": "3095", "globalCallId": "1234567890123456789",
            "alertingDevice": "3095", "callingDevice": "3044", "calledDevice": "3095",
            "lastRedirectionDevice": "3044", "localConnectionInfo": "alerting",
            "cause": "normal", "callTypeFlags": 170917889, "time": 1501101426})

    def test_push_payload_bytes(self) -> None:
        """Key order too: the original sent these exact bytes to APNs and FCM."""
        payload = read(events.Delivered, DELIVERED).push_payload(1501101426)
        self.assertEqual(
            json.dumps(payload, separators=(",", ":")),
            '{"callId":21,"deviceId":"3095","globalCallId":"1234567890123456789",'
            '"alertingDevice":"3095","callingDevice":"3044","calledDevice":"3095",'
            '"lastRedirectionDevice":"3044","localConnectionInfo":"alerting","cause":"normal",'
            '"callTypeFlags":170917889,"time":1501101426}')

    def test_push_payload_without_flags(self) -> None:
        self.assertEqual(events.Delivered(call_id=3).push_payload(7), {
            "callId": 3, "deviceId": "", "globalCallId": "", "alertingDevice": "",
            "callingDevice": "", "calledDevice": "", "lastRedirectionDevice": "",
            "localConnectionInfo": "", "cause": "", "time": 7})

    def test_global_call_id_stays_a_string(self) -> None:
        sample = DELIVERED.replace(b"1234567890123456789", b"ABC12-00-0000D-3C1")
        delivered = read(events.Delivered, sample)
        self.assertEqual(delivered.global_call_id, "ABC12-00-0000D-3C1")
        long_id = DELIVERED.replace(b"1234567890123456789", b"00018446744073709551616")
        self.assertEqual(read(events.Delivered, long_id).global_call_id,
                         "00018446744073709551616")

    def test_several_cad(self) -> None:
        sample = (b'<DeliveredEvent><cad name="a" type="string">1</cad><cad name="b">x y </cad>'
                  b"</DeliveredEvent>")
        self.assertEqual(read(events.Delivered, sample).cad,
                         (("a", "string", "1"), ("b", "", "x y")))

    def test_missing_fields(self) -> None:
        self.assertEqual(read(events.Delivered, b"<DeliveredEvent/>"), events.Delivered())
        self.assertEqual(events.Delivered().call_id, 0)

    def test_unknown_elements_ignored(self) -> None:
        sample = DELIVERED.replace(b"<cause>", b"<futureThing a='1'><x/></futureThing><cause>")
        self.assertEqual(read(events.Delivered, sample), read(events.Delivered, DELIVERED))

    def test_bad_call_id(self) -> None:
        error = self.assertRaises(XMLError, read, events.Delivered,
                                  DELIVERED.replace(b"<callID>21", b"<callID>twenty-one"))
        self.assertIn("callID", str(error))

    def test_bad_monitor(self) -> None:
        self.assertRaises(XMLError, read, events.Delivered,
                          DELIVERED.replace(b">12<", b">1.5<"))

    def test_bad_flags(self) -> None:
        self.assertRaises(XMLError, read, events.Delivered,
                          DELIVERED.replace(b">170917889<", b">0x10<"))


class CallEventTests(SynchronousTestCase):
    def test_established(self) -> None:
        self.assertEqual(messages.parse_event(parse(ESTABLISHED)), events.Established(
            monitor_cross_ref_id=12, call_id=21, device_id="3095",
            global_call_id="1234567890123456789", cause="normal", answering_device="3095",
            answering_display_name="Test User", calling_device="3044",
            calling_display_name="Other User", called_device="3095"))

    def test_cleared(self) -> None:
        self.assertEqual(messages.parse_event(parse(CLEARED)), events.ConnectionCleared(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", cause="normalClearing",
            releasing_device="3044"))

    def test_connection_state_of_established_cleared_and_diverted(self) -> None:
        """``localConnectionInfo``, which the call state needs, on the events that lacked it."""
        for kind, sample in ((events.Established, ESTABLISHED), (events.ConnectionCleared, CLEARED),
                             (events.Diverted, b"<DivertedEvent></DivertedEvent>")):
            root = sample.rsplit(b"</", 1)
            element = read(kind, root[0] + b"<localConnectionInfo>connected"
                           b"</localConnectionInfo></" + root[1])
            self.assertEqual(element.local_connection_info, "connected", kind)

    def test_held(self) -> None:
        self.assertEqual(messages.parse_event(parse(HELD)), events.Held(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", cause="normal",
            holding_device="3095", local_connection_info="hold"))

    def test_retrieved(self) -> None:
        self.assertEqual(messages.parse_event(parse(RETRIEVED)), events.Retrieved(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", cause="normal",
            retrieving_device="3095", local_connection_info="connected"))

    def test_originated(self) -> None:
        self.assertEqual(messages.parse_event(parse(ORIGINATED)), events.Originated(
            monitor_cross_ref_id=12, call_id=25, device_id="3095", cause="normal",
            calling_device="3095", called_device="1099", local_connection_info="connected"))

    def test_diverted(self) -> None:
        sample = (b"<DivertedEvent><monitorCrossRefID>12</monitorCrossRefID><connection>"
                  b"<callID>21</callID><deviceID>3095</deviceID></connection><divertingDevice>"
                  b"<deviceIdentifier>3095</deviceIdentifier></divertingDevice><newDestination>"
                  b"<deviceIdentifier>3044</deviceIdentifier></newDestination>"
                  b"<cmdsAllowed>5</cmdsAllowed><cause>redirected</cause></DivertedEvent>")
        self.assertEqual(messages.parse_event(parse(sample)), events.Diverted(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", cause="redirected",
            diverting_device="3095", new_destination="3044", cmds_allowed=5))

    def test_service_initiated(self) -> None:
        sample = (b"<ServiceInitiatedEvent><monitorCrossRefID>12</monitorCrossRefID>"
                  b"<initiatedConnection><callID>30</callID><deviceID>3095</deviceID>"
                  b"</initiatedConnection><initiatingDevice><deviceIdentifier>3095"
                  b"</deviceIdentifier></initiatingDevice><localConnectionInfo>initiated"
                  b"</localConnectionInfo><cause>newCall</cause></ServiceInitiatedEvent>")
        self.assertEqual(messages.parse_event(parse(sample)), events.ServiceInitiated(
            monitor_cross_ref_id=12, call_id=30, device_id="3095", cause="newCall",
            initiating_device="3095", local_connection_info="initiated"))

    def test_network_reached(self) -> None:
        sample = (b"<NetworkReachedEvent><monitorCrossRefID>12</monitorCrossRefID>"
                  b"<outboundConnection><callID>30</callID><deviceID>T1</deviceID>"
                  b"</outboundConnection><networkInterfaceUsed><deviceIdentifier>T1"
                  b"</deviceIdentifier></networkInterfaceUsed><callingDevice><deviceIdentifier>"
                  b"3095</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>"
                  b"+15555550100</deviceIdentifier></calledDevice></NetworkReachedEvent>")
        self.assertEqual(messages.parse_event(parse(sample)), events.NetworkReached(
            monitor_cross_ref_id=12, call_id=30, device_id="T1", network_interface_used="T1",
            calling_device="3095", called_device="+15555550100"))

    def test_failed(self) -> None:
        sample = (b"<FailedEvent><monitorCrossRefID>12</monitorCrossRefID><failedConnection>"
                  b"<callID>30</callID><deviceID>3095</deviceID></failedConnection>"
                  b"<calledDevice><deviceIdentifier>1099</deviceIdentifier></calledDevice>"
                  b"<cause>busy</cause></FailedEvent>")
        self.assertEqual(messages.parse_event(parse(sample)), events.Failed(
            monitor_cross_ref_id=12, call_id=30, device_id="3095", cause="busy",
            called_device="1099"))

    def test_transferred_both_spellings(self) -> None:
        body = (b"<monitorCrossRefID>12</monitorCrossRefID><primaryOldCall><callID>21</callID>"
                b"<deviceID>3095</deviceID></primaryOldCall><transferringDevice>"
                b"<deviceIdentifier>3095</deviceIdentifier></transferringDevice>"
                b"<transferredToDevice><deviceIdentifier>3044</deviceIdentifier>"
                b"</transferredToDevice><cause>transfer</cause>")
        expected = events.Transferred(monitor_cross_ref_id=12, call_id=21, device_id="3095",
                                      cause="transfer", transferring_device="3095",
                                      transferred_to_device="3044")
        for root in (b"TransferedEvent", b"TransferredEvent"):
            sample = b"<%s>%s</%s>" % (root, body, root)
            self.assertEqual(messages.parse_event(parse(sample)), expected, root)

    def test_connection_of_another_event_not_read(self) -> None:
        """Each event reads its own connection element, not a ``connection`` beside it."""
        sample = (b"<HeldEvent><connection><callID>99</callID></connection><heldConnection>"
                  b"<callID>21</callID></heldConnection></HeldEvent>")
        self.assertEqual(read(events.Held, sample).call_id, 21)

    def test_recording_state_in_connection(self) -> None:
        self.assertEqual(messages.parse_event(parse(RECORDING_STATE)), events.RecordingState(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", rec_is_available=True,
            rec_is_active=False))

    def test_recording_state_at_root(self) -> None:
        """mxproxy read ``callID``/``deviceID`` directly under the root."""
        sample = (b"<RecordingStateEvent><monitorCrossRefID>12</monitorCrossRefID><callID>21"
                  b"</callID><deviceID>3095</deviceID><RecIsAvailable>true</RecIsAvailable>"
                  b"<RecIsActive>true</RecIsActive></RecordingStateEvent>")
        self.assertEqual(messages.parse_event(parse(sample)), events.RecordingState(
            monitor_cross_ref_id=12, call_id=21, device_id="3095", rec_is_available=True,
            rec_is_active=True))

    def test_recording_state_bad_boolean(self) -> None:
        error = self.assertRaises(XMLError, messages.parse_event,
                                  parse(RECORDING_STATE.replace(b">false<", b">no<")))
        self.assertIn("RecIsActive", str(error))

    def test_call_park_info(self) -> None:
        self.assertEqual(messages.parse_event(parse(CALL_PARK_INFO)),
                         events.CallParkInfo(monitor_cross_ref_id=12, park_id="7"))


class VoiceMailTests(SynchronousTestCase):
    def test_list(self) -> None:
        self.assertEqual(read(messages.VoiceMailList, MAIL_LIST), messages.VoiceMailList(
            row_count=2,
            mails=(
                messages.VoiceMail(
                    mail_id="81", sender="3044", from_name="Other User",
                    caller_name="Other User", to="3095", owner_type="user",
                    received=1502210275, duration=7, read=False, note="",
                    media_type="VoiceMail"),
                messages.VoiceMail(
                    mail_id="82", sender="+15555550177", to="3095", owner_type="user",
                    received=1502213652, duration=29, read=True, note="call back"),
            )))

    def test_json(self) -> None:
        first, second = read(messages.VoiceMailList, MAIL_LIST).mails
        self.assertEqual(first.to_json(), {
            "id": "81", "from": "3044", "fromName": "Other User", "callerName": "Other User",
            "to": "3095", "ownerType": "user", "received": 1502210275, "duration": 7,
            "read": False})
        self.assertEqual(second.to_json(), {
            "id": "82", "from": "+15555550177", "to": "3095", "ownerType": "user",
            "received": 1502213652, "duration": 29, "read": True, "note": "call back"})

    def test_json_always_has_the_core_keys(self) -> None:
        self.assertEqual(messages.VoiceMail().to_json(), {
            "id": "", "from": "", "to": "", "received": 0, "duration": 0, "read": False})

    def test_any_root_and_no_row_count(self) -> None:
        sample = b'<whatever><mail from="1"><mailId>5</mailId></mail><other/></whatever>'
        self.assertEqual(read(messages.VoiceMailList, sample), messages.VoiceMailList(
            mails=(messages.VoiceMail(mail_id="5", sender="1"),), row_count=0))

    def test_empty_list(self) -> None:
        self.assertEqual(read(messages.VoiceMailList, b"<MailGetListIncomingResponse/>").mails,
                         ())

    def test_bad_read_flag(self) -> None:
        self.assertRaises(XMLError, read, messages.VoiceMailList,
                          MAIL_LIST.replace(b"<read>true", b"<read>yes"))

    def test_bad_duration(self) -> None:
        self.assertRaises(XMLError, read, messages.VoiceMailList,
                          MAIL_LIST.replace(b"<duration>7", b"<duration>7s"))


class ChunkTests(SynchronousTestCase):
    def test_chunk(self) -> None:
        self.assertEqual(read(messages.Chunk, CHUNK), messages.Chunk(
            mail_id="81", number=1, total=3, size=32768, file_format="wav",
            document_name="u00043884850000000001/m0081.wav", content=WAV_HEADER))

    def test_content_out_of_repr(self) -> None:
        self.assertNotIn("RIFF", repr(read(messages.Chunk, CHUNK)))

    def test_wrapped_base64(self) -> None:
        wrapped = CHUNK.replace(b"UklGRiQAAABX", b"UklGRiQA\r\nAABX\n ").replace(b"AAA=", b"\tAAA=")
        self.assertEqual(read(messages.Chunk, wrapped).content,
                         WAV_HEADER)

    def test_root_name_not_checked_and_size_optional(self) -> None:
        sample = (b'<x mailId="81" chunkNumber="3" totalChunks="3">'
                  b"<mediaContent>AAEC</mediaContent></x>")
        chunk = read(messages.Chunk, sample)
        self.assertEqual(chunk, messages.Chunk(mail_id="81", number=3, total=3, size=0,
                                               content=b"\x00\x01\x02"))

    def test_empty_content(self) -> None:
        self.assertEqual(read(messages.Chunk, b"<c><mediaContent/></c>").content,
                         b"")

    def test_invalid_base64(self) -> None:
        for bad in (b"UklGR!Q=", b"UklGR", b"AAA=AAAA"):
            error = self.assertRaises(
                XMLError, read, messages.Chunk, b"<c><mediaContent>%s</mediaContent></c>" % bad)
            self.assertIn("mediaContent", str(error))

    def test_bad_chunk_number(self) -> None:
        self.assertRaises(XMLError, read, messages.Chunk, b'<c chunkNumber="first"/>')


class MailReadyTests(SynchronousTestCase):
    expected = events.MailIncomingReady(
        monitor_cross_ref_id=12, sender="3044", from_name="Other User", caller_name="Other User",
        to="3095", private="0", urgent="0", owner_id="43884850000000001", owner_type="user",
        mail_id="83", media_type="VoiceMail", gcid="ABC12-00-0000D-3C1", received=1503300000,
        duration=12, read=False, file_format="wav", note="")

    def test_sample(self) -> None:
        self.assertEqual(messages.parse_event(parse(MAIL_READY)), self.expected)

    def test_owner_id_element_and_capital_duration(self) -> None:
        """The shape before ``870e6e5`` and ``e2a41f9``."""
        old = (MAIL_READY.replace(b' ownerId="43884850000000001"', b"")
               .replace(b"<duration>12</duration>",
                        b"<ownerId>43884850000000001</ownerId><Duration>12</Duration>"))
        self.assertNotIn(b'ownerId="', old)
        self.assertEqual(messages.parse_event(parse(old)), self.expected)

    def test_bad_received(self) -> None:
        self.assertRaises(XMLError, messages.parse_event,
                          parse(MAIL_READY.replace(b">1503300000<", b">yesterday<")))


class SessionEventTests(SynchronousTestCase):
    def test_logout(self) -> None:
        self.assertEqual(messages.parse_event(parse(b'<Logout mode="forced"/>')),
                         events.Logout(mode="forced"))
        self.assertEqual(messages.parse_event(parse(b"<Logout/>")), events.Logout(mode=""))

    def test_presence_after_login(self) -> None:
        self.assertEqual(messages.parse_event(parse(PRESENCE_AFTER_LOGIN)),
                         events.Presence(sender="0", status="Available", mx_status="", note=""))

    def test_presence_with_note(self) -> None:
        sample = (b'<presence from="43884850000000002" status="Away" mxStatus="USER_ON_CALL_NO_'
                  b'MORE_LINES"><presenceNote>back at 3</presenceNote></presence>')
        self.assertEqual(messages.parse_event(parse(sample)), events.Presence(
            sender="43884850000000002", status="Away", mx_status="USER_ON_CALL_NO_MORE_LINES",
            note="back at 3"))


class ErrorTextTests(SynchronousTestCase):
    def test_sample(self) -> None:
        self.assertEqual(messages.csta_error_text(parse(CSTA_ERROR)), "URM Denied")

    def test_last_child_wins(self) -> None:
        element = parse(b"<CSTAErrorCode><operation>invalidCallID</operation>"
                        b"<privateErrorCode>URM Denied</privateErrorCode></CSTAErrorCode>")
        self.assertEqual(messages.csta_error_text(element), "URM Denied")

    def test_root_text_without_children(self) -> None:
        self.assertEqual(messages.csta_error_text(parse(b"<CSTAErrorCode> busy </CSTAErrorCode>")),
                         "busy")

    def test_nothing_to_say(self) -> None:
        self.assertEqual(messages.csta_error_text(parse(b"<CSTAErrorCode/>")), "")


class CallControlAnswerTests(SynchronousTestCase):
    def test_assign_device_info(self) -> None:
        sample = b"<AssignDeviceInfo><deviceID>alice-softphone</deviceID></AssignDeviceInfo>"
        self.assertEqual(messages.parse_event(parse(sample)),
                         events.AssignDeviceInfo(device_id="alice-softphone"))
        self.assertEqual(messages.parse_event(parse(prefixed(sample))),
                         events.AssignDeviceInfo(device_id="alice-softphone"))

    def test_transfer_result(self) -> None:
        sample = (b"<SingleStepTransferCallResponse><transferredCall><callID>22</callID>"
                  b"<deviceID>3044</deviceID></transferredCall></SingleStepTransferCallResponse>")
        self.assertEqual(read(messages.TransferResult, sample),
                         messages.TransferResult(call_id=22, device_id="3044"))
        self.assertEqual(read(messages.TransferResult, b"<SingleStepTransferCallResponse/>"),
                         messages.TransferResult())


class ServiceListTests(SynchronousTestCase):
    SAMPLE = (b"<GetServiceListResponse><Service><serviceId>3458764513956069001</serviceId>"
              b"<serviceName>voicemail</serviceName><serviceType>VM</serviceType>"
              b"<extension>*86</extension><homeSystem>43884850000000099</homeSystem></Service>"
              b"<Service><serviceId>3458764513956069002</serviceId><serviceName>Auto Attendant"
              b"</serviceName><serviceType>AA</serviceType><extension>3900</extension></Service>"
              b"</GetServiceListResponse>")

    def test_sample(self) -> None:
        """§4.4, with a second service lacking ``homeSystem``; uint64 ids stay strings."""
        voicemail, attendant = read(messages.ServiceList, self.SAMPLE).services
        self.assertEqual(voicemail, messages.Service(
            service_id="3458764513956069001", name="voicemail", service_type="VM", ext="*86",
            home_system="43884850000000099"))
        self.assertEqual(attendant.home_system, "")
        self.assertEqual(voicemail.to_json(), {"id": "3458764513956069001", "name": "voicemail",
                                               "type": "VM", "ext": "*86"})

    def test_namespaced_and_empty(self) -> None:
        self.assertEqual(len(read(messages.ServiceList, prefixed(self.SAMPLE)).services), 2)
        self.assertEqual(read(messages.ServiceList, b"<GetServiceListResponse/>").services, ())


class CSTAErrorKindTests(SynchronousTestCase):
    """How a refusal is typed: by the ECMA-323 values it carries, with the MX's text."""

    def kind(self, body: bytes) -> tuple[type, str]:
        error = messages.csta_error(parse(b"<CSTAErrorCode>" + body + b"</CSTAErrorCode>"))
        return type(error), error.text

    def test_unknown_call(self) -> None:
        self.assertEqual(self.kind(b"<operation>invalidCallID</operation>"),
                         (errors.UnknownCall, "invalidCallID"))
        self.assertEqual(self.kind(b"<operation>invalidCallID</operation>"
                                   b"<privateErrorCode>no call 21</privateErrorCode>"),
                         (errors.UnknownCall, "no call 21"))

    def test_any_state_incompatibility_is_a_call_state_error(self) -> None:
        for value in (b"noCallToAnswer", b"noHeldCall", b"somethingNew", b""):
            self.assertEqual(
                self.kind(b"<stateIncompatibility>" + value + b"</stateIncompatibility>"
                          b"<privateErrorCode>call 21 is not ringing</privateErrorCode>"),
                (errors.CallStateError, "call 21 is not ringing"), value)

    def test_state_values_count_wherever_they_are(self) -> None:
        """``invalidConnectionID`` is an operation error: the call goes on, not at that device."""
        self.assertEqual(self.kind(b"<operation>invalidConnectionID</operation>"),
                         (errors.CallStateError, "invalidConnectionID"))
        self.assertEqual(self.kind(b"<operation>noActiveCall</operation>"),
                         (errors.CallStateError, "noActiveCall"))

    def test_namespaced(self) -> None:
        error = messages.csta_error(parse(prefixed(
            b"<CSTAErrorCode><stateIncompatibility>noHeldCall</stateIncompatibility>"
            b"</CSTAErrorCode>")))
        self.assertIsInstance(error, errors.CallStateError)

    def test_the_rest_is_a_plain_csta_error(self) -> None:
        for body, text in ((b"<privateErrorCode>URM Denied</privateErrorCode>", "URM Denied"),
                           (b"<operation>invalidDeviceID</operation>", "invalidDeviceID"),
                           (b"", "")):
            self.assertEqual(self.kind(body), (errors.CSTAError, text))


class RegistryTests(SynchronousTestCase):
    def test_names(self) -> None:
        self.assertEqual(dict(messages.EVENTS), {
            "ablist": messages.AddressBookPage,
            "callloginfo": messages.CallLogBlock,
            "AbAddUserEvent": messages.AbUpdate,
            "AbUpdateUserEvent": messages.AbUpdate,
            "AbDeleteUserEvent": messages.AbDelete,
            "DeliveredEvent": events.Delivered,
            "EstablishedEvent": events.Established,
            "OriginatedEvent": events.Originated,
            "ConnectionClearedEvent": events.ConnectionCleared,
            "HeldEvent": events.Held,
            "RetrievedEvent": events.Retrieved,
            "DivertedEvent": events.Diverted,
            "ServiceInitiatedEvent": events.ServiceInitiated,
            "NetworkReachedEvent": events.NetworkReached,
            "FailedEvent": events.Failed,
            "TransferedEvent": events.Transferred,
            "TransferredEvent": events.Transferred,
            "callParkInfo": events.CallParkInfo,
            "RecordingStateEvent": events.RecordingState,
            "MailIncomingReadyEvent": events.MailIncomingReady,
            "Logout": events.Logout,
            "presence": events.Presence,
            "AssignDeviceInfo": events.AssignDeviceInfo,
        })

    def test_read_only(self) -> None:
        events_table: Any = messages.EVENTS
        self.assertRaises(TypeError, operator.setitem, events_table, "x", events.Logout)

    def test_samples_dispatch(self) -> None:
        cases: list[tuple[bytes, type[XMLRecord]]] = [
            (ABLIST, messages.AddressBookPage), (CALLLOGINFO, messages.CallLogBlock),
            (DELIVERED, events.Delivered), (MAIL_READY, events.MailIncomingReady)]
        for sample, kind in cases:
            event = messages.parse_event(parse(prefixed(sample)))
            self.assertEqual(event, kind.from_xml(parse(sample)))

    def test_unknown_names(self) -> None:
        for sample in (b"<ConfAddEvent/>", b"<MakeCallResponse/>", b"<logout/>"):
            self.assertIsNone(messages.parse_event(parse(sample)))

    def test_errors_propagate(self) -> None:
        self.assertRaises(XMLError, messages.parse_event,
                          parse(b"<ablist size='x'/>"))

