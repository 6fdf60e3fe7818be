"""Tests for mxproxy.configfile: every problem is one line naming the file and the JSON path."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.config import (
    APNsConfig,
    Config,
    ConfigError,
    MXConfig,
    PushConfig,
)
from mxproxy.configfile import load_config, parse_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINT_HEX = "0cbeb5d6f4aa9ec869d2c179c152bc25a309b4d7068be85a26936765570776bf"
FINGERPRINT = bytes.fromhex(FINGERPRINT_HEX)


def mx_entry(**changes: Any) -> dict[str, Any]:
    """A valid MX entry with some keys changed; a value of None removes the key."""
    entry = {"addr": "mx.example.com:7778", "login": "cti-server", "password": "s3cret"}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


def with_mx(**changes: Any) -> dict[str, Any]:
    return {"mx": {"dev": mx_entry(**changes)}}


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test MX CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


class ConfigTestCase(SynchronousTestCase):
    def assertConfigError(self, data: object, message: str) -> ConfigError:
        """parse_config(data) fails with exactly ``test.json: <message>``, on one line."""
        error = self.assertRaises(ConfigError, parse_config, data, "test.json")
        self.assertEqual(str(error), f"test.json: {message}")
        self.assertNotIn("\n", str(error))
        return error

    def write(self, content: str | bytes, name: str = "mxproxy.json") -> str:
        """Write ``content`` in a fresh directory and return the file's absolute path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as file:
            file.write(content.encode() if isinstance(content, str) else content)
        return path


class StructureErrorTests(ConfigTestCase):
    def test_topLevelNotAnObject(self) -> None:
        self.assertConfigError([], "top level: expected an object, got an array")

    def test_mxMissing(self) -> None:
        self.assertConfigError({"apns": {}}, "mx: required")

    def test_mxNotAnObject(self) -> None:
        self.assertConfigError({"mx": ["dev"]}, "mx: expected an object, got an array")

    def test_mxEmpty(self) -> None:
        self.assertConfigError({"mx": {}}, "mx: expected at least one MX, got an empty object")

    def test_entryNotAnObject(self) -> None:
        self.assertConfigError(
            {"mx": {"dev": "mx:7778"}}, "mx.dev: expected an object, got a string"
        )

    def test_badNames(self) -> None:
        """Names are URL segments: only [A-Za-z0-9._-], and never a dot segment."""
        for name, path in [("my box", 'mx["my box"]'), ("..", 'mx[".."]'), ("", 'mx[""]')]:
            self.assertConfigError(
                {"mx": {name: mx_entry()}},
                f"{path}: name must match [A-Za-z0-9._-]+ and not be . or .. (it is a URL segment)",
            )

    def test_dottedNameIsValidAndQuotedInPaths(self) -> None:
        config, _ = parse_config({"mx": {"eu.dev": mx_entry()}}, "test.json")
        self.assertEqual(list(config.mx), ["eu.dev"])
        self.assertConfigError(
            {"mx": {"eu.dev": mx_entry(tls="no")}},
            'mx["eu.dev"].tls: expected a boolean, got a string',
        )


class RequiredStringTests(ConfigTestCase):
    def test_missing(self) -> None:
        for key in ("addr", "login", "password"):
            self.assertConfigError(with_mx(**{key: None}), f"mx.dev.{key}: required")

    def test_empty(self) -> None:
        for key in ("addr", "login", "password"):
            self.assertConfigError(with_mx(**{key: ""}), f"mx.dev.{key}: must not be empty")

    def test_wrongType(self) -> None:
        for key, value, found in [
            ("addr", 7778, "a number"),
            ("login", None, "null"),
            ("password", {"text": "x"}, "an object"),
        ]:
            self.assertConfigError(
                {"mx": {"dev": {**mx_entry(), key: value}}},
                f"mx.dev.{key}: expected a string, got {found}",
            )

    def test_passwordNeverEchoed(self) -> None:
        error = self.assertConfigError(
            with_mx(password=["hunter2"]), "mx.dev.password: expected a string, got an array"
        )
        self.assertNotIn("hunter2", str(error))


