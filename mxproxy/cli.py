"""``mxproxy``: the operator's command beside the daemon (which ``twistd mxproxy`` runs):
``mxproxy --version`` and ``mxproxy check-config FILE``.

Light to start: a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
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
    arguments = parser.parse_args(argv)
    if arguments.command == "check-config":
        from mxproxy.configcheck import check_config

        return check_config(arguments.config)
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
