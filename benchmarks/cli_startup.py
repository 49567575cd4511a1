"""Median wall time of `snapbuild --help` and `snapbuild render k8s` over 10 runs each.

Goals on the 2-core build machine: --help under 0.3 s, render under 0.6 s. Baseline printed beside them:
a bare `python3 -c pass`, the floor any Python CLI pays.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

RUNS = 10


def median_seconds(argv: list[str]) -> float:
    times = []
    with tempfile.TemporaryDirectory() as home:
        for _ in range(RUNS):
            start = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, env={"HOME": home, "PATH": "/usr/bin:/bin"})
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    python = sys.executable
    rows = [
        ("python3 -c pass (baseline)", [python, "-c", "pass"], None),
        ("snapbuild --help", [python, "-m", "snapbuild", "--help"], 0.3),
        ("snapbuild render k8s", [python, "-m", "snapbuild", "render", "k8s"], 0.6),
    ]
    baseline = None
    for name, argv, goal in rows:
        seconds = median_seconds(argv)
        baseline = baseline or seconds
        verdict = "" if goal is None else (" OK" if seconds < goal else f" OVER GOAL {goal} s")
        print(f"{name:<30} median {seconds * 1000:7.1f} ms  ({seconds / baseline:4.1f}x baseline){verdict}")


if __name__ == "__main__":
    main()