class AllProblemsTests(ConfigTestCase):
    """A file's problems are all reported in one run, one line each, in the file's order."""

    def test_every_problem_of_every_section(self) -> None:
        data = {
            "mx": {
                "dev": mx_entry(addr="mx.example.com:x", pasword="s3cret", password=None,
                                tls="yes", maxContacts=0),
                "ok": mx_entry(),
                "bad name": mx_entry(),
                "other": mx_entry(login=""),
            },
            "apns": {"AuthKey_K.p8": {"keyId": "K", "topics": []}},
            "gfcm": {"com.example.app": 7},
            "push": {"maxInFlight": 0, "fcmUrl": "ftp://x", "apnsHost": "a:b:c"},
        }
        error = self.assertRaises(ConfigError, parse_config, data, "test.json")
        self.assertEqual(error.lines, [
            'test.json: mx.dev.addr: expected "host:port", got "mx.example.com:x"',
            'test.json: mx.dev.password: required (did you mean "pasword"?)',
            "test.json: mx.dev.tls: expected a boolean, got a string",
            "test.json: mx.dev.maxContacts: expected a whole number ≥ 1",
            'test.json: mx["bad name"]: name must match [A-Za-z0-9._-]+ and not be . or .. '
            "(it is a URL segment)",
            "test.json: mx.other.login: must not be empty",
            'test.json: apns["AuthKey_K.p8"].teamId: required',
            'test.json: apns["AuthKey_K.p8"].topics: expected a non-empty array of bundle ids',
            "test.json: gfcm[\"com.example.app\"]: expected a string, got a number",
            'test.json: push.apnsHost: expected "host:port", got "a:b:c"',
            'test.json: push.fcmUrl: expected an http(s) URL, got "ftp://x"',
            "test.json: push.maxInFlight: expected a whole number ≥ 1",
        ])
        self.assertEqual(str(error), "\n".join(error.lines))

    def test_a_missing_key_points_at_the_unknown_key_like_it(self) -> None:
        for typo, key in (("pasword", "password"), ("Login", "login"), ("adress", "addr")):
            entry = mx_entry(**{key: None})
            entry[typo] = "x"
            self.assertConfigError({"mx": {"dev": entry}},
                                   f'mx.dev.{key}: required (did you mean "{typo}"?)')


class AddrTests(ConfigTestCase):
    def test_valid(self) -> None:
        for addr, host, port in [
            ("mx.example.com:7778", "mx.example.com", 7778),
            ("mx.example.com", "mx.example.com", 7778),
            ("192.0.2.1:1", "192.0.2.1", 1),
            ("mx:65535", "mx", 65535),
            ("[2001:db8::1]:7777", "2001:db8::1", 7777),
            ("[::1]", "::1", 7778),
        ]:
            config, _ = parse_config(with_mx(addr=addr), "test.json")
            self.assertEqual((config.mx["dev"].host, config.mx["dev"].port), (host, port), addr)

    def test_invalid(self) -> None:
        for addr in [
            "nope:http",
            "mx:0",
            "mx:65536",
            "mx:",
            ":7778",
            "::1",
            "[nothex]:7778",
            "[::1]:",
            "mx:7778:1",
            "m x:7778",
            "-mx-:7778",
            " mx:7778",
        ]:
            self.assertConfigError(
                with_mx(addr=addr), f'mx.dev.addr: expected "host:port", got {json.dumps(addr)}'
            )

    def test_newlineEscaped(self) -> None:
        """A hostile value cannot split the message over two lines."""
        self.assertConfigError(
            with_mx(addr="mx\n:7778"), 'mx.dev.addr: expected "host:port", got "mx\\n:7778"'
        )


