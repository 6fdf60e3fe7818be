"""The MX simulator, driven with raw frames as a client would send them.

Most tests talk to a ``Session`` over an in-memory transport with a ``task.Clock``; the
loopback tests use real TCP, TLS and HTTP on ephemeral ports.
"""

from __future__ import annotations

import base64
import io
import json
import re
import wave
from typing import Any

from cryptography.hazmat.primitives import hashes
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from mxproxy.csta.frame import EVENT_ID, Frame, FrameDecoder, encode
from mxproxy.csta.messages import LoginResponse
from mxproxy.csta.xml import ECMA_CSTA_NS, Element, attr, find, findall, local_name, parse, text
from mxproxy.testing import certs
from mxproxy.testing.mxsim import (
    PBX,
    Contact,
    Session,
    SessionFactory,
    UnknownObject,
    demo_pbx,
    listen,
    listen_control,
    password_hash,
)
from mxproxy.testing.mxsim.model import Service
from mxproxy.testing.mxsim.pbx import SYSTEM_JID
from mxproxy.testing.mxsim.service import SimulatorService, makeService

NOW = 1_700_000_000


def login_xml(name: str, secret: str, kind: str = "User", extra: str = "") -> str:
    return (f'<loginRequest type="{kind}"{extra}><userName>{name}</userName>'
            f"<pwd>{secret}</pwd></loginRequest>")


def hashed(password: str) -> str:
    """The ``<pwd>`` text as Go sends it: hash plus an escaped LF."""
    return password_hash(password) + "&#xA;"


def monitor_xml(device: str) -> str:
    return f"<MonitorStart><monitorObject><deviceObject>{device}</deviceObject></monitorObject>" \
           "</MonitorStart>"


def port_number(port: IListeningPort) -> int:
    host = port.getHost()
    assert isinstance(host, IPv4Address)
    return host.port


def fetch_pages(client: WireClient) -> tuple[list[str], int]:
    """The whole address book the robust way (count entries, not pages); returns jids, requests."""
    jids: list[str] = []
    requests = 0
    while True:
        requests += 1
        (invoke_id, page), = client.request(
            f'<iq type="get" id="addressbook" index="{requests - 1}"></iq>')
        assert invoke_id == EVENT_ID and local_name(page) == "ablist"
        entries = findall(page, "abentry")
        jids += [attr(e, "jid") for e in entries]
        if not entries or len(jids) >= int(attr(page, "size")):
            return jids, requests


class WireClient:
    """A client writing raw frames into an in-memory :class:`Session` and decoding its output."""

    def __init__(self, pbx: PBX) -> None:
        self.session: Session = SessionFactory(pbx).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = self.session
        self.session.makeConnection(self.transport)
        self.decoder = FrameDecoder()
        self.last_id = 0

    @property
    def connected(self) -> bool:
        return bool(self.transport.connected)

    def send(self, body: str | bytes, invoke_id: int | None = None) -> int:
        if invoke_id is None:
            self.last_id += 1
            invoke_id = self.last_id
        self.session.dataReceived(encode(invoke_id, body.encode() if isinstance(body, str)
                                         else body))
        return invoke_id

    def frames(self) -> list[Frame]:
        """Frames written since the last call."""
        data = self.transport.value()
        self.transport.clear()
        frames = self.decoder.feed(data)
        assert self.decoder.error is None, self.decoder.error
        return frames

    def messages(self) -> list[tuple[int, Element]]:
        return [(frame.invoke_id, parse(frame.body)) for frame in self.frames()]

    def request(self, body: str) -> list[tuple[int, Element]]:
        self.send(body)
        return self.messages()

    def reply(self, body: str) -> Element:
        """The one same-id answer to ``body`` (events it caused are dropped)."""
        invoke_id = self.send(body)
        answers = [element for ident, element in self.messages() if ident == invoke_id]
        assert len(answers) == 1, answers
        return answers[0]

    def login(self, name: str, password: str, kind: str = "User") -> WireClient:
        answer = self.reply(login_xml(name, hashed(password), kind))
        assert local_name(answer) == "loginResponce", answer
        return self


