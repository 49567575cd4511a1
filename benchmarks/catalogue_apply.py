"""`snapbuild apply` on the test cloud's two regions: a catalogue of 4 entries x 2 targets (built in the first
region, copied to the second) against the same 4 builds run one by one with `snapbuild build`; then a second
apply with nothing changed (its wall time, its builds, and every HTTP request it made, by service and method).

Builds use the test cloud's fake guests (`no_provision`: boot, stop, snapshot, properties), so the figures are
about the catalogue's scheduling and API work, not about installing packages. Runs alternate (baseline, apply,
baseline, apply, ...), each with fresh image names; medians are printed. Everything made is deleted after each
run.

    source /var/lib/snapbuild-testcloud/env
    PYTHONPATH=. python benchmarks/catalogue_apply.py [--runs 3]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openstack

ROOT = Path(__file__).resolve().parents[1]
BUILD = ["--distro", "debian-12", "--mirrors", "upstream", "--base-image", "debian-12", "--flavor", "m1.small",
         "--network", "private", "--floating-network", "public", "--no-provision"]
# entry suffix: (recipe, variant)
ENTRIES = {"base": ("base", None), "docker": ("docker-ce", None), "k8s-full": ("k8s", "full"),
           "k8s-slim": ("k8s", "slim")}


def catalogue(prefix: str, cloud: str, regions: tuple[str, str]) -> str:
    lines = ["images:"]
    for suffix, (recipe, variant) in ENTRIES.items():
        lines += [f"  {prefix}-{suffix}:", f"    recipe: {recipe}", "    distro: debian-12", "    mirrors: upstream",
                  "    base_image: debian-12", f"    image_name: {prefix}-{suffix}"]
        if variant:
            lines.append(f"    variant: {variant}")
    lines += ["targets:",
              "  one:", f"    cloud: {cloud}", f"    region: {regions[0]}",
              "    build: {flavor: m1.small, network: private, floating_network: public, no_provision: true}",
              "  two:", f"    cloud: {cloud}", f"    region: {regions[1]}", "    role: receive",
              "policy:", "  keep: 1", "  grace_period: 1h", "  claim_settle: 2s", "  concurrency: 4", "  per_cloud: 4"]
    return "\n".join(lines) + "\n"


def sequential_builds(prefix: str) -> float:
    started = time.monotonic()
    for suffix, (recipe, variant) in ENTRIES.items():
        argv = [sys.executable, "-m", "snapbuild", "build", recipe, *BUILD, "--name", f"{prefix}-{suffix}", "-f",
                "value", "-c", "id"]
        if variant:
            argv += ["--variant", variant]
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True)
    return time.monotonic() - started


def apply(path: Path) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "snapbuild", "apply", str(path), "-f", "json"], cwd=ROOT,
                          check=False, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"apply failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.monotonic() - started, json.loads(done.stdout)


@contextlib.contextmanager
def counted_requests() -> Iterator[collections.Counter[str]]:
    """Every HTTP request made in this process while inside, as 'METHOD port path-kind'."""
    import requests

    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    real = requests.Session.send

    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        url = urlparse(request.url)
        kind = "/".join(part if not any(c.isdigit() for c in part) else "{id}" for part in url.path.split("/"))
        with lock:
            counts[f"{request.method:<6} :{url.port} {kind}"] += 1
        return real(self, request, **kwargs)

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        requests.Session.send = real  # type: ignore[method-assign]


def noop_apply_in_process(path: Path) -> tuple[float, dict[str, Any], collections.Counter[str]]:
    from snapbuild import cli

    out = io.StringIO()
    with counted_requests() as counts, contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        started = time.monotonic()
        try:
            cli.main(["apply", str(path), "-f", "json"])
        except SystemExit as exc:
            if exc.code:
                raise
        seconds = time.monotonic() - started
    return seconds, json.loads(out.getvalue()), counts


def delete_everything(prefix: str, cloud: str, regions: tuple[str, str]) -> None:
    for region in regions:
        conn = openstack.connect(cloud=cloud, region_name=region)
        found = {i.id: i for i in conn.image.images() if i.name and i.name.startswith(prefix)}
        found.update({i.id: i for i in conn.image.images(os_hidden=True) if i.name and i.name.startswith(prefix)})
        for image in found.values():
            conn.image.delete_image(image, ignore_missing=True)
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cloud = os.environ.get("OS_CLOUD", "snapbuild")
    regions = (os.environ.get("OS_REGION_NAME", "RegionOne"), os.environ.get("SNAPBUILD_SECOND_REGION", ""))
    if not regions[1]:
        raise SystemExit("set SNAPBUILD_SECOND_REGION (the test cloud's env file does: RegionTwo)")
    baseline: list[float] = []
    applied: list[float] = []
    noop: list[float] = []
    noop_counts: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            prefix = f"sbbench-{uuid.uuid4().hex[:6]}"
            try:
                baseline.append(sequential_builds(prefix + "-seq"))
                path = Path(tmp) / f"{prefix}.yaml"
                path.write_text(catalogue(prefix, cloud, regions))
                seconds, result = apply(path)
                applied.append(seconds)
                actions = collections.Counter(row["action"] for row in result["done"])
                seconds, again, counts = noop_apply_in_process(path)
                noop.append(seconds)
                builds = sum(1 for row in again["done"] if row["action"] == "built")
                noop_counts = counts
                print(f"run {run + 1}: 4 builds one by one {baseline[-1]:.1f} s | apply {applied[-1]:.1f} s "
                      f"({dict(actions)}) | again {noop[-1]:.1f} s, {builds} builds, {sum(counts.values())} "
                      f"requests", flush=True)
            finally:
                delete_everything(prefix, cloud, regions)
    b, a, n = statistics.median(baseline), statistics.median(applied), statistics.median(noop)
    print(f"median over {args.runs} runs: builds one by one {b:.1f} s; apply (4 entries x 2 targets: 4 builds, "
          f"4 copies) {a:.1f} s = {a / b:.2f}x (goal <= 0.4x); apply with nothing changed {n:.1f} s (goal < 10 s)")
    print(f"requests of the last apply with nothing to do: {sum(noop_counts.values())}")
    for line, count in sorted(noop_counts.items()):
        print(f"{count:5d}  {line}")


if __name__ == "__main__":
    main()