class TLSTests(ConfigTestCase):
    def test_defaults(self) -> None:
        config, _ = parse_config(with_mx(), "test.json")
        mx = config.mx["dev"]
        self.assertEqual(
            (mx.tls, mx.fingerprint, mx.ca, mx.clear_text_retry), (True, None, None, False)
        )

    def test_booleansTyped(self) -> None:
        self.assertConfigError(with_mx(tls="yes"), "mx.dev.tls: expected a boolean, got a string")
        self.assertConfigError(
            with_mx(clearTextRetry=1), "mx.dev.clearTextRetry: expected a boolean, got a number"
        )

    def test_fingerprintNormalised(self) -> None:
        upper_colons = ":".join(
            FINGERPRINT_HEX[i : i + 2].upper() for i in range(0, len(FINGERPRINT_HEX), 2)
        )
        spaced = " ".join(FINGERPRINT_HEX[i : i + 8] for i in range(0, len(FINGERPRINT_HEX), 8))
        for text in (FINGERPRINT_HEX, upper_colons, spaced):
            config, _ = parse_config(with_mx(fingerprint=text), "test.json")
            self.assertEqual(config.mx["dev"].fingerprint, FINGERPRINT, text)

    def test_fingerprintInvalid(self) -> None:
        for text in (FINGERPRINT_HEX[:40], FINGERPRINT_HEX + "00", "z" * 64, ""):
            self.assertConfigError(
                with_mx(fingerprint=text),
                "mx.dev.fingerprint: expected the SHA-256 of the MX certificate as 64 hex digits "
                f"(colons and spaces allowed), got {json.dumps(text)}",
            )
        self.assertConfigError(
            with_mx(fingerprint=32), "mx.dev.fingerprint: expected a string, got a number"
        )

    def test_verificationRequiresTLS(self) -> None:
        self.assertConfigError(
            with_mx(tls=False, fingerprint=FINGERPRINT_HEX),
            'mx.dev.fingerprint: requires "tls": true',
        )
        self.assertConfigError(with_mx(tls=False, ca="ca.pem"), 'mx.dev.ca: requires "tls": true')

    def test_fingerprintAndCAExclusive(self) -> None:
        self.assertConfigError(
            with_mx(fingerprint=FINGERPRINT_HEX, ca="ca.pem"),
            'mx.dev: use either "fingerprint" or "ca", not both',
        )

    def test_caValidStoredAbsolute(self) -> None:
        """A relative ``ca`` is resolved against the config file's directory, and kept absolute
        because twistd may change directory before the file is read."""
        ca_path = self.write(self_signed_pem(), "mx-ca.pem")
        config_path = os.path.join(os.path.dirname(ca_path), "mxproxy.json")
        with open(config_path, "w") as file:
            json.dump(with_mx(ca="mx-ca.pem"), file)
        config, _ = load_config(os.path.relpath(config_path))
        self.assertEqual(config.mx["dev"].ca, os.path.abspath(ca_path))

    def test_caMissing(self) -> None:
        missing = os.path.abspath(self.mktemp())
        self.assertConfigError(
            with_mx(ca=missing),
            f'mx.dev.ca: cannot read "{missing}": No such file or directory',
        )

    def test_caWithoutCertificate(self) -> None:
        key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        for content in (b"garbage", b"", key_pem, broken):
            path = self.write(content, "ca.pem")
            self.assertConfigError(
                with_mx(ca=path), f'mx.dev.ca: "{path}" holds no valid PEM certificate'
            )

    def test_clearTextRetryWithoutTLSWarns(self) -> None:
        _, warnings = parse_config(with_mx(tls=False, clearTextRetry=True), "test.json")
        self.assertEqual(
            warnings,
            [
                "test.json: mx.dev.clearTextRetry: user passwords may be sent in clear text "
                "over an unencrypted connection"
            ],
        )


class MaxContactsTests(ConfigTestCase):
    def test_default_and_given(self) -> None:
        config, _ = parse_config(with_mx(), "test.json")
        self.assertEqual(config.mx["dev"].max_contacts, 100_000)
        config, warnings = parse_config(with_mx(maxContacts=250_000), "test.json")
        self.assertEqual((config.mx["dev"].max_contacts, warnings), (250_000, []))

    def test_a_whole_number_of_at_least_one(self) -> None:
        for bad in (0, -5, True):
            self.assertConfigError(with_mx(maxContacts=bad),
                                   "mx.dev.maxContacts: expected a whole number ≥ 1")
        self.assertConfigError(with_mx(maxContacts="100"),
                               "mx.dev.maxContacts: expected a number, got a string")


