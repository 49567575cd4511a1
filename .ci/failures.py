#!/usr/bin/env python3
"""Print what failed in the tiers' JUnit reports, last in .ci/run's output where a log's tail shows it.

The vm and integration tiers run side by side, so a failure's traceback sits far up in interleaved output and
pytest's one-line summary drops the message when the test's name fills the line. This prints each failing test
once with the last lines of its error (pytest's `E` lines: the assertion and the message the test gave it), and
an error repeated by every test of a failed module fixture once, with the names of the tests it failed.

Usage: failures.py TIER=REPORT.xml ...
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ERROR_LINES = 40


def _error_lines(text: str) -> list[str]:
    lines = [line[2:] for line in text.splitlines() if line.startswith("E ")]
    return (lines or text.splitlines())[-ERROR_LINES:]


def failures(report: Path) -> list[tuple[str, str, list[str]]]:
    """(test id, kind, last error lines) of every failed or erroring test case in a JUnit report."""
    found = []
    for case in ET.parse(report).getroot().iter("testcase"):   # noqa: S314 - our own pytest wrote it
        for kind in ("failure", "error"):
            for node in case.findall(kind):
                test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
                found.append((test_id, kind, _error_lines(node.text or node.get("message", ""))))
    return found


def main(argv: list[str]) -> int:
    for arg in argv:
        tier, _, path = arg.partition("=")
        report = Path(path)
        if not report.is_file():
            print(f"=== {tier}: no report ({report}): the tier did not get to run its tests")
            continue
        grouped: dict[tuple[str, ...], list[str]] = {}
        for test_id, kind, lines in failures(report):
            grouped.setdefault(tuple(lines), []).append(f"{test_id} ({kind})")
        for lines, tests in grouped.items():
            print(f"=== {tier}: {tests[0]}" + (f" and {len(tests) - 1} more with the same error" if len(tests) > 1
                                                  else ""))
            for extra in tests[1:]:
                print(f"    also {extra}")
            for line in lines:
                print(f"  | {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
