"""``check-config``: the configuration file and every file it names (CA certificates, APNs
certificates and keys, FCM service accounts), checked as a start checks them, without opening
a port, the token store or an MX connection; for CI, deploy scripts and a quick look after an
edit. Every problem is one line, JSON path first; exit status 0 or 1.
"""

from __future__ import annotations

import sys
from typing import IO

from mxproxy.config import ConfigError
from mxproxy.configfile import load_config
from mxproxy.push.system import PushConfigError, load_credentials


def check_config(path: str, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Report on the file at ``path``: problems and warnings on ``err``, a summary of a good
    file on ``out``; the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    problems: list[str] = []
    warnings: list[str] = []
    try:
        config, warnings = load_config(path)
        load_credentials(config)
    except ConfigError as error:
        problems, warnings = error.lines, error.warnings
    except PushConfigError as error:
        problems = error.lines
    for problem in problems:
        print(_unprefixed(problem, path), file=err)
    for warning in warnings:
        print(f"warning: {_unprefixed(warning, path)}", file=err)
    if problems:
        print(f"{path}: {_count(len(problems), 'problem')}", file=err)
        return 1
    print(f"{path}: OK ({len(config.mx)} MX, {_count(len(config.apns), 'APNs credential')}, "
          f"{_count(len(config.gfcm), 'FCM app')})", file=out)
    return 0


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def _unprefixed(line: str, path: str) -> str:
    """A problem without the file name the report is about: the JSON path comes first."""
    return line.removeprefix(f"{path}: ")