class SimulatorTestCase(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.pbx = PBX("SIM42", clock=self.clock)
        self.pbx.add_server_login("cti", "cti-pw")
        self.alice = self.pbx.add_user("alice", "alice-pw", "3001", first_name="Alice",
                                       last_name="Johnson")
        self.bob = self.pbx.add_user("bob", "bob-pw", "3002", first_name="Bob",
                                     last_name="Williams")

    def client(self, login: str | None = None, password: str = "") -> WireClient:
        client = WireClient(self.pbx)
        if login == "cti":
            client.login("cti", "cti-pw", "Server")
        elif login is not None:
            client.login(login, password or f"{login}-pw")
            client.messages()
        return client

    def monitored(self, login: str, device: str) -> tuple[WireClient, int]:
        client = self.client(login)
        answer = client.reply(monitor_xml(device))
        return client, int(text(answer, "monitorCrossRefID"))


class LoginTests(SimulatorTestCase):
    def test_user_login_answers_with_the_request_id_then_own_presence(self) -> None:
        client = WireClient(self.pbx)
        client.send(login_xml("alice", hashed("alice-pw")), invoke_id=7)
        (reply_id, reply), (event_id, presence) = client.messages()
        self.assertEqual((reply_id, local_name(reply)), (7, "loginResponce"))
        self.assertEqual(dict(reply.attrib), {
            "Code": "0", "sn": "SIM42", "ext": "3001", "userId": self.alice.jid,
            "softPhonePwd": self.alice.soft_phone_pwd, "apiversion": "11", "mxCapab": "0",
            "maxMsgFileSizeMb": "10"})
        self.assertEqual(reply.text, "Login OK")
        self.assertEqual((event_id, local_name(presence)), (EVENT_ID, "presence"))
        self.assertEqual(dict(presence.attrib),
                         {"from": "0", "status": "Available", "mxStatus": ""})
        self.assertEqual((client.session.login, client.session.kind), ("alice", "User"))
        self.assertEqual(self.pbx.logins["alice"], 1)

    def test_login_reply_reads_as_the_proxy_expects(self) -> None:
        """mx-protocol.md §2.2: the capability string and the message size limit too."""
        reply = WireClient(self.pbx).reply(login_xml("alice", hashed("alice-pw")))
        response = LoginResponse.from_xml(reply)
        self.assertEqual((response.ext, response.user_id, response.apiversion),
                         ("3001", self.alice.jid, 11))
        self.assertEqual((response.mx_capab, response.max_msg_file_size_mb), ("0", 10))

    def test_server_login_has_no_extension_and_no_presence(self) -> None:
        client = WireClient(self.pbx)
        client.send(login_xml("cti", hashed("cti-pw"), "Server"))
        (_, reply), = client.messages()
        self.assertEqual((attr(reply, "Code"), attr(reply, "ext"), attr(reply, "userId")),
                         ("0", "", "0"))
        self.assertEqual(client.session.kind, "Server")

    def test_password_line_feed_literal_declaration_and_namespace_are_accepted(self) -> None:
        for body in (
            login_xml("alice", password_hash("alice-pw") + "\n"),
            '<?xml version="1.0" encoding="UTF-8"?>\n' + login_xml("alice", hashed("alice-pw")),
            f'<loginRequest xmlns="{ECMA_CSTA_NS}" type="User"><userName>alice</userName>'
            f'<pwd>{hashed("alice-pw")}</pwd></loginRequest>',
        ):
            reply = WireClient(self.pbx).reply(body)
            self.assertEqual((local_name(reply), attr(reply, "Code")), ("loginResponce", "0"))

    def test_wrong_credentials_fail_with_code_1(self) -> None:
        for body in (login_xml("alice", hashed("nope")), login_xml("nobody", hashed("x")),
                     login_xml("alice", hashed("alice-pw"), "Server"),
                     login_xml("cti", hashed("cti-pw"), "User"),
                     login_xml("alice", "alice-pw")):  # clear text for a hashing account
            client = WireClient(self.pbx)
            reply = client.reply(body)
            self.assertEqual(local_name(reply), "loginFailed")
            self.assertEqual(dict(reply.attrib), {"Code": "1", "sn": "SIM42", "apiversion": "11"})
            self.assertTrue(reply.text)
            self.assertIsNone(client.session.login)
        self.assertEqual(self.pbx.failed_logins["alice"], 3)

    def test_clear_text_only_account_refuses_the_hash_with_code_4(self) -> None:
        self.pbx.add_user("ldap", "Dir-Secret", "3050", clear_text_only=True)
        client = WireClient(self.pbx)
        self.assertEqual(attr(client.reply(login_xml("ldap", hashed("Dir-Secret"))), "Code"), "4")
        self.assertEqual(attr(client.reply(login_xml("ldap", "wrong")), "Code"), "1")
        reply = client.reply(login_xml("ldap", "Dir-Secret"))
        self.assertEqual((local_name(reply), client.session.login), ("loginResponce", "ldap"))

    def test_nothing_but_login_runs_before_login_and_is_still_recorded(self) -> None:
        client = WireClient(self.pbx)
        client.send("<MonitorStartAb/>")
        client.send('<iq type="get" id="addressbook" index="0"/>')
        client.send("<Bogus/>")
        self.assertEqual(client.messages(), [])
        self.assertEqual([c.name for c in client.session.received],
                         ["MonitorStartAb", "iq:addressbook", "Bogus"])
        self.assertFalse(client.session.ab_notify)

    def test_keepalives_are_counted_never_answered(self) -> None:
        client = WireClient(self.pbx)
        client.send("<keepalive />", invoke_id=0)
        client.login("alice", "alice-pw").messages()
        client.send("<keepalive/>", invoke_id=0)
        client.send('<?xml version="1.0" encoding="utf-8"?><keepalive/>', invoke_id=12)
        self.assertEqual(client.messages(), [])
        self.assertEqual((client.session.keepalives, self.pbx.keepalives), (3, 3))
        self.assertTrue(client.connected)

    def test_logout_closes_the_connection(self) -> None:
        client = self.client("alice")
        client.send("<logout/>")
        self.assertEqual(client.messages(), [])
        self.assertFalse(client.connected)
        self.assertEqual(self.pbx.sessions, [])

    def test_forced_login_logs_the_other_session_out(self) -> None:
        old = self.client("alice")
        new = WireClient(self.pbx)
        new.send(login_xml("alice", hashed("alice-pw"), extra=' forced="true"'))
        (event_id, event), = old.messages()
        self.assertEqual((event_id, local_name(event), attr(event, "mode")),
                         (EVENT_ID, "Logout", "forced"))
        self.assertFalse(old.connected)
        self.assertEqual(self.pbx.sessions, [new.session])

    def test_refused_logins_fault(self) -> None:
        self.pbx.faults.refuse_logins = True
        reply = WireClient(self.pbx).reply(login_xml("alice", hashed("alice-pw")))
        self.assertEqual((local_name(reply), attr(reply, "Code")), ("loginFailed", "1"))


class CommandTests(SimulatorTestCase):
    def test_unknown_command_gets_csta_error_with_its_id(self) -> None:
        client = self.client("alice")
        client.send("<Frobnicate></Frobnicate>", invoke_id=42)
        (invoke_id, error), = client.messages()
        self.assertEqual((invoke_id, local_name(error)), (42, "CSTAErrorCode"))
        self.assertEqual(text(error, "operation"), "unknownCommand")

    def test_call_mode_is_recorded_without_reply(self) -> None:
        client = self.client("alice")
        received = self.pbx.wait_for("iq:mode")
        client.send('<iq type="set" id="mode" mode="remote" ringdelay="1" vmdelay="30">'
                    "<address>+15555550100</address></iq>")
        self.assertEqual(client.messages(), [])
        command = self.successResultOf(received)
        self.assertEqual(text(command.element, "address"), "+15555550100")
        self.assertIs(command.session, client.session)

    def test_bad_field_value_gets_csta_error(self) -> None:
        reply = self.client("alice").reply('<iq type="get" id="addressbook" index="x"/>')
        self.assertEqual(local_name(reply), "CSTAErrorCode")
        self.assertIn("index", text(reply, "privateErrorCode"))

    def test_broken_stream_closes_the_connection(self) -> None:
        client = self.client("alice")
        client.session.dataReceived(b"\x00\x00\x00\x03junk")
        self.assertFalse(client.connected)

    def test_unparseable_body_closes_the_connection(self) -> None:
        client = self.client("alice")
        client.send("<MonitorStartAb>")
        self.assertFalse(client.connected)


class AddressBookTests(SimulatorTestCase):
    def fill(self, total: int) -> list[str]:
        """A book of exactly ``total`` entries (the two users included when total >= 2)."""
        for jid in list(self.pbx.contacts)[total:]:
            self.pbx.remove_contact(jid)
        while len(self.pbx.contacts) < total:
            self.pbx.add_contact(Contact("", "First", f"Last{len(self.pbx.contacts)}"))
        return list(self.pbx.contacts)

    def test_pages_cover_the_book_for_each_page_size(self) -> None:
        for page_size in (50, 7):
            for total in (0, 1, 50, 51):
                self.pbx.page_size = page_size
                expected = self.fill(total)
                jids, requests = fetch_pages(self.client("cti"))
                self.assertEqual(jids, expected, (page_size, total))
                self.assertEqual(requests, max(1, -(-total // page_size)), (page_size, total))

    def test_each_change_to_the_book_is_in_the_pages_sent_after_it(self) -> None:
        self.pbx.page_size = 7
        jids = self.fill(20)
        client = self.client("cti")
        self.assertEqual(fetch_pages(client)[0], jids)
        changes = [lambda: self.pbx.update_contact(jids[3], first_name="Renamed"),
                   lambda: self.pbx.add_contact(Contact("", "Added")),
                   lambda: self.pbx.remove_contact(jids[10])]
        for change in changes:
            change()
            pages = [client.request(f'<iq type="get" id="addressbook" index="{index}"/>')[0][1]
                     for index in range(3)]
            self.assertEqual([attr(entry, "jid") for page in pages
                              for entry in findall(page, "abentry")], list(self.pbx.contacts))
            self.assertEqual({attr(page, "size") for page in pages}, {str(len(self.pbx.contacts))})
        (_, page), = client.request('<iq type="get" id="addressbook" index="0"/>')
        self.assertEqual(text(findall(page, "abentry")[3], "firstName"), "Renamed")

    def test_a_page_is_built_once_per_state_of_the_book(self) -> None:
        self.fill(120)
        first = self.pbx.address_book_page(1)
        self.assertIs(self.pbx.address_book_page(1), first)
        self.pbx.page_size = 7
        self.assertNotEqual(self.pbx.address_book_page(1), first)
        self.pbx.page_size = 50
        self.assertIs(self.pbx.address_book_page(1), first)
        self.pbx.update_contact(list(self.pbx.contacts)[0], last_name="Changed")
        self.assertIsNot(self.pbx.address_book_page(1), first)
        self.assertEqual(self.pbx.address_book_page(1), first)  # page 1 itself is unchanged
        # Past the end nothing is kept: a client could ask for any index.
        self.assertIsNot(self.pbx.address_book_page(3), self.pbx.address_book_page(3))

    def test_empty_book_is_one_empty_list(self) -> None:
        self.fill(0)
        (invoke_id, page), = self.client("cti").request(
            '<iq type="get" id="addressbook" index="0"/>')
        self.assertEqual((invoke_id, attr(page, "size"), attr(page, "index"), len(page)),
                         (EVENT_ID, "0", "0", 0))

    def test_page_carries_size_index_and_entry_fields(self) -> None:
        self.pbx.page_size = 1
        self.pbx.update_contact(self.bob.jid, cell_phone="+12125550142", did="+12125550143")
        (_, page), = self.client("cti").request('<iq type="get" id="addressbook" index="1"/>')
        self.assertEqual(dict(page.attrib), {"size": "2", "index": "1"})
        entry, = findall(page, "abentry")
        self.assertEqual(attr(entry, "jid"), self.bob.jid)
        self.assertEqual(
            {child: text(entry, child) for child in ("firstName", "lastName", "businessPhone",
                                                     "cellPhone", "email", "did")},
            {"firstName": "Bob", "lastName": "Williams", "businessPhone": "3002",
             "cellPhone": "+12125550142", "email": "bob@example.invalid",
             "did": "+12125550143"})

    def test_changes_are_pushed_only_while_monitoring(self) -> None:
        watcher, bystander = self.client("cti"), self.client("alice")
        self.pbx.add_contact(Contact("", "Before", "Monitor"))
        self.assertEqual(watcher.messages(), [])
        self.assertEqual(watcher.reply("<MonitorStartAb/>").tag, "MonitorStartAbResponse")
        added = self.pbx.add_contact(Contact("", "New", "Person", "3101"))
        self.pbx.update_contact(added.jid, last_name="Renamed")
        self.pbx.remove_contact(added.jid)
        events = watcher.messages()
        self.assertEqual([(i, local_name(e)) for i, e in events], [
            (EVENT_ID, "AbAddUserEvent"), (EVENT_ID, "AbUpdateUserEvent"),
            (EVENT_ID, "AbDeleteUserEvent")])
        entry = find(events[0][1], "abentry")
        assert entry is not None
        self.assertEqual(attr(entry, "jid"), added.jid)
        self.assertEqual(text(events[1][1], "abentry/lastName"), "Renamed")
        self.assertEqual(text(events[2][1], "userId"), added.jid)
        self.assertEqual(bystander.messages(), [])
        self.assertEqual(watcher.reply("<MonitorStopAb/>").tag, "MonitorStopAbResponse")
        self.pbx.add_contact(Contact("", "After", "Stop"))
        self.assertEqual(watcher.messages(), [])

    def test_ab_notify_login_attribute_subscribes_too(self) -> None:
        client = WireClient(self.pbx)
        client.send(login_xml("alice", hashed("alice-pw"), extra=' abNotify="true"'))
        client.messages()
        self.pbx.remove_user("bob")
        (_, event), = client.messages()
        self.assertEqual((local_name(event), text(event, "userId")),
                         ("AbDeleteUserEvent", self.bob.jid))


class CallLogTests(SimulatorTestCase):
    def fill(self, count: int) -> None:
        for n in range(count):
            self.pbx.add_call_record("alice", direction="incoming", disconnect=NOW - 1000 + n,
                                     calling_party="3002", original_called_party="3001")

    def blocks(self, timestamp: int = -1) -> list[list[int]]:
        messages = self.client("alice").request(
            f'<iq type="get" id="calllog" timestamp="{timestamp}"></iq>')
        self.assertTrue(all(i == EVENT_ID and local_name(e) == "callloginfo"
                            for i, e in messages))
        return [[int(text(info, "record_id")) for info in findall(e, "callinfo")]
                for _, e in messages]

    def test_blocks_of_21_for_each_end_variant(self) -> None:
        expectations = {"short": {0: [], 1: [1], 21: [21], 22: [21, 1], 45: [21, 21, 3]},
                        "empty-terminator": {0: [0], 1: [1], 21: [21, 0], 22: [21, 1],
                                             42: [21, 21, 0]}}
        for variant, cases in expectations.items():
            self.pbx.variants.call_log_end = variant  # type: ignore[assignment]
            for count, sizes in cases.items():
                self.alice.call_log.clear()
                self.fill(count)
                self.assertEqual([len(b) for b in self.blocks()], sizes, (variant, count))

    def test_entries_in_record_order_and_filtered_by_disconnect_time(self) -> None:
        self.fill(25)
        every = sum(self.blocks(), [])
        self.assertEqual(every, sorted(every))
        self.assertEqual(len(every), 25)
        recent = sum(self.blocks(NOW - 1000 + 20), [])
        self.assertEqual(recent, every[20:])

    def test_callinfo_fields(self) -> None:
        self.pbx.add_call_record("alice", direction="incoming", missed=True, disconnect=NOW,
                                 calling_party="3002", original_called_party="3001",
                                 first_name="Bob", extension="3002")
        (_, block), = self.client("alice").request('<iq type="get" id="calllog" timestamp="-1"/>')
        info, = findall(block, "callinfo")
        self.assertEqual((attr(info, "missed"), attr(info, "direction")), ("true", "incoming"))
        self.assertIsNone(find(info, "connectTimestamp"))
        self.assertEqual(text(info, "disconnectTimestamp"), str(NOW))
        self.assertEqual(text(info, "gcid"), f"SIM42-00-0000D-{int(text(info, 'record_id')):X}")
        self.assertEqual(text(info, "callingPartyNo"), "3002")

    def test_server_session_has_no_log(self) -> None:
        self.fill(3)
        self.assertEqual(self.client("cti").request('<iq type="get" id="calllog" timestamp="-1"/>'),
                         [])


class ServiceListTests(SimulatorTestCase):
    def test_services_with_the_request_id_to_users_and_servers(self) -> None:
        for login in ("alice", "cti"):
            client = self.client(login)
            client.send("<GetServiceList/>", invoke_id=17)
            (invoke_id, reply), = client.messages()
            self.assertEqual((invoke_id, local_name(reply)), (17, "GetServiceListResponse"))
            services = [{child.tag: child.text for child in service}
                        for service in findall(reply, "Service")]
            self.assertEqual(services[0], {
                "serviceId": "3458764513956069001", "serviceName": "voicemail",
                "serviceType": "VM", "extension": "*86", "homeSystem": SYSTEM_JID})
            self.assertEqual([s["serviceType"] for s in services], ["VM", "AA", "ParkServer"])

    def test_the_list_is_the_model(self) -> None:
        self.pbx.services = [Service(7, "ACD", "AdvancedACD", "3700", "1")]
        reply = self.client("alice").reply("<GetServiceList/>")
        (service,) = findall(reply, "Service")
        self.assertEqual((text(service, "serviceId"), text(service, "serviceType")),
                         ("7", "AdvancedACD"))

    def test_answered_after_the_call_log_sent_before_it_even_when_delayed(self) -> None:
        """The property the proxy's call-log fence relies on: one session's commands are
        answered in order, events they cause included."""
        for n in range(43):
            self.pbx.add_call_record("alice", direction="incoming", disconnect=NOW + n,
                                     calling_party="3002", original_called_party="3001")
        client = self.client("alice")
        for delay in (0.0, 1.2):
            self.pbx.faults.reply_delay = delay
            client.send('<iq type="get" id="calllog" timestamp="-1"/>')
            fence = client.send("<GetServiceList/>")
            self.clock.advance(delay)
            self.assertEqual([(i, local_name(e)) for i, e in client.messages()],
                             [(EVENT_ID, "callloginfo")] * 3 + [(fence, "GetServiceListResponse")])

    def test_faults_apply(self) -> None:
        client = self.client("alice")
        self.pbx.faults.reply_delay = 2.0
        client.send("<GetServiceList/>")
        self.clock.advance(1.9)
        self.assertEqual(client.messages(), [])
        self.clock.advance(0.1)
        self.assertEqual([local_name(e) for _, e in client.messages()],
                         ["GetServiceListResponse"])
        self.pbx.faults.no_reply = frozenset({"GetServiceList"})
        client.send("<GetServiceList/>")
        self.clock.advance(2.0)
        self.assertEqual(client.messages(), [])


class MonitorAndCallTests(SimulatorTestCase):
    def test_monitor_start_answers_unique_cross_refs(self) -> None:
        client = self.client("cti")
        first = client.reply(f'<MonitorStart xmlns="{ECMA_CSTA_NS}"><monitorObject>'
                             "<deviceObject>3001</deviceObject></monitorObject></MonitorStart>")
        second = self.client("alice").reply(monitor_xml("3001"))
        self.assertEqual(local_name(first), "MonitorStartResponse")
        self.assertEqual(text(first, "actualMonitorMediaClass/voice"), "true")
        refs = {int(text(first, "monitorCrossRefID")), int(text(second, "monitorCrossRefID"))}
        self.assertEqual(len(refs), 2)
        self.assertEqual(list(client.session.monitors.values()), ["3001"])

    def test_empty_device_on_a_user_session_is_the_own_extension(self) -> None:
        """As the original's client library documents and sends it; a call to the extension
        then reaches that monitor."""
        for device in ("<deviceObject/>", "<deviceObject></deviceObject>"):
            client = self.client("alice")
            reply = client.reply(f"<MonitorStart><monitorObject>{device}</monitorObject>"
                                 "</MonitorStart>")
            self.assertEqual(local_name(reply), "MonitorStartResponse", device)
            cross_ref = int(text(reply, "monitorCrossRefID"))
            self.assertEqual(client.session.monitors, {cross_ref: "3001"})
            self.pbx.place_call("+12125550142", "3001")
            (_, event), = client.messages()
            self.assertEqual((local_name(event), int(text(event, "monitorCrossRefID"))),
                             ("DeliveredEvent", cross_ref))

    def test_empty_device_on_a_server_session_or_no_device_is_invalid(self) -> None:
        """A server session has no extension of its own; no deviceObject at all is no device."""
        for login, body in (("cti", monitor_xml("")),
                            ("alice", "<MonitorStart><monitorObject/></MonitorStart>")):
            client = self.client(login)
            reply = client.reply(body)
            self.assertEqual((local_name(reply), text(reply, "operation")),
                             ("CSTAErrorCode", "invalidDeviceID"))
            self.assertEqual(client.session.monitors, {})

    def test_monitor_errors(self) -> None:
        client = self.client("cti")
        self.assertEqual(local_name(client.reply(monitor_xml("9999"))), "CSTAErrorCode")
        reply = client.reply("<MonitorStop><monitorCrossRefID>77</monitorCrossRefID></MonitorStop>")
        self.assertEqual(local_name(reply), "CSTAErrorCode")

    def test_monitor_stop_ends_events(self) -> None:
        client, cross_ref = self.monitored("cti", "3001")
        reply = client.reply(f"<MonitorStop><monitorCrossRefID>{cross_ref}</monitorCrossRefID>"
                             "</MonitorStop>")
        self.assertEqual((local_name(reply), len(reply)), ("MonitorStopResponse", 0))
        self.pbx.place_call("+12125550142", "3001")
        self.assertEqual(client.messages(), [])

    def test_delivered_event_reaches_every_monitor_of_the_callee(self) -> None:
        (server, server_ref), (own, own_ref) = (self.monitored("cti", "3001"),
                                                self.monitored("alice", "3001"))
        call = self.pbx.place_call("+12125550142", "3001", calling_name="Pat Caller")
        for client, cross_ref in ((server, server_ref), (own, own_ref)):
            (invoke_id, event), = client.messages()
            self.assertEqual((invoke_id, local_name(event)), (EVENT_ID, "DeliveredEvent"))
            self.assertEqual(int(text(event, "monitorCrossRefID")), cross_ref)
            self.assertEqual(
                {path: text(event, path) for path in (
                    "connection/callID", "connection/deviceID", "connection/globalCallID",
                    "alertingDevice/deviceIdentifier", "callingDevice/deviceIdentifier",
                    "calledDevice/deviceIdentifier", "lastRedirectionDevice/deviceIdentifier",
                    "localConnectionInfo", "cause", "callingDisplayName")},
                {"connection/callID": str(call.call_id), "connection/deviceID": "3001",
                 "connection/globalCallID": call.global_call_id,
                 "alertingDevice/deviceIdentifier": "3001",
                 "callingDevice/deviceIdentifier": "+12125550142",
                 "calledDevice/deviceIdentifier": "3001",
                 "lastRedirectionDevice/deviceIdentifier": "+12125550142",
                 "localConnectionInfo": "alerting", "cause": "normal",
                 "callingDisplayName": "Pat Caller"})
            self.assertTrue(text(event, "callTypeFlags").isdigit())
        self.assertRegex(call.global_call_id, r"^\d{15,}$")

    def test_internal_caller_monitors_see_the_far_end(self) -> None:
        caller, caller_ref = self.monitored("bob", "3002")
        callee, _ = self.monitored("alice", "3001")
        call = self.pbx.place_call("3002", "3001")
        (_, far_end), = caller.messages()
        self.assertEqual(int(text(far_end, "monitorCrossRefID")), caller_ref)
        self.assertEqual((text(far_end, "callingDevice/deviceIdentifier"),
                          text(far_end, "alertingDevice/deviceIdentifier"),
                          text(far_end, "callingDisplayName")), ("3002", "3001", "Bob Williams"))
        self.assertEqual(len(callee.messages()), 1)
        self.assertEqual(call.calling_name, "Bob Williams")

    def test_answer_and_hang_up_notify_both_parties_and_log_the_call(self) -> None:
        caller, _ = self.monitored("bob", "3002")
        callee, _ = self.monitored("alice", "3001")
        call = self.pbx.place_call("3002", "3001")
        caller.messages(), callee.messages()
        self.pbx.answer(call)
        for client in (caller, callee):
            (_, event), = client.messages()
            self.assertEqual((local_name(event), text(event, "establishedConnection/callID"),
                              text(event, "answeringDevice/deviceIdentifier")),
                             ("EstablishedEvent", str(call.call_id), "3001"))
        self.pbx.hang_up(call.call_id, "3001")
        for client in (caller, callee):
            (_, event), = client.messages()
            self.assertEqual((local_name(event), text(event, "droppedConnection/callID"),
                              text(event, "releasingDevice/deviceIdentifier"),
                              text(event, "cause")),
                             ("ConnectionClearedEvent", str(call.call_id), "3001",
                              "normalClearing"))
        self.assertNotIn(call.call_id, self.pbx.calls)
        self.assertEqual([(r.direction, r.missed) for r in self.alice.call_log],
                         [("incoming", False)])
        self.assertEqual(self.bob.call_log[0].original_called_party, "3001")

    def test_unanswered_call_is_missed_and_calls_cannot_be_reused(self) -> None:
        call = self.pbx.place_call("+12125550142", "3001")
        self.pbx.hang_up(call)
        self.assertTrue(self.alice.call_log[0].missed)
        self.assertRaises(UnknownObject, self.pbx.answer, call)
        self.assertRaises(UnknownObject, self.pbx.place_call, "3001", "4444")

    def test_make_call_answers_then_rings(self) -> None:
        callee, _ = self.monitored("bob", "3002")
        client = self.client("alice")
        client.send(f'<MakeCall xmlns="{ECMA_CSTA_NS}"><callingDevice typeOfNumber="deviceID">'
                    "3001</callingDevice><calledDirectoryNumber>3002</calledDirectoryNumber>"
                    "</MakeCall>", invoke_id=5)
        (invoke_id, reply), = client.messages()
        self.assertEqual((invoke_id, local_name(reply)), (5, "MakeCallResponse"))
        call_id = int(text(reply, "callingDevice/callID"))
        self.assertEqual((text(reply, "callingDevice/deviceID"), text(reply, "calledDevice")),
                         ("3001", "3002"))
        (_, delivered), = callee.messages()
        self.assertEqual(text(delivered, "connection/callID"), str(call_id))
        self.pbx.answer(call_id)
        self.pbx.hang_up(call_id)
        self.assertEqual([local_name(e) for _, e in callee.messages()],
                         ["EstablishedEvent", "ConnectionClearedEvent"])

    def test_make_call_destinations_and_calling_device(self) -> None:
        client = self.client("alice")

        def make(calling: str, called: str) -> Element:
            return client.reply(f"<MakeCall><callingDevice>{calling}</callingDevice>"
                                f"<calledDirectoryNumber>{called}</calledDirectoryNumber>"
                                "</MakeCall>")
        self.assertEqual(local_name(make("3001", "+12125550142")), "MakeCallResponse")
        self.assertEqual(local_name(make("3001", "5550142")), "MakeCallResponse")
        for calling, called in (("3001", "12345"), ("3001", "sales"), ("3002", "3001")):
            error = make(calling, called)
            self.assertEqual(local_name(error), "CSTAErrorCode")
            self.assertTrue(text(error, "privateErrorCode"))
        self.assertEqual(len(self.pbx.calls), 2)


class VoicemailTests(SimulatorTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.audio = bytes(range(256)) * 300  # 76,800 bytes: three 32 KiB chunks
        self.mail = self.pbx.add_voicemail("alice", self.audio, from_number="3002",
                                           from_name="Bob Williams", caller_name="Bob Williams",
                                           duration=5)
        self.empty = self.pbx.add_voicemail("alice", b"", from_number="+12125550142")
        self.client_, _ = self.monitored("alice", "3001")

    def test_mailbox_needs_a_monitor_on_the_own_extension(self) -> None:
        unmonitored = self.client("alice")
        elsewhere, _ = self.monitored("alice", "3002")
        server, _ = self.monitored("cti", "3001")
        for client in (unmonitored, elsewhere, server):
            for body in ("<MailGetListIncoming><userID>3001</userID></MailGetListIncoming>",
                         f"<MailReceiveIncoming><faxSessionID>{self.mail.mail_id}"
                         "</faxSessionID></MailReceiveIncoming>"):
                self.assertEqual(local_name(client.reply(body)), "CSTAErrorCode")

    def test_list(self) -> None:
        reply = self.client_.reply("<MailGetListIncoming><userID>3001</userID>"
                                   "</MailGetListIncoming>")
        self.assertEqual((local_name(reply), attr(reply, "rowCount")),
                         ("MailGetListIncomingResponse", "2"))
        first = findall(reply, "mail")[0]
        self.assertEqual(dict(first.attrib), {"from": "3002", "fromName": "Bob Williams",
                                              "callerName": "Bob Williams", "to": "3001",
                                              "ownerType": "user"})
        self.assertEqual({c: text(first, c) for c in ("mailId", "mediaType", "received",
                                                      "duration", "read", "note")},
                         {"mailId": str(self.mail.mail_id), "mediaType": "VoiceMail",
                          "received": str(NOW), "duration": "5", "read": "false", "note": ""})
        by_jid = self.client_.reply(f"<MailGetListIncoming><userId>{self.alice.jid}</userId>"
                                    "</MailGetListIncoming>")
        self.assertEqual(attr(by_jid, "rowCount"), "2")
        foreign = self.client_.reply("<MailGetListIncoming><userID>3002</userID>"
                                     "</MailGetListIncoming>")
        self.assertEqual(local_name(foreign), "CSTAErrorCode")

    def download(self, mail_id: int) -> list[Element]:
        chunks = [self.client_.reply(f"<MailReceiveIncoming><faxSessionID>{mail_id}"
                                     "</faxSessionID></MailReceiveIncoming>")]
        while int(attr(chunks[-1], "chunkNumber")) < int(attr(chunks[-1], "totalChunks")):
            chunks.append(self.client_.reply(
                f"<MailReceiveIncoming><faxSessionID>{mail_id}</faxSessionID>"
                "<nextChunk></nextChunk></MailReceiveIncoming>"))
        return chunks

    def test_chunked_download_reassembles_the_file(self) -> None:
        chunks = self.download(self.mail.mail_id)
        self.assertEqual([(attr(c, "chunkNumber"), attr(c, "totalChunks"), attr(c, "mailId"))
                          for c in chunks],
                         [(str(n), "3", str(self.mail.mail_id)) for n in (1, 2, 3)])
        self.assertEqual(b"".join(base64.b64decode(text(c, "mediaContent")) for c in chunks),
                         self.audio)
        self.assertEqual(len(base64.b64decode(text(chunks[0], "mediaContent"))), 32768)
        self.assertEqual(text(chunks[0], "fileFormat"), "wav")
        self.assertEqual(text(chunks[0], "documentName"),
                         f"u{int(self.alice.jid):020d}/m{self.mail.mail_id:04d}.wav")
        self.assertIsNone(self.client_.session.download)

    def test_chunk_size_is_configurable(self) -> None:
        self.pbx.chunk_size = 1000
        chunks = self.download(self.mail.mail_id)
        self.assertEqual(len(chunks), 77)
        self.assertEqual(attr(chunks[0], "chunkSize"), "1000")

    def test_empty_file_is_one_empty_chunk(self) -> None:
        chunk, = self.download(self.empty.mail_id)
        self.assertEqual((attr(chunk, "totalChunks"), text(chunk, "mediaContent")), ("1", ""))

    def test_download_errors(self) -> None:
        next_chunk = (f"<MailReceiveIncoming><faxSessionID>{self.mail.mail_id}</faxSessionID>"
                      "<nextChunk/></MailReceiveIncoming>")
        self.assertEqual(local_name(self.client_.reply(
            "<MailReceiveIncoming><faxSessionID>999</faxSessionID></MailReceiveIncoming>")),
            "CSTAErrorCode")
        self.assertEqual(local_name(self.client_.reply(next_chunk)), "CSTAErrorCode")
        self.download(self.mail.mail_id)
        self.assertEqual(local_name(self.client_.reply(next_chunk)), "CSTAErrorCode")

    def test_cancel_ends_the_transfer(self) -> None:
        self.client_.reply(f"<MailReceiveIncoming><faxSessionID>{self.mail.mail_id}"
                           "</faxSessionID></MailReceiveIncoming>")
        reply = self.client_.reply(f"<MailCancelReceive><mailId>{self.mail.mail_id}</mailId>"
                                   "</MailCancelReceive>")
        self.assertEqual(local_name(reply), "MailCancelReceiveResponse")
        self.assertIsNone(self.client_.session.download)
        self.assertEqual(local_name(self.client_.reply(
            f"<MailReceiveIncoming><faxSessionID>{self.mail.mail_id}</faxSessionID>"
            "<nextChunk></nextChunk></MailReceiveIncoming>")), "CSTAErrorCode")

    def test_status_note_and_delete_update_the_model(self) -> None:
        mail_id = self.mail.mail_id
        self.assertEqual(local_name(self.client_.reply(
            f"<MailSetStatus><mailId>{mail_id}</mailId><read>true</read>"
            "<mediaType>VoiceMail</mediaType></MailSetStatus>")), "MailSetStatusResponse")
        self.assertEqual(local_name(self.client_.reply(
            f"<UpdateVmNote><mailId>{mail_id}</mailId><note>call back</note></UpdateVmNote>")),
            "UpdateVmNoteResponse")
        self.assertEqual((self.mail.read, self.mail.note), (True, "call back"))
        for deleted in (mail_id, 4242):
            self.assertEqual(local_name(self.client_.reply(
                f"<MailDeleteIncoming><mailId>{deleted}</mailId></MailDeleteIncoming>")),
                "MailDeleteIncomingResponse")
        self.assertEqual(list(self.alice.voicemails), [self.empty.mail_id])
        self.assertEqual(local_name(self.client_.reply(
            "<MailSetStatus><mailId>4242</mailId><read>true</read></MailSetStatus>")),
            "CSTAErrorCode")


class SessionControlTests(SimulatorTestCase):
    def test_logout_event_then_close(self) -> None:
        first, second, other = self.client("alice"), self.client("alice"), self.client("bob")
        self.assertEqual(self.pbx.logout("alice", mode="admin"), 2)
        for client in (first, second):
            (invoke_id, event), = client.messages()
            self.assertEqual((invoke_id, local_name(event), attr(event, "mode")),
                             (EVENT_ID, "Logout", "admin"))
            self.assertFalse(client.connected)
        self.assertTrue(other.connected)
        self.assertEqual(self.pbx.logout(other.session), 1)
        self.assertEqual(attr(other.messages()[0][1], "mode"), "forced")
        self.assertEqual(self.pbx.sessions, [])

    def test_drop_cuts_every_connection(self) -> None:
        clients = [self.client("alice"), WireClient(self.pbx)]
        closed = clients[0].session.when_closed()
        self.assertEqual(self.pbx.drop(), 2)
        self.assertEqual([c.messages() for c in clients], [[], []])
        self.assertFalse(any(c.connected for c in clients))
        self.assertTrue(clients[0].transport.disconnected)
        self.successResultOf(closed)

    def test_sessions_and_wait_for(self) -> None:
        waiting = self.pbx.wait_for("MonitorStart")
        monitors_when_fired: list[dict[int, str]] = []
        waiting.addCallback(lambda c: monitors_when_fired.append(dict(c.session.monitors)) or c)
        cancelled = self.pbx.wait_for("MonitorStart")
        cancelled.cancel()
        self.failureResultOf(cancelled)
        client, cross_ref = self.monitored("cti", "3002")
        command = self.successResultOf(waiting)
        self.assertEqual(monitors_when_fired, [{cross_ref: "3002"}])  # fired after handling
        self.assertEqual((command.name, command.invoke_id), ("MonitorStart", 2))
        session, = self.pbx.sessions
        self.assertEqual((session.login, session.kind, session.monitors),
                         ("cti", "Server", {cross_ref: "3002"}))
        self.assertEqual([c.name for c in self.pbx.received], ["loginRequest", "MonitorStart"])


class FaultTests(SimulatorTestCase):
    def test_reply_delay_postpones_replies_and_their_events_in_order(self) -> None:
        client = self.client("alice")
        self.pbx.faults.reply_delay = 2.0
        client.send("<MonitorStartAb/>")
        client.send('<iq type="get" id="addressbook" index="0"/>')
        self.clock.advance(1.9)
        self.assertEqual(client.messages(), [])
        self.pbx.add_contact(Contact("", "Not", "Delayed"))  # not a reply: goes out at once
        self.assertEqual(client.messages(), [])  # the subscription itself is still pending
        self.clock.advance(0.1)
        self.assertEqual([local_name(e) for _, e in client.messages()],
                         ["MonitorStartAbResponse", "ablist"])

    def test_no_reply_silences_named_commands_or_all(self) -> None:
        client = self.client("alice")
        self.pbx.faults.no_reply = ["MonitorStart"]  # type: ignore[assignment]
        client.send(monitor_xml("3001"))
        self.assertEqual(client.messages(), [])
        self.assertEqual(client.session.monitors, {})
        self.assertEqual(local_name(client.reply("<MonitorStartAb/>")), "MonitorStartAbResponse")
        self.pbx.faults.no_reply = "*"
        client.send("<MonitorStopAb/>")
        client.send('<iq type="get" id="calllog" timestamp="-1"/>')
        self.assertEqual(client.messages(), [])
        self.assertEqual(client.session.received[-1].name, "iq:calllog")

    def test_malformed_kinds(self) -> None:
        checks = {"header": "bytes 0-1", "length": "shorter", "id": "invoke id"}
        for kind, reason in checks.items():
            self.pbx.faults.malformed_next = None
            client = self.client("alice")
            self.pbx.faults.malformed_next = kind  # type: ignore[assignment]
            client.send("<MonitorStartAb/>")
            decoder = FrameDecoder()
            self.assertEqual(decoder.feed(client.transport.value()), [])
            self.assertIn(reason, str(decoder.error))
        self.pbx.faults.malformed_next = None
        client = self.client("alice")
        self.pbx.faults.malformed_next = "xml"
        client.send("<MonitorStartAb/>")
        client.send("<MonitorStopAb/>")
        broken, good = client.frames()
        self.assertRaises(ValueError, parse, broken.body)
        self.assertEqual(parse(good.body).tag, "MonitorStopAbResponse")

    def test_malformed_next_breaks_one_frame_per_session_until_reset(self) -> None:
        self.pbx.faults.malformed_next = "xml"
        late = WireClient(self.pbx)  # opened after arming: its first frame breaks too
        late.send(login_xml("alice", hashed("alice-pw")))
        broken, presence = late.frames()
        self.assertRaises(ValueError, parse, broken.body)
        self.assertEqual(parse(presence.body).tag, "presence")
        self.pbx.faults.malformed_next = None
        self.assertEqual(local_name(late.reply("<MonitorStartAb/>")), "MonitorStartAbResponse")

    def test_invalid_fault_values_are_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.pbx.faults.malformed_next = "bits"  # type: ignore[assignment]
        with self.assertRaises(ValueError):
            self.pbx.faults.reply_delay = -1


class DemoTests(TestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.pbx = demo_pbx(clock)

    def test_company(self) -> None:
        pbx = self.pbx
        self.assertEqual((pbx.sn, pbx.server_logins), ("DEMO1", {"server": "server"}))
        self.assertEqual({(u.login, u.password, u.extension) for u in pbx.users.values()},
                         {("alice", "alice", "3001"), ("bob", "bob", "3002"),
                          ("carol", "carol", "3003")})
        self.assertGreaterEqual(len(pbx.contacts), 120)
        self.assertTrue(all(re.fullmatch(r"\d{17}", jid) for jid in pbx.contacts))
        names = {(c.first_name, c.last_name) for c in pbx.contacts.values()}
        self.assertEqual(len(names), len(pbx.contacts))
        self.assertTrue(all(c.email.endswith("@example.invalid") for c in pbx.contacts.values()))
        self.assertTrue(all(re.fullmatch(r"\+1\d{3}55501\d\d", c.cell_phone)
                            for c in pbx.contacts.values()))

    def test_call_logs_span_more_than_one_block_within_a_week(self) -> None:
        for user in self.pbx.users.values():
            self.assertGreater(len(user.call_log), 21)
            self.assertTrue(all(NOW - 7 * 86400 <= r.disconnect <= NOW for r in user.call_log))
            self.assertTrue(any(r.missed for r in user.call_log))

    def test_voicemails_are_multi_chunk_wav_files(self) -> None:
        for user in self.pbx.users.values():
            self.assertIn(len(user.voicemails), (2, 3))
            for mail in user.voicemails.values():
                with wave.open(io.BytesIO(mail.content)) as audio:
                    self.assertEqual((audio.getframerate(), audio.getsampwidth(),
                                      audio.getnchannels()), (8000, 2, 1))
                    self.assertLessEqual(abs(audio.getnframes() / 8000 - mail.duration), 0.5)
                self.assertGreater(len(mail.content), 32768)

    def test_demo_user_logs_in_and_sees_the_book(self) -> None:
        client = WireClient(self.pbx).login("carol", "carol")
        client.messages()
        jids, requests = fetch_pages(client)
        self.assertEqual((len(jids), requests), (len(self.pbx.contacts), 3))


class FrameCollector(Protocol):
    """A real-socket client: frames arrive in a queue, ``lost`` fires on disconnect."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.queue: DeferredQueue[tuple[int, Element]] = DeferredQueue()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        for frame in self.decoder.feed(data):
            self.queue.put((frame.invoke_id, parse(frame.body)))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)

    def send(self, invoke_id: int, body: str) -> None:
        assert self.transport is not None
        self.transport.write(encode(invoke_id, body.encode()))


class LoopbackTests(TestCase):
    """Real sockets: the listener, TLS, and the control API."""

    def setUp(self) -> None:
        self.pbx = PBX("LOOP1")
        self.pbx.add_user("alice", "alice-pw", "3001")

    @inlineCallbacks
    def connect(self, port: int, tls: bool = False) -> Any:
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        if tls:
            endpoint = wrapClientTLS(certs.self_signed().client_options("localhost"), endpoint)
        client = yield connectProtocol(endpoint, FrameCollector())
        self.addCleanup(self.disconnect, client)
        return client

    @inlineCallbacks
    def disconnect(self, client: FrameCollector) -> Any:
        sessions = [s.when_closed() for s in self.pbx.sessions]
        if client.transport is not None:
            client.transport.loseConnection()
        yield client.lost
        yield gatherResults(sessions)

    def serve(self, tls: bool) -> int:
        port = listen(self.pbx, tls=tls)
        self.addCleanup(port.stopListening)
        return port_number(port)

    @inlineCallbacks
    def login_over(self, tls: bool) -> Any:
        client = yield self.connect(self.serve(tls), tls)
        client.send(3, login_xml("alice", hashed("alice-pw")))
        invoke_id, reply = yield client.queue.get()
        self.assertEqual((invoke_id, local_name(reply), attr(reply, "ext")),
                         (3, "loginResponce", "3001"))
        event_id, presence = yield client.queue.get()
        self.assertEqual((event_id, local_name(presence)), (EVENT_ID, "presence"))
        return client

    def test_tcp(self) -> Any:
        return self.login_over(tls=False)

    @inlineCallbacks
    def test_tls_with_pinnable_self_signed_certificate(self) -> Any:
        client = yield self.login_over(tls=True)
        peer = client.transport.getPeerCertificate()
        self.assertEqual(peer.to_cryptography().fingerprint(hashes.SHA256()),
                         certs.self_signed().fingerprint)

    @inlineCallbacks
    def test_logout_from_python_reaches_a_real_client(self) -> Any:
        client = yield self.login_over(tls=False)
        self.pbx.logout("alice", "forced")
        invoke_id, event = yield client.queue.get()
        self.assertEqual((invoke_id, local_name(event)), (EVENT_ID, "Logout"))
        yield client.lost

    def test_control_api_refuses_other_interfaces(self) -> None:
        self.assertRaises(ValueError, listen_control, self.pbx, interface="0.0.0.0")


class ControlAPITestCase(SimulatorTestCase):
    """The control API over real loopback HTTP; its effects observed on in-memory sessions."""

    def setUp(self) -> None:
        super().setUp()
        port = listen_control(self.pbx)
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port_number(port)}"
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    @inlineCallbacks
    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        response: IResponse = yield self.agent.request(
            method.encode(), (self.base + path).encode(),
            Headers({b"content-type": [b"application/json"]}),
            FileBodyProducer(io.BytesIO(data)) if data is not None else None)
        content = yield readBody(response)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, json.loads(content)


class ControlAPITests(ControlAPITestCase):
    @inlineCallbacks
    def test_state(self) -> Any:
        client, cross_ref = self.monitored("alice", "3001")
        status, state = yield self.call("GET", "/state")
        self.assertEqual(status, 200)
        self.assertEqual((state["sn"], state["contacts"], state["serverLogins"]),
                         ("SIM42", 2, ["cti"]))
        self.assertEqual([u["login"] for u in state["users"]], ["alice", "bob"])
        self.assertEqual(state["sessions"][0]["monitors"], {str(cross_ref): "3001"})
        self.assertEqual(state["counters"]["logins"], {"alice": 1})
        self.assertEqual(state["variants"],
                         {"callLogEnd": "short", "recordingState": "connection"})

    @inlineCallbacks
    def test_ring_answer_hang_up(self) -> Any:
        client, _ = self.monitored("alice", "3001")
        status, created = yield self.call("POST", "/calls", {"from": "+12125550142", "to": "3001",
                                                             "callerName": "Pat"})
        self.assertEqual(status, 201)
        (_, delivered), = client.messages()
        self.assertEqual((text(delivered, "connection/callID"),
                          text(delivered, "connection/globalCallID"),
                          text(delivered, "callingDisplayName")),
                         (str(created["callId"]), created["globalCallId"], "Pat"))
        status, answered = yield self.call("POST", f"/calls/{created['callId']}/answer")
        self.assertEqual((status, answered["state"]), (200, "established"))
        status, _ = yield self.call("POST", f"/calls/{created['callId']}/answer")
        self.assertEqual(status, 409)
        status, cleared = yield self.call("POST", f"/calls/{created['callId']}/hangup",
                                          {"device": "3001"})
        self.assertEqual((status, cleared["state"]), (200, "cleared"))
        self.assertEqual([local_name(e) for _, e in client.messages()],
                         ["EstablishedEvent", "ConnectionClearedEvent"])

    @inlineCallbacks
    def test_users_and_contacts_emit_address_book_events(self) -> Any:
        watcher = self.client("cti")
        watcher.reply("<MonitorStartAb/>")
        status, user = yield self.call("POST", "/users", {
            "login": "dave", "password": "pw", "extension": "3004", "firstName": "Dave",
            "clearTextOnly": True})
        self.assertEqual((status, self.pbx.users["dave"].clear_text_only), (201, True))
        status, contact = yield self.call("POST", "/contacts", {"firstName": "Eve",
                                                                "businessPhone": "3005"})
        self.assertEqual(status, 201)
        status, updated = yield self.call("PUT", f"/contacts/{contact['jid']}",
                                          {"cellPhone": "+12125550199"})
        self.assertEqual((status, updated["cellPhone"]), (200, "+12125550199"))
        yield self.call("DELETE", f"/contacts/{contact['jid']}")
        yield self.call("DELETE", "/users/dave")
        self.assertEqual([(local_name(e), text(e, "abentry/firstName") or text(e, "userId"))
                          for _, e in watcher.messages()],
                         [("AbAddUserEvent", "Dave"), ("AbAddUserEvent", "Eve"),
                          ("AbUpdateUserEvent", "Eve"), ("AbDeleteUserEvent", contact["jid"]),
                          ("AbDeleteUserEvent", user["jid"])])

    @inlineCallbacks
    def test_logout_drop_faults_variants(self) -> Any:
        alice, bob = self.client("alice"), self.client("bob")
        status, ended = yield self.call("POST", "/logout", {"login": "alice"})
        self.assertEqual((status, ended), (200, {"sessions": 1}))
        self.assertEqual(attr(alice.messages()[0][1], "mode"), "forced")
        status, dropped = yield self.call("POST", "/drop")
        self.assertEqual((dropped, bob.connected), ({"sessions": 1}, False))
        status, faults = yield self.call("POST", "/faults", {
            "replyDelay": 1.5, "noReply": ["MakeCall"], "malformedNext": "length",
            "refuseLogins": True})
        self.assertEqual((status, faults["noReply"], faults["malformedNext"]),
                         (200, ["MakeCall"], "length"))
        self.assertEqual((self.pbx.faults.reply_delay, self.pbx.faults.refuse_logins),
                         (1.5, True))
        status, variants = yield self.call("POST", "/variants", {"callLogEnd": "empty-terminator"})
        self.assertEqual((status, self.pbx.variants.call_log_end), (200, "empty-terminator"))

    @inlineCallbacks
    def test_errors_are_json(self) -> Any:
        cases = [("GET", "/nowhere", None, None, 404), ("DELETE", "/state", None, None, 405),
                 ("POST", "/calls", None, b"{not json", 400),
                 ("POST", "/calls", {"from": "3002"}, None, 400),
                 ("POST", "/calls", {"from": "", "to": "3001"}, None, 400),
                 ("POST", "/calls", {"from": "3002", "to": "4444"}, None, 404),
                 ("POST", "/calls/77/answer", None, None, 404),
                 ("POST", "/users", {"login": "x", "password": "p", "extension": "3001"}, None,
                  409),
                 ("POST", "/contacts", {"nickname": "x"}, None, 400),
                 ("POST", "/faults", {"malformedNext": "bits"}, None, 400),
                 ("POST", "/faults", {"replyDelay": 1, "refuseLogins": "yes"}, None, 400)]
        for method, path, body, raw, expected in cases:
            status, answer = yield self.call(method, path, body, raw)
            self.assertEqual(status, expected, (method, path, answer))
            self.assertIsInstance(answer["error"], str)
        self.assertEqual(self.pbx.faults.reply_delay, 0.0)  # a refused change changes nothing


class ServiceTests(TestCase):
    def test_make_service_builds_the_listeners(self) -> None:
        plain = makeService({"port": 0, "tls": False, "control-port": 0,
                             "interface": "127.0.0.1", "demo": False})
        assert isinstance(plain, SimulatorService)
        self.assertEqual((plain.pbx.sn, plain.pbx.server_logins), ("SIM01", {"server": "server"}))
        self.assertEqual(len(list(plain)), 1)
        full = makeService({"port": 7778, "tls": True, "control-port": 7780,
                            "interface": "127.0.0.1", "demo": True})
        assert isinstance(full, SimulatorService)
        self.assertEqual((full.pbx.sn, len(list(full))), ("DEMO1", 2))
        self.assertIn("TLS", full.summary)

    @inlineCallbacks
    def test_service_starts_and_stops(self) -> Any:
        service = makeService({"port": 0, "interface": "127.0.0.1"})
        service.startService()
        yield service.stopService()
        self.assertFalse(service.running)
