"""``mxproxy``: the operator's command beside the daemon (which ``twistd mxproxy`` runs):
``mxproxy --version``, ``mxproxy check-config FILE`` and ``mxproxy import-tokens FILE URL``.

Light to start: a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mxproxy import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mxproxy",
        description="mxproxy's operator command; the daemon runs as `twistd mxproxy`.")
    parser.add_argument("--version", action="version", version=f"mxproxy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")
    check = commands.add_parser(
        "check-config", help="check a configuration file and every file it names",
        description="Check a configuration file and every file it names (certificates, keys, "
                    "service accounts) as a start would, without opening a port or an MX "
                    "connection: every problem on a line of its own, exit status 0 or 1.")
    check.add_argument("config", help="the configuration file, e.g. /etc/mxproxy/mxproxy.json")
    transfer = commands.add_parser(
        "import-tokens", help="copy the device tokens of an SQLite file into PostgreSQL",
        description="Copy every registered device (owner, times, delivery notes) of an SQLite "
                    "token store into a PostgreSQL database, to move onto several instances. "
                    "Run it while no mxproxy uses the file; running it again changes nothing, "
                    "and a device PostgreSQL has registered later is kept as it is.")
    transfer.add_argument("sqlite", help="the SQLite file, e.g. /var/lib/mxproxy/mxproxy.db")
    transfer.add_argument("url", help="the PostgreSQL database, postgresql://user:password@"
                                      "host:port/dbname (libpq's URL; PG* variables honoured)")
    arguments = parser.parse_args(argv)
    if arguments.command == "check-config":
        from mxproxy.configcheck import check_config

        return check_config(arguments.config)
    if arguments.command == "import-tokens":
        return _import_tokens(arguments.sqlite, arguments.url)
    parser.print_help()
    return 2


def _import_tokens(path: str, url: str) -> int:
    from mxproxy.store import TokenStoreError
    from mxproxy.store.location import masked
    from mxproxy.store.transfer import import_tokens

    try:
        done = import_tokens(path, url)
    except TokenStoreError as error:
        print(f"mxproxy: {error}", file=sys.stderr)
        return 1
    print(f"{path} -> {masked(url)}: {done.read} devices of {done.users} users read; "
          f"{done.added} added, {done.updated} updated, {done.unchanged} unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
