"""``mxproxy``: the operator's command beside the daemon (which ``twistd mxproxy`` runs).

Kept as light as the twistd plugin: it imports nothing of Twisted's reactor.
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
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