class PushSectionTests(ConfigTestCase):
    def test_mustBeObjects(self) -> None:
        for key in ("apns", "gfcm", "push"):
            self.assertConfigError(
                {**with_mx(), key: ["x"]}, f"{key}: expected an object, got an array"
            )

    def test_valuesMustBeStringsAndAreNeverEchoed(self) -> None:
        error = self.assertConfigError(
            {**with_mx(), "apns": {"push-cert.p12": 12345}},
            'apns["push-cert.p12"]: expected an object, got a number',
        )
        self.assertNotIn("12345", str(error))
        self.assertConfigError(
            {**with_mx(), "gfcm": {"app": True}}, "gfcm.app: expected a string, got a boolean"
        )

    def test_absentIsEmpty(self) -> None:
        config, _ = parse_config(with_mx(), "test.json")
        self.assertEqual((dict(config.apns), dict(config.gfcm), config.push),
                         ({}, {}, PushConfig()))

    def test_apns_token_key(self) -> None:
        config, _ = parse_config({**with_mx(), "apns": {"AuthKey_K1.p8": {
            "keyId": "K1", "teamId": "T1", "topics": ["com.x.app", "com.x.app.voip"]}}},
            "/etc/mxproxy/mxproxy.json")
        entry = config.apns["AuthKey_K1.p8"]
        self.assertEqual((entry.path, entry.key_id, entry.team_id, entry.topics),
                         ("/etc/mxproxy/AuthKey_K1.p8", "K1", "T1",
                          ("com.x.app", "com.x.app.voip")))
        self.assertTrue(entry.is_token_key)
        self.assertConfigError({**with_mx(), "apns": {"k.p8": {"keyId": "K", "teamId": "T"}}},
                               'apns["k.p8"].topics: expected a non-empty array of bundle ids')

    def test_push_overrides(self) -> None:
        config, _ = parse_config({**with_mx(), "push": {
            "apnsHost": "127.0.0.1:2197", "fcmUrl": "https://127.0.0.1:8443",
            "maxInFlight": 64, "maxQueued": 0, "maxDevicesPerUser": 3}}, "test.json")
        self.assertEqual(config.push, PushConfig(apns_host="127.0.0.1:2197",
                                                 fcm_url="https://127.0.0.1:8443",
                                                 max_in_flight=64, max_queued=0,
                                                 max_devices_per_user=3))
        self.assertConfigError({**with_mx(), "push": {"fcmUrl": "ftp://x"}},
                               'push.fcmUrl: expected an http(s) URL, got "ftp://x"')
        self.assertConfigError({**with_mx(), "push": {"maxInFlight": 0}},
                               "push.maxInFlight: expected a whole number ≥ 1")
        self.assertConfigError({**with_mx(), "push": {"maxQueued": -1}},
                               "push.maxQueued: expected a whole number ≥ 0")
        for bad in (0, True):
            self.assertConfigError({**with_mx(), "push": {"maxDevicesPerUser": bad}},
                                   "push.maxDevicesPerUser: expected a whole number ≥ 1")
        self.assertConfigError({**with_mx(), "push": {"maxDevicesPerUser": "20"}},
                               "push.maxDevicesPerUser: expected a number, got a string")
        defaults, _ = parse_config(with_mx(), "test.json")
        self.assertEqual((defaults.push.max_in_flight, defaults.push.max_queued,
                          defaults.push.max_devices_per_user), (512, 4096, 20))


