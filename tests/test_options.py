"""Tests for mxproxy.options: defaults, flags, and a clear UsageError for every bad value."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mxproxy.options import MXProxyOptions, MXSimOptions, local_http_address


def parsed(options_class: type[usage.Options], *argv: str) -> usage.Options:
    options = options_class()
    options.parseOptions(list(argv))
    return options


LISTEN = ("--listen", "tcp:8080")
"""Somewhere to serve, for the tests about other options."""


class MXProxyOptionsTests(SynchronousTestCase):
    def assertUsageError(self, argv: list[str], message: str) -> None:
        error = self.assertRaises(usage.UsageError, parsed, MXProxyOptions, *argv)
        self.assertEqual(str(error), message)

    def test_defaults(self) -> None:
        options = parsed(MXProxyOptions, *LISTEN)
        self.assertEqual(
            {name: options[name] for name in ("config", "db", "host", "logflag", "local_http")},
            {
                "config": "mxproxy.json",
                "db": "mxproxy.db",
                "host": None,
                "logflag": 64,
                "local_http": None,
            },
        )
        self.assertEqual([bool(options[flag]) for flag in ("debug", "csta", "demo")], [False] * 3)

    def test_whereToServeIsRequired(self) -> None:
        """No default name: the original's was its author's domain, for which a daemon started
        without --host ordered a certificate and redirected port 80."""
        self.assertUsageError(
            [], "say where to serve the API: --host <public name> (HTTPS, Let's Encrypt), "
                "--host localhost[:port] (plain HTTP on loopback) or --listen <endpoint> "
                "(behind a reverse proxy)")

    def test_certificateFilesNeedAPublicHost(self) -> None:
        for where in (LISTEN, ("--host", "localhost")):
            self.assertUsageError(
                [*where, "--tls-cert", "cert.pem", "--tls-key", "key.pem"],
                "--tls-cert serves HTTPS for a public --host: give one")

    def test_parameters(self) -> None:
        options = parsed(
            MXProxyOptions, "--config", "/etc/mxproxy.json", "--db=/var/lib/mx.db", "--logflag=-3",
            *LISTEN)
        self.assertEqual(
            (options["config"], options["db"], options["logflag"]),
            ("/etc/mxproxy.json", "/var/lib/mx.db", -3),
        )

    def test_db_takes_a_postgresql_url(self) -> None:
        for url in ("postgresql://mx:s3cret@db.example:5432/tokens", "postgres://db/tokens",
                    "postgresql://"):
            self.assertEqual(parsed(MXProxyOptions, "--db", url, *LISTEN)["db"], url)

    def test_a_bad_db_url_is_a_usage_error_without_its_password(self) -> None:
        self.assertUsageError(
            ["--db", "postgresql://mx:s3cret@db/tokens?colour=blue", *LISTEN],
            '--db postgresql://mx:***@db/tokens?colour=blue: not a valid PostgreSQL URL: '
            'invalid URI query parameter: "colour"')
        self.assertUsageError(["--db", "", *LISTEN],
                              "--db: empty; give an SQLite file or a postgresql:// URL")

    def test_flags(self) -> None:
        for flag in ("debug", "csta", "demo"):
            self.assertTrue(parsed(MXProxyOptions, *LISTEN, f"--{flag}")[flag], flag)

    def test_connectionsPerAddress(self) -> None:
        self.assertEqual(parsed(MXProxyOptions, *LISTEN)["max-connections-per-address"], 256)
        self.assertEqual(parsed(MXProxyOptions, *LISTEN, "--max-connections-per-address=0")
                         ["max-connections-per-address"], 0)
        self.assertUsageError(["--max-connections-per-address", "-1"],
                              "--max-connections-per-address: expected 0 (no cap) or more")
        self.assertRaises(usage.UsageError, parsed, MXProxyOptions,
                          "--max-connections-per-address", "many")

    def test_logflagMustBeAnInteger(self) -> None:
        self.assertUsageError(
            ["--logflag", "lshortfile"], '--logflag: expected an integer, got "lshortfile"'
        )

    def test_localHosts(self) -> None:
        for host, address in [
            ("localhost:8080", ("127.0.0.1", 8080)),
            ("127.0.0.1:9000", ("127.0.0.1", 9000)),
            ("localhost", ("127.0.0.1", 8080)),
            ("127.0.0.1", ("127.0.0.1", 8080)),
            ("localhost:0", ("127.0.0.1", 0)),
        ]:
            self.assertEqual(parsed(MXProxyOptions, "--host", host)["local_http"], address, host)

    def test_publicHostMeansHTTPS(self) -> None:
        options = parsed(MXProxyOptions, "--host", "push.example.com")
        self.assertEqual((options["host"], options["local_http"]), ("push.example.com", None))

    def test_badLocalHosts(self) -> None:
        """Anything starting like a local address is one, as in the original; it must be valid."""
        for host in (
            "localhost:notaport",
            "localhost:65536",
            "localhost:",
            "localhost.example.com",
        ):
            self.assertUsageError(
                ["--host", host],
                f'--host: expected localhost[:port] or 127.0.0.1[:port], got "{host}"',
            )

    def test_badPublicHosts(self) -> None:
        for host in ("", "push example.com", "push.example.com:443", "-push.example.com"):
            self.assertUsageError(
                ["--host", host],
                "--host: expected a public DNS name (HTTPS) or localhost[:port] / "
                f'127.0.0.1[:port] (plain HTTP), got "{host}"',
            )

    def test_demoServesLocalHTTP(self) -> None:
        self.assertEqual(parsed(MXProxyOptions, "--demo")["local_http"], ("127.0.0.1", 8080))
        self.assertEqual(
            parsed(MXProxyOptions, "--demo", "--host", "localhost:9000")["local_http"],
            ("127.0.0.1", 9000),
        )

    def test_demoRefusesPublicHost(self) -> None:
        self.assertUsageError(
            ["--demo", "--host", "push.example.com"],
            "--demo serves plain HTTP: use --host localhost[:port]",
        )

    def test_unknownOption(self) -> None:
        self.assertRaises(usage.UsageError, parsed, MXProxyOptions, "--hots", "localhost")

    def test_trustedProxies(self) -> None:
        self.assertEqual(parsed(MXProxyOptions, *LISTEN)["trusted-proxy"], [])
        options = parsed(MXProxyOptions, *LISTEN, "--trusted-proxy", "10.0.0.0/8",
                         "--trusted-proxy=192.0.2.7", "--trusted-proxy", "2001:db8::/32",
                         "--trusted-proxy", "::1", "--trusted-proxy", "unix")
        self.assertEqual(options["trusted-proxy"], [
            IPv4Network("10.0.0.0/8"), IPv4Network("192.0.2.7/32"), IPv6Network("2001:db8::/32"),
            IPv6Network("::1/128"), "unix"])

    def test_badTrustedProxies(self) -> None:
        for value in ("proxy.example.com", "10.0.0.0/33", "", "10.0.0.0/8,10.1.0.0/16"):
            self.assertUsageError(["--trusted-proxy", value], "--trusted-proxy: expected a "
                                  f'network (CIDR), an IP address or unix, got "{value}"')
        self.assertUsageError(["--trusted-proxy", "10.0.0.1/8"], '--trusted-proxy: '
                              '"10.0.0.1/8" has host bits set: the network is 10.0.0.0/8')


class LocalHTTPAddressTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(local_http_address("localhost:8443"), ("127.0.0.1", 8443))
        self.assertIsNone(local_http_address("mxproxy.connector73.net"))
        self.assertRaises(ValueError, local_http_address, "127.0.0.1:http")


class MXSimOptionsTests(SynchronousTestCase):
    def assertUsageError(self, argv: list[str], message: str) -> None:
        error = self.assertRaises(usage.UsageError, parsed, MXSimOptions, *argv)
        self.assertEqual(str(error), message)

    def test_defaults(self) -> None:
        options = parsed(MXSimOptions)
        self.assertEqual(
            (options["port"], options["control-port"], options["interface"]),
            (7778, 0, "127.0.0.1"),
        )
        self.assertEqual((bool(options["tls"]), bool(options["demo"])), (False, False))

    def test_values(self) -> None:
        options = parsed(
            MXSimOptions,
            "--port=7777",
            "--control-port",
            "8780",
            "--interface",
            "::1",
            "--tls",
            "--demo",
        )
        self.assertEqual(
            (options["port"], options["control-port"], options["interface"]),
            (7777, 8780, "::1"),
        )
        self.assertEqual((bool(options["tls"]), bool(options["demo"])), (True, True))

    def test_portBounds(self) -> None:
        self.assertEqual(parsed(MXSimOptions, "--port=0", "--control-port=65535")["port"], 0)
        for name in ("port", "control-port"):
            for value in ("65536", "-1", "http", ""):
                self.assertUsageError(
                    [f"--{name}={value}"],
                    f'--{name}: expected a port number 0..65535, got "{value}"',
                )

    def test_interfaceMustBeAnAddress(self) -> None:
        self.assertUsageError(
            ["--interface", "localhost"], '--interface: expected an IP address, got "localhost"'
        )
