"""Print trial's result as the line CI reads: ``N passed, N failed`` (``, N skipped``)."""

from __future__ import annotations

import re
import sys

COUNTS = re.compile(r"(\w+)=(\d+)")
FAILED_KINDS = ("failures", "errors", "unexpectedSuccesses")


def summarize(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith(("PASSED", "FAILED"))]
    if not lines:
        return "0 passed, 1 failed"  # trial never got to run the tests
    counts = {kind: int(n) for kind, n in COUNTS.findall(lines[-1])}
    passed = counts.get("successes", 0) + counts.get("expectedFailures", 0)
    failed = sum(counts.get(kind, 0) for kind in FAILED_KINDS)
    skipped = counts.get("skips", 0)
    return f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        print(summarize(log.read()))