class ValidConfigTests(ConfigTestCase):
    def test_fullConfig(self) -> None:
        ca_path = self.write(self_signed_pem(), "ca.pem")
        apns = {"push-cert.p12": "p12-password"}
        gfcm = {"com.example.app": "service-account.json"}
        push = {"apnsSandboxHost": "127.0.0.1:2198"}
        data = {
            "mx": {
                "b-first": mx_entry(addr="[2001:db8::7]:7777", tls=False, clearTextRetry=False),
                "a-second": mx_entry(fingerprint=FINGERPRINT_HEX, clearTextRetry=True),
                "c-third": mx_entry(addr="192.0.2.10", ca=ca_path),
            },
            "apns": apns,
            "gfcm": gfcm,
            "push": push,
        }
        config, warnings = parse_config(data, "test.json")
        login, password = "cti-server", "s3cret"
        expected = Config(
            mx={
                "b-first": MXConfig("b-first", "2001:db8::7", 7777, login, password, tls=False),
                "a-second": MXConfig(
                    "a-second",
                    "mx.example.com",
                    7778,
                    login,
                    password,
                    fingerprint=FINGERPRINT,
                    clear_text_retry=True,
                ),
                "c-third": MXConfig("c-third", "192.0.2.10", 7778, login, password, ca=ca_path),
            },
            apns={"push-cert.p12": APNsConfig(os.path.abspath("push-cert.p12"),
                                              password="p12-password")},
            gfcm={"com.example.app": os.path.abspath("service-account.json")},
            push=PushConfig(apns_sandbox_host="127.0.0.1:2198"),
            path="test.json",
        )
        self.assertEqual(config, expected)
        self.assertEqual(list(config.mx), ["b-first", "a-second", "c-third"])
        self.assertEqual(warnings, [])

    def test_readOnly(self) -> None:
        config, _ = parse_config(with_mx(), "test.json")
        with self.assertRaises(TypeError):
            config.mx["other"] = config.mx["dev"]  # type: ignore[index]
        with self.assertRaises(AttributeError):
            config.mx["dev"].port = 1  # type: ignore[misc]

    def test_passwordNotInRepr(self) -> None:
        config, _ = parse_config(with_mx(password="hunter2"), "test.json")
        self.assertNotIn("hunter2", repr(config))
        self.assertIn("cti-server", repr(config))

    def test_originalFormat(self) -> None:
        """The original README's example loads unchanged."""
        config, warnings = parse_config(
            {
                "mx": {
                    "dev": {"addr": "127.0.0.1:7778", "login": "server", "password": "password"}
                },
                "apns": {"push-cert.p12": "password"},
                "gfcm": {"app-name": "GOOGLE-APP-KEY"},
            },
            "test.json",
        )
        self.assertEqual(config.mx["dev"], MXConfig("dev", "127.0.0.1", 7778, "server", "password"))
        self.assertEqual(warnings, [])

    def test_exampleFileLoads(self) -> None:
        """mxproxy.json.example loads without warnings next to the CA file it names."""
        directory = os.path.dirname(self.write(self_signed_pem(), "office-mx-ca.pem"))
        example = shutil.copy(os.path.join(REPO, "mxproxy.json.example"), directory)
        config, warnings = load_config(example)
        self.assertEqual(warnings, [])
        self.assertEqual(list(config.mx), ["dev", "office", "lab"])
        self.assertEqual(config.mx["dev"].fingerprint, FINGERPRINT)
        self.assertEqual(config.mx["office"].ca, os.path.join(directory, "office-mx-ca.pem"))
        self.assertEqual((config.mx["lab"].host, config.mx["lab"].tls), ("2001:db8::7", False))


class WarningTests(ConfigTestCase):
    def test_unknownKeysWarnWithSuggestion(self) -> None:
        data = {"mx": {"dev": mx_entry(fingreprint="x", colour="blue")}, "apn": {}}
        config, warnings = parse_config(data, "test.json")
        self.assertEqual(
            warnings,
            [
                'test.json: apn: unknown key, ignored (did you mean "apns"?)',
                'test.json: mx.dev.fingreprint: unknown key, ignored (did you mean "fingerprint"?)',
                "test.json: mx.dev.colour: unknown key, ignored",
            ],
        )
        self.assertIsNone(config.mx["dev"].fingerprint)

    def test_duplicateKeysWarn(self) -> None:
        """json keeps the last of two equal keys silently; a copied MX entry must not vanish."""
        path = self.write(
            '{"mx": {"dev": {"addr": "a.example.com", "login": "x", "password": "y"},'
            ' "dev": {"addr": "b.example.com", "login": "x", "password": "y"}}}'
        )
        config, warnings = load_config(path)
        self.assertEqual(warnings, [f"{path}: mx.dev: given more than once, the last one is used"])
        self.assertEqual(config.mx["dev"].host, "b.example.com")


class LoadConfigTests(ConfigTestCase):
    def assertLoadError(self, path: str, message: str) -> None:
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(str(error), f"{path}: {message}")

    def test_missingFile(self) -> None:
        self.assertLoadError(self.mktemp(), "cannot read: No such file or directory")

    def test_directory(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertLoadError(directory, "cannot read: Is a directory")

    def test_invalidJSON(self) -> None:
        path = self.write('{\n  "mx": {\n    "dev": {,\n')
        self.assertLoadError(
            path,
            "invalid JSON at line 3, column 13: Expecting property name enclosed in double quotes",
        )

    def test_notUTF8(self) -> None:
        self.assertLoadError(self.write(b'{"mx": "\xff"}'), "cannot read: not UTF-8 (byte 8)")

    def test_byteOrderMarkAccepted(self) -> None:
        config, _ = load_config(self.write(b"\xef\xbb\xbf" + json.dumps(with_mx()).encode()))
        self.assertEqual(list(config.mx), ["dev"])

    def test_pathNamesTheFile(self) -> None:
        path = self.write(json.dumps({"mx": {"dev": mx_entry(addr="nope:x")}}))
        self.assertLoadError(path, 'mx.dev.addr: expected "host:port", got "nope:x"')
        path = self.write(json.dumps(with_mx()))
        self.assertEqual(load_config(path)[0].path, path)
